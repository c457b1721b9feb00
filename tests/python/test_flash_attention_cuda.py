"""CUDA kernels of torch.ops.xtc.flash_attention against a dense float64 reference.

Shape legend: b batch, n queries, m keys, h query heads, hk kv heads, d head dim (dv for values).

Tolerance follows FlashAttention's tests: our max error against the float64 reference may be at most twice the
error of the same dense math run by torch in the input dtype, plus a small absolute slack. Cases are a sampled grid
of odd sizes (not the full product) so the file runs in well under two minutes on one GPU.
"""
from __future__ import annotations

import zlib

import pytest
import torch
from attention_reference import check_nan_logits_reach_the_output

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

if torch.cuda.is_available():
    import x_transformers_cpp  # noqa: F401  (registers torch.ops.xtc.*)

DEVICE = "cuda"


def reference(q, k, v, mask=None, causal=False, scale=None, alibi=None, window=(-1, -1), softcap=0.0):
    """Dense attention with the op's exact semantics, in the dtype of its inputs; returns (out, lse)."""
    b, n, h, d = q.shape
    m, hk = k.shape[1], k.shape[2]
    scale = d**-0.5 if scale is None else scale
    kv_index = torch.arange(h, device=q.device) % hk  # query head i reads kv head i % hk
    k_e, v_e = k[:, :, kv_index], v[:, :, kv_index]
    s = torch.einsum("bnhd,bmhd->bhnm", q, k_e) * scale
    i = torch.arange(n, device=q.device)[:, None] + (m - n)
    j = torch.arange(m, device=q.device)[None, :]
    if alibi is not None:
        s = s - alibi.to(s.dtype)[None, :, None, None] * (i - j).abs().to(s.dtype)
    if softcap > 0:
        s = softcap * torch.tanh(s / softcap)
    visible = torch.ones(n, m, dtype=torch.bool, device=q.device)
    if causal:
        visible &= j <= i
    if window[0] >= 0:
        visible &= j >= i - window[0]
    if window[1] >= 0:
        visible &= j <= i + window[1]
    visible = visible[None, None].expand(b, h, n, m)
    if mask is not None:
        visible = visible & mask[:, None, None, :]
    # Rows without a visible key get finite logits and are zeroed after the softmax, so autograd sees no NaN.
    row_any = visible.any(-1, keepdim=True)
    s = torch.where(visible, s, float("-inf"))
    s = torch.where(row_any, s, 0.0)
    lse = torch.logsumexp(s, -1, keepdim=True)
    p = torch.where(visible, torch.exp(s - lse), 0.0)
    out = torch.einsum("bhnm,bmhd->bnhd", p, v_e)
    lse = torch.where(row_any, lse, float("-inf")).squeeze(-1)
    return out, lse


def make_mask(kind, b, m, generator):
    if kind is None:
        return None
    if kind == "pad":  # random lengths, batch row 0 fully masked when b > 1
        lengths = torch.randint(1, m + 1, (b,), generator=generator)
        mask = torch.arange(m)[None, :] < lengths[:, None]
    else:  # "random": holes everywhere, so key tiles are partially kept in the middle too
        mask = torch.rand(b, m, generator=generator) < 0.7
    if b > 1:
        mask[0] = False
    return mask.to(DEVICE)


