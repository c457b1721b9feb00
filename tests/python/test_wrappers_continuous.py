"""ContinuousTransformerWrapper against x-transformers' with the same weights."""
import pytest
import torch
from x_transformers import ContinuousTransformerWrapper as XWrapper
from x_transformers import Decoder as XDecoder, Encoder as XEncoder

from x_transformers_cpp import ContinuousTransformerWrapper, Decoder, Encoder
from xtc_testing import same_weights

LAYERS = dict(dim=32, depth=2, heads=4, attn_dim_head=16)
CASES = [
    dict(dim_in=20, dim_out=12, max_seq_len=16),
    dict(dim_in=20, max_seq_len=16, post_emb_norm=True, num_memory_tokens=3),
    dict(dim_out=7, max_seq_len=16, scaled_sinu_pos_emb=True),
    dict(dim_in=32, dim_out=32, use_identity_if_same_dim=True, max_seq_len=0),
    dict(dim_in=20, dim_out=5, max_seq_len=16, average_pool_embed=True, num_memory_tokens=2),
    dict(dim_in=20, dim_out=5, max_seq_len=16, use_abs_pos_emb=False),
]


def make_pair(kwargs, layers_cls=(Encoder, XEncoder), layer_kwargs=LAYERS):
    return same_weights(lambda: ContinuousTransformerWrapper(attn_layers=layers_cls[0](**layer_kwargs), **kwargs),
                        lambda: XWrapper(attn_layers=layers_cls[1](**layer_kwargs), **kwargs))


@pytest.mark.parametrize("kwargs", CASES, ids=lambda k: ",".join(f"{a}={b}" for a, b in k.items()))
@pytest.mark.parametrize("with_mask", [False, True])
def test_matches_x_transformers(kwargs, with_mask):
    torch.manual_seed(0)
    ours, theirs = make_pair(kwargs)
    x = torch.randn(3, 11, kwargs.get("dim_in", 32))
    mask = None
    if with_mask:
        mask = torch.rand(3, 11) > 0.3
        mask[:, 0] = True
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    out, expected = ours(x1, mask=mask), theirs(x2, mask=mask)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    grad = torch.randn_like(out)
    got = torch.autograd.grad(out, [x1, *ours.parameters()], grad)
    want = torch.autograd.grad(expected, [x2, *theirs.parameters()], grad)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, atol=1e-4 * max(1.0, w.abs().max().item()), rtol=0)
    torch.testing.assert_close(ours(x, mask=mask, return_embeddings=True),
                               theirs(x, mask=mask, return_embeddings=True), atol=1e-5, rtol=1e-5)


def test_lens_and_rotary_decoder():
    torch.manual_seed(1)
    layer_kwargs = dict(LAYERS, rotary_pos_emb=True)
    ours, theirs = make_pair(dict(dim_in=20, dim_out=6, max_seq_len=16), (Decoder, XDecoder), layer_kwargs)
    x, lens = torch.randn(3, 9, 20), torch.tensor([9, 4, 1])
    torch.testing.assert_close(ours(x, lens=lens), theirs(x, lens=lens), atol=1e-5, rtol=1e-5)


def test_bad_input_and_unsupported_options():
    ours = ContinuousTransformerWrapper(attn_layers=Encoder(**LAYERS), dim_in=20, max_seq_len=8)
    with pytest.raises(ValueError, match=r"expected x of shape \(batch, seq, 20\)"):
        ours(torch.randn(2, 5, 32))
    with pytest.raises(ValueError, match="at most max_seq_len"):
        ours(torch.randn(2, 9, 20))
    with pytest.raises(ValueError, match="either mask or lens"):
        ours(torch.randn(2, 5, 20), mask=torch.ones(2, 5, dtype=torch.bool), lens=torch.tensor([5, 5]))
    with pytest.raises(ValueError, match="either `dim_in` or `project_in`"):
        ContinuousTransformerWrapper(attn_layers=Encoder(**LAYERS), dim_in=20, project_in=torch.nn.Identity())
    with pytest.raises(TypeError, match="attn_layers"):
        ContinuousTransformerWrapper(attn_layers=XEncoder(**LAYERS))


def test_trace_keeps_dynamic_shapes(tmp_path):
    torch.manual_seed(2)
    model = ContinuousTransformerWrapper(attn_layers=Encoder(**LAYERS), dim_in=20, dim_out=4, max_seq_len=32).eval()
    x, mask = torch.randn(2, 7, 20), torch.rand(2, 7) > 0.2


    class WithMask(torch.nn.Module):  # tracing takes tensors only: the mask goes by keyword inside
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, x, mask):
            return self.model(x, mask=mask)

    traced = torch.jit.trace(WithMask(), (x, mask))
    assert "xtc::continuous_transformer" in str(traced.inlined_graph)
    traced.save(tmp_path / "wrapper.pt")
    loaded = torch.jit.load(tmp_path / "wrapper.pt")
    other, other_mask = torch.randn(3, 12, 20), torch.rand(3, 12) > 0.2
    torch.testing.assert_close(loaded(other, other_mask), model(other, mask=other_mask))


