"""torch.ops.xtc.flash_attention on the CPU against a dense float64 reference, plus gradcheck and opcheck."""
import itertools
import math
import random
import zlib

import pytest
import torch

import x_transformers_cpp  # noqa: F401  (registers torch.ops.xtc)
from attention_reference import reference_attention

op = torch.ops.xtc.flash_attention


def random_mask(b, m, generator, fully_masked_row=True):
    lengths = torch.randint(1, m + 1, (b,), generator=generator)
    mask = torch.arange(m)[None, :] < lengths[:, None]
    mask &= torch.rand(b, m, generator=generator) > 0.2  # holes, not only right padding
    if fully_masked_row and b > 1:
        mask[-1] = False
    return mask


def make_inputs(b, n, m, h, hk, d, dtype, seed, dv=None):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, n, h, d, generator=g, dtype=dtype)
    k = torch.randn(b, m, hk, d, generator=g, dtype=dtype)
    v = torch.randn(b, m, hk, dv or d, generator=g, dtype=dtype)
    return q, k, v, g


def features(case, h, g):
    kwargs = {}
    if "causal" in case:
        kwargs["causal"] = True
    if "alibi" in case:
        kwargs["alibi_slopes"] = torch.rand(h, generator=g) * 0.5
    if "window" in case:
        kwargs["window_left"], kwargs["window_right"] = 13, (0 if "causal" in case else 5)
    if "softcap" in case:
        kwargs["softcap"] = 2.5
    if "scale" in case:
        kwargs["scale"] = 0.3
    return kwargs


def ref_kwargs(kwargs):
    out = {k: v for k, v in kwargs.items() if k not in ("window_left", "window_right")}
    out["window"] = (kwargs.get("window_left", -1), kwargs.get("window_right", -1))
    return out


CASES = ["plain", "causal", "alibi", "window", "softcap", "scale", "causal+alibi", "causal+window",
         "alibi+window+softcap", "causal+alibi+window+softcap+scale"]
HEADS = [(1, 1), (2, 1), (2, 2), (8, 2), (8, 8)]
LENGTHS = [(1, 5), (7, 3), (97, 130), (256, 200), (97, 97), (600, 1100)]  # the last spans several CPU blocks
HEAD_DIMS = [16, 40, 64, 128]


def grid():
    """A sampled grid: every case, head layout, length pair and head dim appears, in varied combinations."""
    rng = random.Random(0)
    combos = []
    for case, (h, hk), (n, m), d in itertools.product(CASES, HEADS, LENGTHS, HEAD_DIMS):
        combos.append((case, h, hk, n, m, d))
    rng.shuffle(combos)
    return combos[:200]


@pytest.mark.parametrize("case,h,hk,n,m,d", grid())
@pytest.mark.parametrize("masked", [False, True])
def test_forward_backward_matches_float64_reference(case, h, hk, n, m, d, masked):
    b = 3 if (n * m) < 20000 else (2 if n * m < 100000 else 1)
    seed = zlib.crc32(repr((case, h, hk, n, m, d, masked)).encode())  # stable across runs, unlike hash()
    q, k, v, g = make_inputs(b, n, m, h, hk, d, torch.float32, seed=seed)
    mask = random_mask(b, m, g) if masked else None
    kwargs = features(case, h, g)
    for t in (q, k, v):
        t.requires_grad_(True)
    out, lse = op(q, k, v, mask, **kwargs)
    ref_out, ref_lse = reference_attention(q, k, v, mask, **ref_kwargs(kwargs))
    # The kernel's exp is a vectorised polynomial (as torch's own CPU flash attention): a few ulp per term.
    torch.testing.assert_close(out.double(), ref_out, atol=2e-5 if m <= 512 else 4e-5, rtol=1e-4)
    finite = torch.isfinite(ref_lse)
    assert torch.equal(torch.isfinite(lse), finite)
    torch.testing.assert_close(lse.double()[finite], ref_lse[finite], atol=2e-5, rtol=1e-5)

    grad = torch.randn(out.shape, generator=g)
    got = torch.autograd.grad(out, (q, k, v), grad)
    expected = torch.autograd.grad(ref_out, (q, k, v), grad.double())
    for name, x, y in zip("qkv", got, expected):
        assert torch.isfinite(x).all(), name
        # float32 gradients sum over up to n * h / hk terms: allow roundoff that grows with the reduction.
        atol = max(1e-4, 1.5e-5 * math.sqrt(n * h / hk))
        torch.testing.assert_close(x.double(), y.double(), atol=atol, rtol=1e-3, msg=lambda s: f"d{name}: {s}")


