"""Encoder / Decoder behave as ordinary torch.nn.Modules: parameters, dtype moves, train/eval, optimizers,
torch.func, deepcopy, pickling, nesting, constructor argument checking."""
import copy

import pytest
import torch
from torch import nn

from x_transformers_cpp import AttentionLayers, Decoder, Encoder, TransformerWrapper
from xtc_testing import make_pair, random_mask

SMALL = dict(dim=32, depth=2, heads=4, attn_dim_head=8)


@pytest.mark.parametrize("cls", [Encoder, Decoder])
def test_is_nn_module(cls):
    m = cls(**SMALL)
    assert isinstance(m, nn.Module)
    assert isinstance(m, AttentionLayers)
    assert all(isinstance(p, nn.Parameter) for p in m.parameters())
    assert isinstance(AttentionLayers(dim=32, depth=1, heads=2), nn.Module)


@pytest.mark.parametrize("kind", ["encoder", "decoder"])
@pytest.mark.parametrize("kwargs", [SMALL, dict(dim=48, depth=3, heads=6, attn_kv_heads=2, attn_dim_head=16, ff_mult=3)])
def test_parameters_registered_like_x_transformers(kind, kwargs):
    torch.manual_seed(0)
    ours, theirs = make_pair(kind, **kwargs)
    ours_params, theirs_params = dict(ours.named_parameters()), dict(theirs.named_parameters())
    assert len(ours_params) == len(theirs_params)
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in theirs.parameters())
    assert {k: v.shape for k, v in ours_params.items()} == {k: v.shape for k, v in theirs_params.items()}
    assert all(p.requires_grad for p in ours.parameters())
    # the state_dict holds exactly the parameters (no buffers, no hidden copies)
    assert set(ours.state_dict()) == set(ours_params)


def test_fresh_modules_have_fresh_weights():
    torch.manual_seed(0)
    a = Encoder(**SMALL)
    b = Encoder(**SMALL)
    weights = [n for n, p in a.named_parameters() if p.dim() == 2]
    assert weights
    assert any(not torch.equal(a.get_parameter(n), b.get_parameter(n)) for n in weights)
    # the two modules do not share storage
    with torch.no_grad():
        a.get_parameter(weights[0]).zero_()
    assert b.get_parameter(weights[0]).abs().sum() > 0


@pytest.mark.parametrize("convert", ["double", "to"])
@pytest.mark.parametrize("kind", ["encoder", "decoder"])
def test_float64_matches_x_transformers(kind, convert):
    """In float64 the reference is x-transformers with attn_flash=True (F.scaled_dot_product_attention in float64):
    its default path takes the softmax in float32 (`partial(F.softmax, dtype=torch.float32)` in attend.py), which
    limits it to ~1e-7 whatever the input dtype."""
    torch.manual_seed(1)
    ours, theirs = make_pair(kind, **SMALL)
    flash_ref = type(theirs)(**SMALL, attn_flash=True)
    flash_ref.load_state_dict(theirs.state_dict())
    ours = ours.double() if convert == "double" else ours.to(torch.float64)
    theirs, flash_ref = theirs.double(), flash_ref.double()
    assert all(p.dtype == torch.float64 for p in ours.parameters())
    x = torch.randn(3, 9, 32, dtype=torch.float64, requires_grad=True)
    mask = random_mask(3, 9)
    out = ours(x, mask=mask)
    assert out.dtype == torch.float64
    ref = flash_ref(x, mask=mask)
    torch.testing.assert_close(out, ref, atol=1e-10, rtol=0)
    torch.testing.assert_close(out, theirs(x, mask=mask), atol=1e-6, rtol=0)
    g = torch.randn_like(out)
    (gx,) = torch.autograd.grad(out, x, g)
    (ref_gx,) = torch.autograd.grad(ref, x, g)
    torch.testing.assert_close(gx, ref_gx, atol=1e-9, rtol=0)
    # and back to float32
    ours.float()
    assert ours(x.detach().float(), mask=mask).dtype == torch.float32


@pytest.mark.parametrize(
    "option", [dict(ff_dropout=0.5), dict(ff_sublayer_dropout=0.5), dict(attn_dropout=0.5), dict(layer_dropout=0.5)],
    ids=["ff_dropout", "ff_sublayer_dropout", "attn_dropout", "layer_dropout"])
