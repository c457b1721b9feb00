"""The layer stacks and both wrappers in low precision on the CPU, under torch.autocast (bf16 and fp16) and as
modules converted with .to(torch.bfloat16) / .half(), against a float64 run of the same weights. The rule of the op tests, at
stack level: our error against float64 is at most twice x-transformers' own error in the same precision, for the
outputs and for every gradient (input and parameters), which come back in the parameters' dtype.

x-transformers' own modules converted to bf16 fail with a padding mask at the pinned version ("mat1 and mat2 must
have the same dtype"), so the converted-module comparisons run without one; ours take a mask there too (tested)."""
import copy

import pytest
import torch
from x_transformers import ContinuousTransformerWrapper as XContinuous
from x_transformers import Decoder as XDecoder, Encoder as XEncoder, TransformerWrapper as XTokens

from test_cache_decoding import decode
from test_options_parity import option_id
from xtc_testing import make_pair, random_mask
from x_transformers_cpp import ContinuousTransformerWrapper, Decoder, Encoder, TransformerWrapper

BASE = dict(dim=64, depth=2, heads=4, attn_dim_head=16)
OPTIONS = [
    dict(), dict(use_rmsnorm=True), dict(use_scalenorm=True), dict(use_simple_rmsnorm=True),
    dict(use_dynamic_tanh=True), dict(rotary_pos_emb=True), dict(alibi_pos_bias=True), dict(attn_kv_heads=2),
    dict(ff_glu=True, ff_swish=True), dict(attn_qk_norm=True),
    dict(rotary_pos_emb=True, attn_qk_norm=True, attn_num_mem_kv=2, attn_kv_heads=2),
    # (not dynamic_pos_bias: x-transformers' own float64 run of it fails at the pinned version, "mat1 and mat2 must
    # have the same dtype", so there is no float64 yardstick; rel_pos_bias covers the dense-bias path)
    dict(rel_pos_bias=True), dict(attn_pre_talking_heads=True, attn_post_talking_heads=True),
    dict(attn_head_learned_sink=True), dict(residual_attn=True), dict(cross_attend=True),
]
PRECISIONS = ["autocast-bf16", "autocast-fp16", "module-bf16", "module-fp16"]


def error(x, reference, keep=None):
    diff = (x.double() - reference.double()).abs()
    if keep is not None:
        diff = diff * keep
    return diff.max().item()


def assert_within_twice(name, ours, theirs, reference, keep=None, dtype=torch.bfloat16):
    e_ours, e_theirs = error(ours, reference, keep), error(theirs, reference, keep)
    floor = torch.finfo(dtype).eps * max(1.0, reference.abs().max().item())
    assert e_ours <= 2 * e_theirs + floor, f"{name}: ours {e_ours:.3e}, x-transformers {e_theirs:.3e}"


def run(module, precision, args, kwargs):
    """Forward in the given precision: under autocast (float32 module) or converted (module and inputs)."""
    if precision.startswith("autocast"):
        dtype = torch.bfloat16 if precision.endswith("bf16") else torch.float16
        with torch.autocast("cpu", dtype=dtype):
            return module(*args, **kwargs)
    dtype = torch.bfloat16 if precision.endswith("bf16") else torch.float16
    low = lambda t: t.to(dtype) if torch.is_tensor(t) and t.is_floating_point() else t  # noqa: E731
    return module.to(dtype)(*map(low, args), **{k: low(v) for k, v in kwargs.items()})