def test_return_intermediates_match_x_transformers():
    torch.manual_seed(5)
    ours, theirs = make_pair(dict(dim_in=20, dim_out=12, max_seq_len=16),
                             layer_kwargs={**LAYERS, "rel_pos_bias": True})
    x = torch.randn(2, 9, 20)
    mask = torch.tensor([[True] * 9, [True] * 6 + [False] * 3])
    out, inter = ours(x, mask=mask, return_intermediates=True)
    expected, their_inter = theirs(x, mask=mask, return_intermediates=True)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)
    assert inter.cache_length == their_inter.cache_length == 9
    for a, b in zip(inter.hiddens, their_inter.hiddens):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    for a, b in zip(inter.attn_intermediates, their_inter.attn_intermediates):
        torch.testing.assert_close(a.post_softmax_attn, b.post_softmax_attn, atol=1e-5, rtol=0)
        torch.testing.assert_close(a.cached_kv[0], b.cached_kv[0], atol=1e-5, rtol=0)


def test_cached_decoding_matches_x_transformers():
    # Continuous autoregression (x-transformers' ContinuousAutoregressiveWrapper): every position so far, plus
    # the previous intermediates as cache; only the last position runs.
    torch.manual_seed(6)
    ours, theirs = make_pair(dict(dim_in=20, dim_out=20, max_seq_len=16), (Decoder, XDecoder),
                             {**LAYERS, "rotary_pos_emb": True})
    ours.eval(), theirs.eval()
    x = torch.randn(2, 8, 20)
    with torch.no_grad():
        full = theirs(x)
        _, cache = ours(x[:, :3], return_intermediates=True)
        _, their_cache = theirs(x[:, :3], return_intermediates=True)
        for t in range(4, x.shape[1] + 1):
            out, cache = ours(x[:, :t], cache=cache, return_intermediates=True)
            expected, their_cache = theirs(x[:, :t], cache=their_cache, return_intermediates=True)
            torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)
            torch.testing.assert_close(out[:, 0], full[:, t - 1], atol=1e-5, rtol=0)
            assert cache.cache_length == their_cache.cache_length == t
    with pytest.raises(ValueError, match="whole sequence so far"):
        ours(x[:, -1:], cache=cache)


@pytest.mark.parametrize("extra", ["sum_embeds", "prepend", "prepend_masked", "sum_and_prepend"])
def test_sum_and_prepend_embeds_match_x_transformers(extra):
    torch.manual_seed(5)
    ours, theirs = make_pair(dict(dim_in=20, dim_out=6, max_seq_len=16, post_emb_norm=True), (Decoder, XDecoder))
    x, mask = torch.randn(3, 7, 20), torch.rand(3, 7) > 0.3
    kwargs = dict(mask=mask)
    if "sum" in extra:
        kwargs["sum_embeds"] = torch.randn(3, 7, 32)
    if "prepend" in extra:
        kwargs["prepend_embeds"] = torch.randn(3, 2, 32)
    if extra == "prepend_masked":
        kwargs["prepend_mask"] = torch.tensor([[True, False], [True, True], [False, False]])
    out, expected = ours(x, **kwargs), theirs(x, **kwargs)
    assert out.shape == expected.shape
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    grad = torch.randn_like(out)
    got = torch.autograd.grad(out, list(ours.parameters()), grad)
    want = torch.autograd.grad(expected, list(theirs.parameters()), grad)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, atol=1e-4 * max(1.0, w.abs().max().item()), rtol=0)


@pytest.mark.parametrize("max_mem_len", [0, 3, 20])
def test_return_mems_matches_x_transformers(max_mem_len):
    torch.manual_seed(6)
    ours, theirs = make_pair(dict(dim_in=20, dim_out=6, max_seq_len=16, max_mem_len=max_mem_len),
                             (Decoder, XDecoder))
    x = torch.randn(2, 6, 20)
    (out, mems), (expected, their_mems) = ours(x, return_mems=True), theirs(x, return_mems=True)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    assert len(mems) == len(their_mems) == LAYERS["depth"]
    for mine, their in zip(mems, their_mems):
        assert not mine.requires_grad
        torch.testing.assert_close(mine, their, atol=1e-5, rtol=1e-5)


def test_prepend_embeds_refuse_memory_tokens():
    ours = ContinuousTransformerWrapper(attn_layers=Encoder(**LAYERS), dim_in=20, num_memory_tokens=2)
    with pytest.raises(ValueError, match="prepend_embeds clashes with num_memory_tokens"):
        ours(torch.randn(1, 4, 20), prepend_embeds=torch.randn(1, 2, 32))


@pytest.mark.parametrize("probabilistic", [False, True], ids=["plain", "probabilistic"])
def test_projection_modules_match_x_transformers(probabilistic):
    torch.manual_seed(7)
    project_in = torch.nn.Sequential(torch.nn.Linear(20, 32), torch.nn.GELU())
    project_out = torch.nn.Linear(32, 12)
    ours, theirs = make_pair(dict(max_seq_len=16, dim_out=None, project_in=project_in, project_out=project_out,
                                  probabilistic=probabilistic), (Decoder, XDecoder))
    assert list(ours.state_dict())[-4:] == ["project_in.0.weight", "project_in.0.bias", "project_out.weight",
                                            "project_out.bias"]
    x, mask = torch.randn(3, 7, 20), torch.rand(3, 7) > 0.3
    out, expected = ours(x, mask=mask), theirs(x, mask=mask)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    grad = torch.randn_like(out)
    for g, w in zip(torch.autograd.grad(out, list(ours.parameters()), grad),
                    torch.autograd.grad(expected, list(theirs.parameters()), grad)):
        torch.testing.assert_close(g, w, atol=1e-4 * max(1.0, w.abs().max().item()), rtol=0)
    (out, mine), (expected, their) = ours(x, return_intermediates=True), theirs(x, return_intermediates=True)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(mine.last_hidden, their.last_hidden, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ours(x, return_embeddings=True), theirs(x, return_embeddings=True), atol=1e-5,
                               rtol=1e-5)