def test_fully_masked_rows_give_zero_output_and_gradients():
    q, k, v, g = make_inputs(2, 9, 11, 4, 2, 16, torch.float32, seed=1)
    mask = torch.ones(2, 11, dtype=torch.bool)
    mask[1] = False
    for t in (q, k, v):
        t.requires_grad_(True)
    out, lse = op(q, k, v, mask)
    assert torch.equal(out[1], torch.zeros_like(out[1]))
    assert torch.isinf(lse[1]).all() and (lse[1] < 0).all()
    out.sum().backward()
    assert torch.equal(q.grad[1], torch.zeros_like(q.grad[1]))
    assert torch.equal(k.grad[1], torch.zeros_like(k.grad[1]))
    assert torch.isfinite(q.grad).all() and q.grad[0].abs().sum() > 0


def test_strided_inputs_are_read_without_copies_giving_the_same_result():
    g = torch.Generator().manual_seed(2)
    qkv = torch.randn(2, 33, 3, 4, 40, generator=g)  # a fused projection, split into views
    q, k, v = qkv.unbind(2)
    assert not q.is_contiguous()
    out, _ = op(q, k, v, None, True)
    ref, _ = reference_attention(q, k, v, None, causal=True)
    torch.testing.assert_close(out.double(), ref, atol=2e-5, rtol=1e-4)


def test_value_head_dim_may_differ():
    q, k, v, g = make_inputs(2, 17, 23, 4, 4, 32, torch.float32, seed=3, dv=24)
    out, _ = op(q, k, v)
    assert out.shape == (2, 17, 4, 24)
    torch.testing.assert_close(out.double(), reference_attention(q, k, v)[0], atol=2e-5, rtol=1e-4)


def test_float64_matches_reference_to_float64_precision():
    q, k, v, g = make_inputs(2, 50, 70, 4, 2, 24, torch.float64, seed=4)
    mask = random_mask(2, 70, g)
    slopes = torch.rand(4, generator=g)
    out, lse = op(q, k, v, mask, True, None, slopes, 8, -1, 3.0)
    ref, ref_lse = reference_attention(q, k, v, mask, causal=True, alibi_slopes=slopes, window=(8, -1), softcap=3.0)
    assert out.dtype == torch.float64 and lse.dtype == torch.float64
    torch.testing.assert_close(out, ref, atol=1e-12, rtol=1e-10)


def test_float64_alibi_slopes_stay_float64():
    """Regression: the CPU kernel rounded ALiBi slopes to float32, so float64 was off by 1e-8..1e-7."""
    q, k, v, g = make_inputs(2, 40, 300, 4, 4, 16, torch.float64, seed=14)
    slopes = torch.rand(4, generator=g, dtype=torch.float64) / 3  # not representable in float32
    for t in (q, k, v):
        t.requires_grad_(True)
    out, lse = op(q, k, v, None, False, None, slopes)
    ref, ref_lse = reference_attention(q, k, v, alibi_slopes=slopes)
    torch.testing.assert_close(out, ref, atol=1e-12, rtol=1e-10)
    torch.testing.assert_close(lse, ref_lse, atol=1e-12, rtol=1e-12)
    grad = torch.randn(out.shape, generator=g, dtype=torch.float64)
    for x, y in zip(torch.autograd.grad(out, (q, k, v), grad), torch.autograd.grad(ref, (q, k, v), grad)):
        torch.testing.assert_close(x, y, atol=1e-11, rtol=1e-10)