def compare(ours, theirs, precision, args, kwargs, keep=None):
    """Outputs and gradients of ours and theirs in `precision` against theirs in float64 (a copy)."""
    dtype = torch.float16 if precision.endswith("fp16") else torch.bfloat16
    reference = copy.deepcopy(theirs).double()
    big = lambda t: t.double() if torch.is_tensor(t) and t.is_floating_point() else t  # noqa: E731
    inputs = [a for a in args if torch.is_tensor(a) and a.is_floating_point()]
    for a in inputs:
        a.requires_grad_(True)
    ref_inputs = [big(a).detach().requires_grad_(True) for a in args if torch.is_tensor(a) and a.is_floating_point()]
    ref_args = iter(ref_inputs)
    expected = reference(*[next(ref_args) if torch.is_tensor(a) and a.is_floating_point() else a for a in args],
                         **{k: big(v) for k, v in kwargs.items()})
    outs = {name: run(module, precision, args, kwargs) for name, module in (("ours", ours), ("theirs", theirs))}
    assert outs["ours"].dtype == outs["theirs"].dtype, (outs["ours"].dtype, outs["theirs"].dtype)
    keep_out = keep[..., None].double() if keep is not None else None
    assert_within_twice("output", outs["ours"], outs["theirs"], expected, keep_out, dtype)

    grad = torch.randn(expected.shape, dtype=torch.float64)
    if keep_out is not None:
        grad = grad * keep_out
    ref_grads = torch.autograd.grad(expected, ref_inputs + list(reference.parameters()), grad, allow_unused=True)
    grads = {}
    for name, module in (("ours", ours), ("theirs", theirs)):
        out = outs[name]
        grads[name] = torch.autograd.grad(out, inputs + list(module.parameters()), grad.to(out.dtype),
                                          allow_unused=True)
    # Gradients by relative error ||g - g64|| / ||g64||. The rule holds for the input gradient and for all parameter
    # gradients as one vector: within 2x x-transformers'. Per parameter the bound is looser, 4x or 8 eps (32 eps
    # for a scalar): the gradient of a scalar or a norm's gain sums thousands of terms whose roundoff cancels more
    # or less by luck (over seeds, either side measured ahead there by up to 40x); a wrong gradient is off by O(1)
    # and fails it all the same.
    names = [f"input{i}" for i in range(len(inputs))] + [n for n, _ in reference.named_parameters()]
    param_dtype = next(ours.parameters()).dtype
    eps = torch.finfo(dtype).eps
    squared = {"ours": 0.0, "theirs": 0.0, "size": 0.0}
    for name, g_ours, g_theirs, g_ref in zip(names, grads["ours"], grads["theirs"], ref_grads):
        if g_ref is None or g_theirs is None or not g_ref.any():
            assert g_ours is None or not g_ours.any(), name
            continue
        size = g_ref.norm().item()
        e_ours, e_theirs = ((g.double() - g_ref).norm().item() / size for g in (g_ours, g_theirs))
        if name.startswith("input"):
            assert e_ours <= 2 * e_theirs + 2 * eps, f"d {name}: ours {e_ours:.3e}, x-transformers {e_theirs:.3e}"
            continue
        assert g_ours.dtype == param_dtype, (name, g_ours.dtype)
        floor = (32 if g_ref.numel() == 1 else 8) * eps
        assert e_ours <= max(4 * e_theirs, floor), f"d {name}: ours {e_ours:.3e}, x-transformers {e_theirs:.3e}"
        squared["ours"] += (e_ours * size) ** 2
        squared["theirs"] += (e_theirs * size) ** 2
        squared["size"] += size ** 2
    assert squared["ours"] <= 4 * squared["theirs"], {k: v ** 0.5 for k, v in squared.items()}


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("options", OPTIONS, ids=option_id)
@pytest.mark.parametrize("kind", ["encoder", "decoder"])
def test_stack_in_low_precision_within_twice_x_transformers_error(kind, options, precision):
    torch.manual_seed(0)
    ours, theirs = make_pair(kind, **{**BASE, **options})
    x = torch.randn(3, 45, BASE["dim"])
    kwargs, keep = {}, None
    if not precision.startswith("module"):
        mask = random_mask(3, 45)
        mask[1, :5] = True  # x-transformers and ours differ on fully masked sequences' outputs by design
        mask[:, 0] = True  # and x-transformers' float64 gradient is NaN where a causal query sees no key
        kwargs["mask"], keep = mask, mask
    if options.get("cross_attend"):
        kwargs["context"] = torch.randn(3, 13, BASE["dim"])
    compare(ours, theirs, precision, [x], kwargs, keep)