@pytest.mark.parametrize("kind", ["encoder", "decoder"])
def test_train_eval_dropout(kind, option):
    torch.manual_seed(2)
    ours, theirs = make_pair(kind, **SMALL, **option)
    x = torch.randn(2, 13, 32)
    ours.train()
    assert ours.training
    a, b = ours(x), ours(x)
    assert not torch.allclose(a, b), "dropout in training mode should make two calls differ"
    ours.eval()
    assert not ours.training
    c, d = ours(x), ours(x)
    assert torch.equal(c, d), "eval mode must be deterministic"
    # in eval mode dropout is off: same as x-transformers in eval mode
    torch.testing.assert_close(c, theirs.eval()(x), atol=1e-5, rtol=0)
    assert not torch.allclose(a, c)


def test_train_mode_without_dropout_is_deterministic():
    torch.manual_seed(3)
    ours, _ = make_pair("encoder", **SMALL)
    x = torch.randn(2, 7, 32)
    assert torch.equal(ours.train()(x), ours.train()(x))
    torch.testing.assert_close(ours.train()(x), ours.eval()(x), atol=0, rtol=0)


def test_dropout_respects_manual_seed():
    torch.manual_seed(4)
    ours, _ = make_pair("encoder", **SMALL, ff_dropout=0.5)
    x = torch.randn(2, 7, 32)
    torch.manual_seed(123)
    a = ours(x)
    torch.manual_seed(123)
    b = ours(x)
    assert torch.equal(a, b)


def _regression_loss(module, x, mask, target):
    return ((module(x, mask=mask) - target) ** 2).mean()


@pytest.mark.parametrize("kind", ["encoder", "decoder"])
def test_adam_step_matches_x_transformers(kind):
    """Adam on our parameters does what it does on x-transformers' with the same weights and gradients.

    The gradients are computed by each module and must agree; x-transformers' are then overwritten with ours before
    the step, because Adam's first step is ~lr * sign(grad) and so turns float32 rounding in near-zero gradient
    entries into lr-sized differences (the SGD test below compares with each module's own gradients)."""
    torch.manual_seed(5)
    ours, theirs = make_pair(kind, **SMALL)
    before = {k: v.clone() for k, v in ours.state_dict().items()}
    opt, ref_opt = torch.optim.Adam(ours.parameters(), lr=1e-2), torch.optim.Adam(theirs.parameters(), lr=1e-2)
    x, target = torch.randn(3, 11, 32), torch.randn(3, 11, 32)
    mask = random_mask(3, 11)
    for _ in range(3):
        opt.zero_grad()
        ref_opt.zero_grad()
        _regression_loss(ours, x, mask, target).backward()
        _regression_loss(theirs, x, mask, target).backward()
        ref_params = dict(theirs.named_parameters())
        for name, p in ours.named_parameters():
            assert p.grad is not None, name
            torch.testing.assert_close(p.grad, ref_params[name].grad, atol=1e-5, rtol=1e-4, msg=name)
            ref_params[name].grad = p.grad.clone()
        opt.step()
        ref_opt.step()
        for name, p in ours.named_parameters():
            torch.testing.assert_close(p, ref_params[name], atol=1e-5, rtol=0, msg=name)
    for name, value in ours.state_dict().items():
        assert not torch.equal(value, before[name]), f"{name} did not change"


@pytest.mark.parametrize("kind", ["encoder", "decoder"])
def test_sgd_steps_match_x_transformers(kind):
    torch.manual_seed(15)
    ours, theirs = make_pair(kind, **SMALL)
    opt = torch.optim.SGD(ours.parameters(), lr=0.1, momentum=0.9)
    ref_opt = torch.optim.SGD(theirs.parameters(), lr=0.1, momentum=0.9)
    x, target = torch.randn(3, 11, 32), torch.randn(3, 11, 32)
    mask = random_mask(3, 11)
    for _ in range(3):
        for module, optimizer in ((ours, opt), (theirs, ref_opt)):
            optimizer.zero_grad()
            _regression_loss(module, x, mask, target).backward()
            optimizer.step()
    ref_params = dict(theirs.named_parameters())
    for name, p in ours.named_parameters():
        torch.testing.assert_close(p, ref_params[name], atol=1e-5, rtol=0, msg=name)