@pytest.mark.parametrize("case", ["plain", "causal+alibi", "window+softcap", "causal+window+softcap+scale"])
def test_gradcheck_float64(case):
    q, k, v, g = make_inputs(2, 6, 9, 4, 2, 8, torch.float64, seed=5)
    mask = torch.rand(2, 9, generator=g) > 0.3
    mask[1, :] = False
    mask[1, 4] = True  # a batch row that sees one key
    kwargs = features(case, 4, g)
    for t in (q, k, v):
        t.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda q, k, v: op(q, k, v, mask, **kwargs)[0], (q, k, v))


def test_opcheck():
    q, k, v, g = make_inputs(2, 10, 12, 4, 2, 16, torch.float32, seed=6)
    mask = random_mask(2, 12, g)
    slopes = torch.rand(4, generator=g)
    for t in (q, k, v):
        t.requires_grad_(True)
    for args, kwargs in [((q, k, v), {}),
                         ((q, k, v, mask, True), {}),
                         ((q, k, v, mask, False, 0.2, slopes, 4, 3, 2.0), {})]:
        torch.library.opcheck(op, args, kwargs)


@pytest.mark.parametrize("bad,message", [
    (lambda q, k, v: (q[0], k, v), "expected q of shape"),
    (lambda q, k, v: (q, k[..., :8], v), "expected k of shape"),
    (lambda q, k, v: (q, k, v[:, :3]), "expected v of shape"),
    (lambda q, k, v: (q, k[:, :, :3], v[:, :, :3]), "multiple of the kv heads"),
    (lambda q, k, v: (q.double(), k, v), "one dtype"),
    (lambda q, k, v: (q.int(), k.int(), v.int()), "float64, float32, bfloat16 or float16"),
])
def test_bad_arguments_raise_clear_errors(bad, message):
    q, k, v, _ = make_inputs(2, 5, 7, 4, 4, 16, torch.float32, seed=7)
    with pytest.raises(RuntimeError, match=message):
        op(*bad(q, k, v))


@pytest.mark.parametrize("kwargs,message", [
    ({"key_padding_mask": torch.ones(2, 7)}, "key_padding_mask of dtype bool"),
    ({"key_padding_mask": torch.ones(2, 6, dtype=torch.bool)}, r"key_padding_mask of shape \(2, 7\)"),
    ({"alibi_slopes": torch.ones(3)}, r"alibi_slopes of shape \(4\)"),
    ({"window_left": -2}, "window_left and window_right >= -1"),
    ({"softcap": -1.0}, "softcap >= 0"),
])
def test_bad_options_raise_clear_errors(kwargs, message):
    q, k, v, _ = make_inputs(2, 5, 7, 4, 4, 16, torch.float32, seed=8)
    with pytest.raises(RuntimeError, match=message):
        op(q, k, v, **kwargs)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cpu_backward_is_deterministic(dtype):
    # The CPU backward has no atomics (each thread owns its rows and its kv head's dK, dV): it runs under
    # torch.use_deterministic_algorithms(True) and two runs agree bitwise.
    g = torch.Generator().manual_seed(5)
    q = torch.randn(2, 133, 4, 64, generator=g).to(dtype)
    k = torch.randn(2, 201, 2, 64, generator=g).to(dtype)
    v = torch.randn(2, 201, 2, 64, generator=g).to(dtype)
    mask = torch.rand(2, 201, generator=g) > 0.2
    grad = torch.randn(2, 133, 4, 64, generator=g).to(dtype)
    previous = torch.are_deterministic_algorithms_enabled()
    try:
        torch.use_deterministic_algorithms(True)
        runs = []
        for _ in range(2):
            leaves = [t.clone().requires_grad_() for t in (q, k, v)]
            out, _ = torch.ops.xtc.flash_attention(*leaves, mask, causal=True)
            out.backward(grad)
            runs.append([t.grad for t in leaves])
    finally:
        torch.use_deterministic_algorithms(previous)
    for first, second in zip(*runs):
        assert torch.equal(first, second)