def test_converted_module_takes_a_mask():
    """x-transformers' bf16 module fails with a mask; ours runs it, and its kept rows match the float32 module's
    within bf16's accuracy."""
    torch.manual_seed(0)
    ours, _ = make_pair("encoder", **BASE)
    x = torch.randn(2, 33, BASE["dim"])
    mask = random_mask(2, 33)
    mask[1, :7] = True
    with torch.no_grad():
        full = ours(x, mask=mask)
        low = ours.to(torch.bfloat16)(x.bfloat16(), mask=mask)
    assert low.dtype == torch.bfloat16
    keep = mask[..., None]
    assert ((low.float() - full).abs() * keep).max() < 0.1 * full.abs().max()


@pytest.mark.parametrize("precision", PRECISIONS)
def test_cross_attender_with_context_in_low_precision(precision):
    from x_transformers import CrossAttender as XCrossAttender
    from x_transformers_cpp import CrossAttender
    torch.manual_seed(0)
    theirs = XCrossAttender(**BASE)
    theirs.load_state_dict({k: v + torch.randn_like(v) * 0.1 for k, v in theirs.state_dict().items()})
    ours = CrossAttender(**BASE)
    ours.load_state_dict(theirs.state_dict())
    context = torch.randn(3, 21, BASE["dim"])
    kwargs = dict(context=context)
    if not precision.startswith("module"):
        kwargs["context_mask"] = torch.rand(3, 21) > 0.3
        kwargs["context_mask"][:, 0] = True
    compare(ours, theirs, precision, [torch.randn(3, 17, BASE["dim"])], kwargs)


@pytest.mark.parametrize("precision", PRECISIONS)
def test_continuous_wrapper_in_low_precision(precision):
    torch.manual_seed(0)
    layers = dict(BASE, rotary_pos_emb=True)
    wrapper_kwargs = dict(dim_in=24, dim_out=12, max_seq_len=64, num_memory_tokens=2)
    theirs = XContinuous(attn_layers=XEncoder(**layers), **wrapper_kwargs)
    theirs.load_state_dict({k: v + torch.randn_like(v) * 0.1 for k, v in theirs.state_dict().items()})
    ours = ContinuousTransformerWrapper(attn_layers=Encoder(**layers), **wrapper_kwargs)
    ours.load_state_dict(theirs.state_dict())
    kwargs, keep = {}, None
    if not precision.startswith("module"):
        keep = torch.rand(3, 29) > 0.3
        keep[:, 0] = True
        kwargs["mask"] = keep
    compare(ours, theirs, precision, [torch.randn(3, 29, 24)], kwargs, keep)


@pytest.mark.parametrize("precision", ["autocast-bf16", "autocast-fp16"])
def test_token_wrapper_in_low_precision(precision):
    torch.manual_seed(0)
    layers = dict(BASE, alibi_pos_bias=True)
    wrapper_kwargs = dict(num_tokens=50, max_seq_len=64)
    theirs = XTokens(attn_layers=XDecoder(**layers), **wrapper_kwargs)
    theirs.load_state_dict({k: v + torch.randn_like(v) * 0.1 for k, v in theirs.state_dict().items()})
    ours = TransformerWrapper(attn_layers=Decoder(**layers), **wrapper_kwargs)
    ours.load_state_dict(theirs.state_dict())
    tokens = torch.randint(0, 50, (3, 31))
    compare(ours, theirs, precision, [tokens], {})


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_decoder_cache_under_autocast(dtype):
    """Token-by-token decoding under autocast: as far from the float64 full forward as x-transformers' decoding."""
    torch.manual_seed(0)
    ours, theirs = make_pair("decoder", **BASE, rotary_pos_emb=True, attn_kv_heads=2)
    ours.eval(), theirs.eval()
    x = torch.randn(2, 12, BASE["dim"])
    with torch.no_grad():
        expected = copy.deepcopy(theirs).double()(x.double())
        with torch.autocast("cpu", dtype=dtype):
            stepped, _ = decode(ours, x, prefill=5)
            their_stepped, _ = decode(theirs, x, prefill=5)
    assert stepped.dtype == their_stepped.dtype
    assert_within_twice("decoded", stepped, their_stepped, expected, dtype=dtype)