def make_inputs(case, dtype, generator):
    b, n, m, h, hk, d = case["b"], case["n"], case["m"], case["h"], case["hk"], case["d"]
    dv = case.get("dv", d)
    layout = case.get("layout", "contiguous")

    def randn(*shape):
        return torch.randn(*shape, generator=generator).to(DEVICE, dtype)

    if layout == "packed":  # q, k, v as views into one (b, n, 3, h, d) buffer, as a fused projection gives
        assert n == m and h == hk and d == dv
        qkv = randn(b, n, 3, h, d)
        q, k, v = qkv.unbind(2)
    elif layout == "transposed":  # (b, h, n, d) storage seen as (b, n, h, d)
        q = randn(b, h, n, d).transpose(1, 2)
        k = randn(b, hk, m, d).transpose(1, 2)
        v = randn(b, hk, m, dv).transpose(1, 2)
    else:
        q, k, v = randn(b, n, h, d), randn(b, m, hk, d), randn(b, m, hk, dv)
    dout = randn(b, n, h, dv)
    mask = make_mask(case.get("mask"), b, m, generator)
    alibi = None
    if case.get("alibi"):
        alibi = torch.tensor([2.0 ** (-8.0 * (i + 1) / h) for i in range(h)], device=DEVICE)
    return q, k, v, dout, mask, alibi


def op_kwargs(case, mask, alibi):
    window = case.get("window", (-1, -1))
    return dict(key_padding_mask=mask, causal=case.get("causal", False), scale=case.get("scale"),
                alibi_slopes=alibi, window_left=window[0], window_right=window[1],
                softcap=case.get("softcap", 0.0))


def run_reference(q, k, v, dout, mask, alibi, case, dtype):
    """Forward and gradients of the dense reference computed in `dtype`."""
    args = [t.detach().to(dtype).requires_grad_() for t in (q, k, v)]
    out, lse = reference(*args, mask=mask, causal=case.get("causal", False), scale=case.get("scale"), alibi=alibi,
                         window=case.get("window", (-1, -1)), softcap=case.get("softcap", 0.0))
    grads = torch.autograd.grad(out, args, dout.to(dtype))
    return out.detach(), lse.detach(), grads


def run_ours(q, k, v, dout, mask, alibi, case):
    kw = op_kwargs(case, mask, alibi)
    out, lse = torch.ops.xtc.flash_attention(q, k, v, **kw)
    grads = torch.ops.xtc.flash_attention_backward(
        dout, q, k, v, out, lse, kw["key_padding_mask"], kw["causal"], kw["scale"], kw["alibi_slopes"],
        kw["window_left"], kw["window_right"], kw["softcap"])
    torch.cuda.synchronize()
    return out, lse, grads


def max_err(x, ref):
    return (x.double() - ref.double()).abs().max().item() if x.numel() else 0.0


def check_case(case, dtype, slack):
    generator = torch.Generator().manual_seed(zlib.crc32(repr(sorted(case.items())).encode()))
    q, k, v, dout, mask, alibi = make_inputs(case, dtype, generator)
    out, lse, grads = run_ours(q, k, v, dout, mask, alibi, case)
    out_ref, lse_ref, grads_ref = run_reference(q, k, v, dout, mask, alibi, case, torch.float64)
    out_low, _, grads_low = run_reference(q, k, v, dout, mask, alibi, case, dtype)

    assert out.shape == out_ref.shape and out.dtype == dtype and out.is_contiguous()
    assert lse.shape == lse_ref.shape and lse.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    for name, ours in [("out", out), ("dq", grads[0]), ("dk", grads[1]), ("dv", grads[2])]:
        assert not torch.isnan(ours).any(), f"{name} has NaN"
    assert not torch.isnan(lse).any(), "lse has NaN"
    for name, ours, ref, low in [("out", out, out_ref, out_low), ("dq", grads[0], grads_ref[0], grads_low[0]),
                                 ("dk", grads[1], grads_ref[1], grads_low[1]),
                                 ("dv", grads[2], grads_ref[2], grads_low[2])]:
        assert ours.shape == ref.shape and ours.dtype == dtype, name
        err, err_low = max_err(ours, ref), max_err(low, ref)
        assert err <= 2 * err_low + slack, f"{name}: max error {err:.3g} vs torch in {dtype} {err_low:.3g}"
    # lse: equal infinities where no key is visible, close elsewhere.
    finite = torch.isfinite(lse_ref)
    assert torch.equal(torch.isinf(lse), ~finite), "lse is -inf exactly on rows without a visible key"
    if finite.any():
        assert max_err(lse[finite], lse_ref[finite]) <= 1e-3 * max(1.0, lse_ref[finite].abs().max().item())

    # Rows that see no key: exact zeros forward and backward.
    empty_rows = (~finite).permute(0, 2, 1)  # (b, n, h)
    if empty_rows.any():
        assert (out[empty_rows] == 0).all() and (grads[0][empty_rows] == 0).all()
    if mask is not None and not mask[0].any():
        assert (out[0] == 0).all() and (grads[0][0] == 0).all()
        assert (grads[1][0] == 0).all() and (grads[2][0] == 0).all()