@pytest.mark.parametrize("kind", ["encoder", "decoder"])
def test_functional_call_uses_given_parameters(kind):
    torch.manual_seed(6)
    ours, _ = make_pair(kind, **SMALL)
    other, _ = make_pair(kind, **SMALL)
    replacement = {k: v.clone() for k, v in other.named_parameters()}
    x = torch.randn(2, 9, 32)
    mask = random_mask(2, 9)
    out = torch.func.functional_call(ours, replacement, (x,), {"mask": mask})
    expected = other(x, mask=mask)
    torch.testing.assert_close(out, expected, atol=0, rtol=0)
    assert not torch.allclose(out, ours(x, mask=mask))
    # the module's own parameters are untouched
    for name, p in ours.named_parameters():
        assert not torch.equal(p, replacement[name])

    # gradients flow to the replacement tensors
    leaves = {k: v.detach().clone().requires_grad_(True) for k, v in ours.named_parameters()}
    torch.func.functional_call(ours, leaves, (x,), {"mask": mask}).square().sum().backward()
    ours.zero_grad()
    ours(x, mask=mask).square().sum().backward()
    for name, p in ours.named_parameters():
        assert leaves[name].grad is not None, name
        torch.testing.assert_close(leaves[name].grad, p.grad, atol=1e-5, rtol=1e-5, msg=name)


def test_torch_func_grad():
    """torch.func.grad / vjp over functional_call, the torch.func way of getting per-parameter gradients."""
    torch.manual_seed(14)
    ours, _ = make_pair("encoder", **SMALL)
    x = torch.randn(2, 9, 32)
    mask = random_mask(2, 9)
    params = {k: v.detach() for k, v in ours.named_parameters()}
    grads = torch.func.grad(lambda p: torch.func.functional_call(ours, p, (x,), {"mask": mask}).square().sum())(params)
    ours.zero_grad()
    ours(x, mask=mask).square().sum().backward()
    for name, p in ours.named_parameters():
        torch.testing.assert_close(grads[name], p.grad, atol=1e-5, rtol=1e-5, msg=name)


def test_load_state_dict_assign():
    torch.manual_seed(7)
    ours, theirs = make_pair("encoder", **SMALL)
    fresh = Encoder(**SMALL)
    sd = theirs.state_dict()
    fresh.load_state_dict(sd, assign=True)
    x = torch.randn(2, 5, 32)
    torch.testing.assert_close(fresh(x), theirs(x), atol=1e-5, rtol=0)
    assert fresh.get_parameter("final_norm.gamma").data_ptr() == sd["final_norm.gamma"].data_ptr()


def test_deepcopy_is_independent():
    torch.manual_seed(8)
    ours, _ = make_pair("decoder", **SMALL)
    clone = copy.deepcopy(ours)
    x = torch.randn(2, 7, 32)
    mask = random_mask(2, 7)
    torch.testing.assert_close(clone(x, mask=mask), ours(x, mask=mask), atol=0, rtol=0)
    for (n, p), (_, q) in zip(ours.named_parameters(), clone.named_parameters()):
        assert p.data_ptr() != q.data_ptr(), n
    before = ours(x, mask=mask)
    with torch.no_grad():
        for q in clone.parameters():
            q.mul_(0.5)
    torch.testing.assert_close(ours(x, mask=mask), before, atol=0, rtol=0)
    assert not torch.allclose(clone(x, mask=mask), before)


def test_save_load_whole_module(tmp_path):
    torch.manual_seed(9)
    ours, _ = make_pair("encoder", dim=32, depth=1, heads=2, attn_dim_head=16, ff_mult=2)
    path = tmp_path / "encoder.pt"
    torch.save(ours, path)
    loaded = torch.load(path, weights_only=False)
    assert type(loaded) is Encoder
    assert loaded.extra_repr() == ours.extra_repr()
    x = torch.randn(3, 6, 32)
    mask = random_mask(3, 6)
    torch.testing.assert_close(loaded(x, mask=mask), ours(x, mask=mask), atol=0, rtol=0)
    # the loaded module trains
    loaded(x, mask=mask).sum().backward()
    assert all(p.grad is not None for p in loaded.parameters())


def test_save_load_state_dict_weights_only(tmp_path):
    torch.manual_seed(10)
    ours, _ = make_pair("decoder", **SMALL)
    path = tmp_path / "sd.pt"
    torch.save(ours.state_dict(), path)
    fresh = Decoder(**SMALL)
    fresh.load_state_dict(torch.load(path, weights_only=True))
    x = torch.randn(2, 5, 32)
    torch.testing.assert_close(fresh(x), ours(x), atol=0, rtol=0)


class _Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.proj_in = nn.Linear(5, 32)
        self.enc = Encoder(**SMALL)
        self.proj_out = nn.Linear(32, 3)

    def forward(self, x, mask=None):
        return self.proj_out(self.enc(self.proj_in(x), mask=mask))