def test_linear_attention_under_autocast():
    """attn_linear (an xtc extension, so no x-transformers to compare): under autocast it runs, stays finite and
    tracks its own float64 run as closely as the softmax stack does."""
    torch.manual_seed(0)
    model = Encoder(**BASE, attn_linear=True)
    x = torch.randn(2, 40, BASE["dim"])
    mask = random_mask(2, 40)
    mask[1, :9] = True
    with torch.no_grad():
        expected = copy.deepcopy(model).double()(x.double(), mask=mask)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(x, mask=mask)
    keep = mask[..., None]
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    assert error(out, expected, keep) < 0.05 * expected.abs().max().item()


def test_traced_bf16_module_keeps_dynamic_shapes():
    torch.manual_seed(0)
    model = Encoder(**BASE, rotary_pos_emb=True).eval().to(torch.bfloat16)
    x, mask = torch.randn(2, 21, BASE["dim"]).bfloat16(), random_mask(2, 21)
    with torch.no_grad():
        traced = torch.jit.trace(model, (x, mask))
        for n in (21, 34):
            x, mask = torch.randn(3, n, BASE["dim"]).bfloat16(), random_mask(3, n)
            out = traced(x, mask)
            assert out.dtype == torch.bfloat16 and out.shape == x.shape
            assert torch.equal(out, model(x, mask=mask))


def test_training_step_under_autocast_updates_float32_parameters():
    torch.manual_seed(0)
    model = Encoder(**BASE, attn_kv_heads=2, ff_glu=True)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    x, target = torch.randn(2, 19, BASE["dim"]), torch.randn(2, 19, BASE["dim"])
    before = [p.detach().clone() for p in model.parameters()]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = torch.nn.functional.mse_loss(model(x, mask=random_mask(2, 19)), target)
    loss.backward()
    assert all(p.grad.dtype == torch.float32 and torch.isfinite(p.grad).all() for p in model.parameters())
    optimizer.step()
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert any(not torch.equal(p, b) for p, b in zip(model.parameters(), before))


@pytest.mark.parametrize("precision", ["autocast-bf16", "module-bf16"])
@pytest.mark.parametrize("options", [dict(), dict(ff_no_bias=True, rotary_pos_emb=True)], ids=option_id)
def test_inference_in_bf16_within_twice_x_transformers_error(precision, options):
    """Without gradients the feed-forward's first linear and its GELU run as one oneDNN op on the CPU in bf16 (GELU
    on the float32 product, one rounding): the output stays within twice x-transformers' error against float64."""
    torch.manual_seed(1)
    ours, theirs = make_pair("encoder", **{**BASE, **options})
    x = torch.randn(3, 45, BASE["dim"])
    with torch.no_grad():
        expected = copy.deepcopy(theirs).double()(x.double())
        outs = {"theirs": run(theirs, precision, [x], {})}
        with torch.profiler.profile() as profile:
            outs["ours"] = run(ours, precision, [x], {})
    assert any(e.name == "mkldnn::_linear_pointwise" for e in profile.events())  # the fused path ran
    assert outs["ours"].dtype == outs["theirs"].dtype
    assert_within_twice("output", outs["ours"], outs["theirs"], expected)