# Sampled grid: odd lengths, m != n, every feature in at least two head dims, GQA with h = 8.
CASES = [
    dict(b=2, n=1, m=17, h=8, hk=8, d=64),
    dict(b=2, n=17, m=1, h=8, hk=2, d=32, causal=True),  # m < n: early rows see no key
    dict(b=3, n=128, m=200, h=8, hk=8, d=128, mask="pad"),
    dict(b=2, n=1000, m=777, h=8, hk=2, d=64, causal=True, mask="pad"),
    dict(b=1, n=4097, m=4100, h=2, hk=2, d=128, causal=True),
    dict(b=2, n=1000, m=1000, h=8, hk=1, d=32, window=(256, 0)),
    dict(b=2, n=300, m=513, h=8, hk=8, d=64, window=(100, 50), mask="random"),
    dict(b=2, n=128, m=333, h=8, hk=2, d=128, alibi=True, causal=True),
    dict(b=2, n=17, m=1000, h=8, hk=8, d=64, softcap=30.0, mask="pad"),
    dict(b=2, n=1000, m=1500, h=8, hk=1, d=128, alibi=True, softcap=20.0, window=(300, -1), scale=0.1),
    dict(b=4, n=500, m=400, h=8, hk=8, d=32, causal=True, mask="random"),
    dict(b=2, n=257, m=257, h=8, hk=8, d=64, layout="packed", mask="pad"),
    dict(b=2, n=129, m=191, h=8, hk=2, d=128, layout="transposed", window=(-1, 7)),
]


def case_id(case):
    return "-".join(f"{k}{v}" for k, v in case.items() if k not in ("b",))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("case", CASES, ids=[case_id(c) for c in CASES])
def test_matches_float64_reference(case, dtype):
    check_case(case, dtype, slack=1e-3)