def test_nested_in_user_module_trains():
    torch.manual_seed(11)
    model = _Model()
    keys = list(model.state_dict())
    assert "enc.layers.0.0.0.gamma" in keys and "enc.layers.0.1.to_q.weight" in keys and "enc.final_norm.gamma" in keys
    assert len([k for k in keys if k.startswith("enc.")]) == len(Encoder(**SMALL).state_dict())
    assert len(list(model.parameters())) == 4 + len(list(model.enc.parameters()))

    x = torch.randn(4, 9, 5)
    mask = random_mask(4, 9)
    target = torch.randn(4, 9, 3)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    enc_before = {k: v.clone() for k, v in model.enc.state_dict().items()}
    losses = []
    for _ in range(30):
        opt.zero_grad()
        loss = ((model(x, mask=mask) - target) ** 2)[mask].mean()
        loss.backward()
        assert model.enc.get_parameter("layers.0.1.to_q.weight").grad is not None
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0]
    assert all(not torch.equal(v, enc_before[k]) for k, v in model.enc.state_dict().items())

    reloaded = _Model()
    reloaded.load_state_dict(model.state_dict())
    torch.testing.assert_close(reloaded(x, mask=mask), model(x, mask=mask), atol=0, rtol=0)


def test_unknown_kwargs_raise_type_error_naming_them():
    with pytest.raises(TypeError, match="attn_bogus") as info:
        Encoder(dim=32, depth=1, attn_bogus=3, not_an_option=True)
    assert "not_an_option" in str(info.value)
    # real x-transformers options that this package does not support are rejected too, not ignored
    with pytest.raises(TypeError, match="attn_custom_attn_fn"):
        Decoder(dim=32, depth=1, attn_custom_attn_fn=lambda sim: sim.softmax(-1))
    with pytest.raises(TypeError, match="attn_onnxable"):
        Encoder(dim=32, depth=1, attn_onnxable=True)


def test_causal_keyword_rejected():
    with pytest.raises(TypeError, match="causal"):
        Encoder(dim=32, depth=1, causal=True)
    with pytest.raises(TypeError, match="causal"):
        Decoder(dim=32, depth=1, causal=False)
    assert "causal=True" in AttentionLayers(dim=32, depth=1, causal=True).extra_repr()


def test_repr_shows_the_options_that_differ_from_the_defaults():
    # As torch's modules: the required arguments, then what differs from x-transformers' defaults, in the user's
    # keywords (an option given at its default is not shown).
    encoder = Encoder(dim=32, depth=2, heads=4, attn_dim_head=16, rotary_pos_emb=True, ff_mult=4, use_rmsnorm=False)
    assert encoder.extra_repr() == "dim=32, depth=2, heads=4, attn_dim_head=16, rotary_pos_emb=True"
    assert repr(encoder).startswith("Encoder(\n  dim=32, depth=2, heads=4, attn_dim_head=16")
    wrapper = TransformerWrapper(num_tokens=10, max_seq_len=8, emb_dropout=0.0, num_memory_tokens=2,
                                 attn_layers=Decoder(dim=16, depth=1))
    assert wrapper.extra_repr() == "num_tokens=10, max_seq_len=8, num_memory_tokens=2"
    assert "(attn_layers): Decoder(\n    dim=16, depth=1, heads=8, causal=True" in repr(wrapper)


@pytest.mark.parametrize("cls", [Encoder, Decoder])
def test_positional_args_rejected(cls):
    with pytest.raises(TypeError):
        cls(32, 1)
    with pytest.raises(TypeError):
        cls(32, depth=1)


def test_depth_required():
    with pytest.raises(TypeError, match="depth"):
        Encoder(dim=32)


@pytest.mark.parametrize("kind", ["encoder", "decoder"])
def test_sequence_length_one(kind):
    torch.manual_seed(12)
    ours, theirs = make_pair(kind, **SMALL)
    x = torch.randn(3, 1, 32, requires_grad=True)
    mask = torch.tensor([[True], [False], [True]])
    for m in (None, mask):
        out, ref = ours(x, mask=m), theirs(x, mask=m)
        assert out.shape == (3, 1, 32)
        torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)
        g = torch.randn_like(out)
        torch.testing.assert_close(torch.autograd.grad(out, x, g)[0], torch.autograd.grad(ref, x, g)[0],
                                   atol=1e-4, rtol=0)


def test_requires_grad_false_parameters_get_no_grad():
    torch.manual_seed(13)
    ours = Encoder(**SMALL)
    ours.requires_grad_(False)
    x = torch.randn(2, 4, 32, requires_grad=True)
    ours(x).sum().backward()
    assert x.grad is not None
    assert all(p.grad is None for p in ours.parameters())
    with torch.no_grad():
        assert not ours(x).requires_grad
