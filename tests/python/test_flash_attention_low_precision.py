"""torch.ops.xtc.flash_attention on the CPU in bfloat16 and float16, against float64, with flash-attention's
tolerance rule: our error against float64 is at most twice that of the same attention written as plain torch ops in
the same dtype (attention_reference.low_precision_attention), for the output, the lse and the gradients. bf16 runs
both CPU paths: its products on the bf16 units (where the CPU has them) and widened to float32
(the cpu_bf16_matmul backend disabled: the path of CPUs without AVX512-BF16)."""
import zlib

import pytest
import torch

import x_transformers_cpp  # noqa: F401  (registers torch.ops.xtc)
from attention_reference import low_precision_attention, reference_attention
from test_flash_attention import features, grid, make_inputs, random_mask, ref_kwargs
from x_transformers_cpp.backends import Backend
from xtc_testing import without_backend

op = torch.ops.xtc.flash_attention

PATHS = [(torch.bfloat16, "bf16-units"), (torch.bfloat16, "widened"), (torch.float16, "widened")]


def max_error(x, reference):
    return (x.double() - reference.double()).abs().max().item() if x.numel() else 0.0


def check_within_twice(name, ours, math, reference, floor):
    """Our error against float64 is at most 2x that of the plain-torch-ops attention in the same dtype; `floor` is
    the rounding of the result to that dtype, below which the rule means nothing."""
    e_ours, e_math = max_error(ours, reference), max_error(math, reference)
    assert e_ours <= 2 * e_math + floor, f"{name}: ours {e_ours:.3e} vs {e_math:.3e} for the same attention in torch ops"


@pytest.mark.parametrize("dtype,path", PATHS, ids=[f"{str(d)[6:]}-{p}" for d, p in PATHS])
@pytest.mark.parametrize("case,h,hk,n,m,d", grid()[::4])
@pytest.mark.parametrize("masked", [False, True])
def test_low_precision_within_twice_torch_ops_error(dtype, path, case, h, hk, n, m, d, masked):
    with without_backend(Backend.CPU_BF16_MATMUL if path == "widened" else None):
        check_low_precision(dtype, case, h, hk, n, m, d, masked)


def check_low_precision(dtype, case, h, hk, n, m, d, masked):
    b = 3 if (n * m) < 20000 else (2 if n * m < 100000 else 1)
    seed = zlib.crc32(repr(("low", case, h, hk, n, m, d, masked)).encode())
    q, k, v, g = make_inputs(b, n, m, h, hk, d, torch.float32, seed=seed)
    mask = random_mask(b, m, g) if masked else None
    kwargs = features(case, h, g)
    q, k, v = (t.to(dtype).requires_grad_(True) for t in (q, k, v))
    out, lse = op(q, k, v, mask, **kwargs)
    assert out.dtype == dtype and lse.dtype == torch.float32
    ref_out, ref_lse = reference_attention(q, k, v, mask, **ref_kwargs(kwargs))
    math_out, math_lse = low_precision_attention(q, k, v, mask, **ref_kwargs(kwargs))
    eps = torch.finfo(dtype).eps
    check_within_twice("out", out, math_out, ref_out, eps)
    finite = torch.isfinite(ref_lse)
    assert torch.equal(torch.isfinite(lse), finite)
    check_within_twice("lse", lse[finite], math_lse[finite], ref_lse[finite], eps)

    grad = torch.randn(out.shape, generator=g).to(dtype)
    got = torch.autograd.grad(out, (q, k, v), grad)
    math = torch.autograd.grad(math_out, (q, k, v), grad)
    expected = torch.autograd.grad(ref_out, (q, k, v), grad.double())
    for name, x, y, z in zip("qkv", got, math, expected):
        assert x.dtype == dtype and torch.isfinite(x).all(), name
        check_within_twice(f"d{name}", x, y, z, eps * max(1.0, z.abs().max().item()))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_fully_masked_rows_give_zero_in_low_precision(dtype):
    q, k, v, g = make_inputs(2, 9, 11, 4, 2, 16, torch.float32, seed=11)
    mask = torch.ones(2, 11, dtype=torch.bool)
    mask[1] = False
    q, k, v = (t.to(dtype).requires_grad_(True) for t in (q, k, v))
    out, lse = op(q, k, v, mask)
    assert torch.equal(out[1], torch.zeros_like(out[1])) and torch.isinf(lse[1]).all()
    out.float().sum().backward()
    assert torch.equal(k.grad[1], torch.zeros_like(k.grad[1])) and torch.isfinite(q.grad).all()


def test_autocast_casts_float32_inputs_as_sdpa_does():
    """Under CPU autocast the op takes float32 (or mixed) q, k, v, runs in bf16 and returns bf16, as torch's
    scaled_dot_product_attention; gradients reach the float32 inputs in float32."""
    q, k, v, g = make_inputs(2, 37, 41, 4, 2, 32, torch.float32, seed=12)
    mask = random_mask(2, 41, g)
    q.requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, lse = op(q, k.bfloat16(), v, mask, True)  # mixed: a bf16 k beside float32 q and v
        sdpa_dtype = torch.nn.functional.scaled_dot_product_attention(q.transpose(1, 2), q.transpose(1, 2),
                                                                      q.transpose(1, 2)).dtype
    assert out.dtype == sdpa_dtype == torch.bfloat16 and lse.dtype == torch.float32
    expected, _ = op(q.bfloat16(), k.bfloat16(), v.bfloat16(), mask, True)
    assert torch.equal(out, expected)
    out.float().sum().backward()
    assert q.grad.dtype == torch.float32 and torch.isfinite(q.grad).all()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        q64 = q.detach().double()
        assert op(q64, q64, q64)[0].dtype == torch.float64  # float64 is left alone, as autocast does


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_opcheck_low_precision(dtype):
    q, k, v, g = make_inputs(2, 10, 12, 4, 2, 16, torch.float32, seed=13)
    mask = random_mask(2, 12, g)
    q, k, v = (t.to(dtype).requires_grad_(True) for t in (q, k, v))
    for args in [(q, k, v), (q, k, v, mask, True, 0.2, torch.rand(4, generator=g), 4, 3, 2.0)]:
        # The gradient test compares against finite differences, which low precision cannot resolve.
        torch.library.opcheck(op, args, test_utils=("test_schema", "test_autograd_registration", "test_faketensor",
                                                    "test_aot_dispatch_dynamic"))