FP32_CASES = [
    dict(b=2, n=97, m=130, h=8, hk=2, d=40, dv=24, causal=True, mask="pad"),
    dict(b=2, n=33, m=65, h=8, hk=8, d=64, alibi=True, softcap=10.0, window=(20, 5)),
    dict(b=1, n=1000, m=1000, h=2, hk=1, d=128, mask="random"),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("case", FP32_CASES, ids=[case_id(c) for c in FP32_CASES])
def test_float_inputs_take_exact_kernel(case, dtype):
    # float32 / float64 must never be rounded to 16 bits: errors stay at their own precision.
    check_case(case, dtype, slack=1e-5 if dtype == torch.float32 else 1e-10)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_unsupported_head_dim_names_it(dtype):
    q = torch.randn(1, 8, 2, 40, device=DEVICE, dtype=dtype)
    with pytest.raises(RuntimeError, match="head_dim 40"):
        torch.ops.xtc.flash_attention(q, q, q)


def test_value_head_dim_must_match_for_half():
    q = torch.randn(1, 8, 2, 64, device=DEVICE, dtype=torch.bfloat16)
    v = torch.randn(1, 8, 2, 32, device=DEVICE, dtype=torch.bfloat16)
    with pytest.raises(RuntimeError, match="value head dim"):
        torch.ops.xtc.flash_attention(q, q, v)


def test_forward_is_deterministic_and_finite_on_large_logits():
    # Large logits stress the online softmax rescaling; the forward has no atomics, so two runs agree bitwise.
    g = torch.Generator().manual_seed(0)
    q = (torch.randn(2, 300, 4, 64, generator=g) * 8).to(DEVICE, torch.bfloat16)
    k = (torch.randn(2, 700, 4, 64, generator=g) * 8).to(DEVICE, torch.bfloat16)
    v = torch.randn(2, 700, 4, 64, generator=g).to(DEVICE, torch.bfloat16)
    out1, lse1 = torch.ops.xtc.flash_attention(q, k, v)
    out2, lse2 = torch.ops.xtc.flash_attention(q, k, v)
    assert torch.equal(out1, out2) and torch.equal(lse1, lse2)
    assert torch.isfinite(out1).all() and torch.isfinite(lse1).all()
    ref, _ = reference(q.double(), k.double(), v.double())
    assert max_err(out1, ref) < 2e-2


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_backward_under_deterministic_algorithms_raises_or_warns(dtype):
    # dQ accumulates with atomics: torch.use_deterministic_algorithms(True) refuses the backward as torch's own
    # non-deterministic CUDA ops do; warn_only=True warns and runs.
    q, k, v = (torch.randn(1, 37, 2, 64, device=DEVICE, dtype=dtype, requires_grad=True) for _ in range(3))
    previous, warn_only = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    try:
        torch.use_deterministic_algorithms(True)
        out, _ = torch.ops.xtc.flash_attention(q, k, v)
        with pytest.raises(RuntimeError, match="flash_attention_backward"):
            out.sum().backward()
        torch.use_deterministic_algorithms(True, warn_only=True)
        out, _ = torch.ops.xtc.flash_attention(q, k, v)
        with pytest.warns(UserWarning, match="flash_attention_backward"):
            out.sum().backward()
        assert torch.isfinite(q.grad).all()
    finally:
        torch.use_deterministic_algorithms(previous, warn_only=warn_only)


@pytest.mark.parametrize("head_dim", [32, 64, 128])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32, torch.float64])
def test_nan_logits_reach_the_output_as_on_the_cpu(dtype, head_dim):
    check_nan_logits_reach_the_output(DEVICE, dtype, head_dim, keys=300)


@pytest.mark.parametrize("precision,expected", [("medium", "cuda_fp32_as_bf16"), ("high", "cuda_simple")])
def test_fp32_takes_the_bf16_kernels_only_at_medium(precision, expected):
    """With the cuda_fp32_as_bf16 backend enabled (off by default), float32 calls at torch's matmul precision
    'medium' run in the bfloat16 kernels, every rule kept: the bfloat16 op's numbers, cast back; at 'high' they
    stay exact."""
    from x_transformers_cpp.backends import Backend, attention_backend, enabled_backends, record_choices
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 97, 4, 64, generator=g).to(DEVICE).requires_grad_() for _ in range(3))
    mask = torch.rand(2, 97, generator=g).to(DEVICE) > 0.3
    rules = (True, None, torch.rand(4, device=DEVICE), 16, -1, 20.0)  # causal, ALiBi, window, soft-cap
    previous = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision(precision)
        with attention_backend([*enabled_backends(), Backend.CUDA_FP32_AS_BF16]), record_choices() as choices:
            out, lse = torch.ops.xtc.flash_attention(q, k, v, mask, *rules)
            out.sum().backward()
    finally:
        torch.set_float32_matmul_precision(previous)
    assert {c.chosen.value for c in choices} >= {expected}
    assert out.dtype == torch.float32 and q.grad.dtype == torch.float32
    q16, k16, v16 = (t.detach().bfloat16().requires_grad_() for t in (q, k, v))
    want, want_lse = torch.ops.xtc.flash_attention(q16, k16, v16, mask, *rules)
    if expected == "cuda_fp32_as_bf16":
        torch.testing.assert_close(out, want.float(), atol=0, rtol=0)
        torch.testing.assert_close(lse, want_lse, atol=0, rtol=0)
        want.float().sum().backward()
        torch.testing.assert_close(q.grad, q16.grad.float(), atol=2e-2, rtol=0)
    else:
        ref, _ = reference(q.detach().double(), k.detach().double(), v.detach().double(), mask, True, None,
                           rules[2].double(), (16, -1), 20.0)
        assert max_err(out, ref) < 1e-5


TENSOR_CORE_FP32 = [  # (b, n, m, h, hk, d, mask kind, causal, alibi, window, softcap)
    (2, 97, 131, 4, 2, 32, "random", False, False, (-1, -1), 0.0),  # make_mask: batch row 0 fully masked
    (2, 130, 130, 4, 4, 64, "pad", True, True, (-1, -1), 0.0),
    (1, 200, 257, 2, 1, 128, None, False, False, (40, 7), 25.0),
    (3, 65, 64, 2, 2, 64, "random", False, True, (-1, -1), 10.0),
]


@pytest.mark.parametrize("case", TENSOR_CORE_FP32, ids=[f"d{c[5]}-{c[6]}" for c in TENSOR_CORE_FP32])
@pytest.mark.parametrize("precision", ["highest", "high"])
def test_fp32_tensor_core_forward_within_its_precision(case, precision):
    """The float32 tensor-core forward (cuda_fp32_tensor_cores, off by default), every rule: at 'highest'
    (3xTF32 products) near the warp-per-row kernel's float32 error; at 'high' (TF32) within twice the error of
    torch's own TF32 attention in the same dense math; the backward stays warp-per-row and matches float64."""
    from x_transformers_cpp.backends import Backend, attention_backend, enabled_backends, record_choices
    b, n, m, h, hk, d, mask_kind, causal, alibi, window, softcap = case
    g = torch.Generator().manual_seed(zlib.crc32(repr(case).encode()))
    q = torch.randn(b, n, h, d, generator=g).to(DEVICE).requires_grad_()
    k, v = (torch.randn(b, m, hk, d, generator=g).to(DEVICE).requires_grad_() for _ in range(2))
    mask = make_mask(mask_kind, b, m, g)
    slopes = torch.rand(h, generator=g).to(DEVICE) if alibi else None
    rules = (causal, None, slopes, window[0], window[1], softcap)
    previous = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision(precision)
        with attention_backend([*enabled_backends(), Backend.CUDA_FP32_TENSOR_CORES]), record_choices() as choices:
            out, lse = torch.ops.xtc.flash_attention(q, k, v, mask, *rules)
            out.sum().backward()
        torch_out, _ = reference(q.detach(), k.detach(), v.detach(), mask, causal, None, slopes, window, softcap)
    finally:
        torch.set_float32_matmul_precision(previous)
    assert Backend.CUDA_FP32_TENSOR_CORES in {c.chosen for c in choices}
    ref, ref_lse = reference(q.detach().double(), k.detach().double(), v.detach().double(), mask, causal, None,
                             None if slopes is None else slopes.double(), window, softcap)
    if precision == "highest":
        assert max_err(out, ref) < 1e-5 and max_err(lse, ref_lse) < 1e-5
    else:
        assert max_err(out, ref) <= 2 * max_err(torch_out, ref) + 1e-4
    finite = torch.isfinite(ref_lse)
    assert torch.equal(torch.isfinite(lse), finite)  # rows without a visible key: lse -inf, output 0
    assert (out.transpose(1, 2)[~finite] == 0).all()
    q64 = q.detach().double().requires_grad_()
    want, _ = reference(q64, k.detach().double(), v.detach().double(), mask, causal, None,
                        None if slopes is None else slopes.double(), window, softcap)
    want.sum().backward()
    assert max_err(q.grad, q64.grad) < (1e-4 if precision == "highest" else 2e-2)
