"""torch.ops.xtc.flash_attention_varlen on the CPU: packed sequences of different lengths (empty ones, length 1,
lengths across the kernel's key blocks) against the float64 reference run on each sequence alone, forward and
gradients, with causal / ALiBi / window / soft-cap / scale / GQA; opcheck; bad arguments."""
import pytest
import torch

import x_transformers_cpp  # noqa: F401  (registers torch.ops.xtc)
from attention_reference import reference_attention

op = torch.ops.xtc.flash_attention_varlen


def _cu(lengths):
    return torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)


def _packed(q_lens, k_lens, h, hk, d, dv, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(sum(q_lens), h, d, generator=g, dtype=dtype)
    k = torch.randn(sum(k_lens), hk, d, generator=g, dtype=dtype)
    v = torch.randn(sum(k_lens), hk, dv, generator=g, dtype=dtype)
    return q, k, v


CASES = [
    # q lengths, k lengths (self-attention when equal), heads, kv heads, head dims
    ([5, 0, 1, 300, 17], [5, 0, 1, 300, 17], 4, 2, 16, 16),
    ([3, 7, 2], [9, 4, 600], 2, 1, 8, 12),  # cross lengths, a sequence past one key block
    ([1, 1, 1], [1, 1, 1], 3, 3, 5, 5),
    ([4, 6], [0, 6], 2, 2, 8, 8),  # a sequence with queries but no keys
]
OPTIONS = [
    dict(),
    dict(causal=True),
    dict(causal=True, alibi=True, softcap=3.0),
    dict(window=(3, 2), scale=0.3),
    dict(causal=True, window=(5, -1)),
]


@pytest.mark.parametrize("options", OPTIONS, ids=lambda o: "-".join(f"{k}={v}" for k, v in o.items()) or "plain")
@pytest.mark.parametrize("case", CASES, ids=[f"case{i}" for i in range(len(CASES))])
def test_matches_float64_reference_per_sequence(case, options):
    q_lens, k_lens, h, hk, d, dv = case
    q, k, v = (t.requires_grad_() for t in _packed(q_lens, k_lens, h, hk, d, dv, torch.float64, seed=len(q_lens)))
    slopes = torch.rand(h, dtype=torch.float64) if options.get("alibi") else None
    window = options.get("window", (-1, -1))
    kwargs = dict(causal=options.get("causal", False), scale=options.get("scale"), alibi_slopes=slopes,
                  window_left=window[0], window_right=window[1], softcap=options.get("softcap", 0.0))
    out, lse = op(q, k, v, _cu(q_lens), _cu(k_lens), max(q_lens), max(k_lens), **kwargs)
    assert out.shape == (q.shape[0], h, dv) and lse.shape == (h, q.shape[0])
    grad = torch.randn_like(out)
    dq, dk, dv_ = torch.autograd.grad(out, (q, k, v), grad)
    cq, ck = _cu(q_lens).tolist(), _cu(k_lens).tolist()
    for i in range(len(q_lens)):
        qs, ks = slice(cq[i], cq[i + 1]), slice(ck[i], ck[i + 1])
        if q_lens[i] == 0:
            continue
        qi, ki, vi = (t[s].detach().unsqueeze(0).requires_grad_() for t, s in ((q, qs), (k, ks), (v, ks)))
        ref, ref_lse = reference_attention(qi, ki, vi, None, causal=kwargs["causal"], scale=kwargs["scale"],
                                           alibi_slopes=slopes, window=window, softcap=kwargs["softcap"])
        torch.testing.assert_close(out[qs], ref[0], atol=1e-10, rtol=0)
        torch.testing.assert_close(lse[:, qs], ref_lse[0], atol=1e-10, rtol=0)
        if k_lens[i] == 0:
            assert (out[qs] == 0).all() and (lse[:, qs] == float("-inf")).all()
            continue
        gq, gk, gv = torch.autograd.grad(ref, (qi, ki, vi), grad[qs].unsqueeze(0))
        torch.testing.assert_close(dq[qs], gq[0], atol=1e-10, rtol=0)
        torch.testing.assert_close(dk[ks], gk[0], atol=1e-10, rtol=0)
        torch.testing.assert_close(dv_[ks], gv[0], atol=1e-10, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_low_precision_equals_the_dense_op_per_sequence(dtype):
    q_lens = [7, 0, 130, 1]
    q, k, v = _packed(q_lens, q_lens, 4, 2, 16, 16, dtype, seed=3)
    out, lse = op(q, k, v, _cu(q_lens), _cu(q_lens), 130, 130, True)
    cu = _cu(q_lens).tolist()
    for i in range(len(q_lens)):
        s = slice(cu[i], cu[i + 1])
        if q_lens[i]:
            ref, ref_lse = torch.ops.xtc.flash_attention(q[s][None], k[s][None], v[s][None], None, True)
            torch.testing.assert_close(out[s], ref[0], atol=0, rtol=0)
            torch.testing.assert_close(lse[:, s], ref_lse[0], atol=0, rtol=0)


def test_gradcheck_and_opcheck():
    q_lens, k_lens = [3, 0, 5], [4, 2, 5]
    q, k, v = (t.requires_grad_() for t in _packed(q_lens, k_lens, 2, 1, 4, 3, torch.float64, seed=0))
    args = (_cu(q_lens), _cu(k_lens), 5, 5, True, None, torch.rand(2, dtype=torch.float64), -1, -1, 2.0)
    assert torch.autograd.gradcheck(lambda a, b, c: op(a, b, c, *args)[0], (q, k, v))
    torch.library.opcheck(op, (q, k, v, *args))
    torch.library.opcheck(op, (q.detach(), k.detach(), v.detach(), *args))


@pytest.mark.parametrize("cu_q,cu_k,max_q,message", [
    ([0, 3, 7], [0, 3, 8], 4, r"expected cu_seqlens_k from 0 to the packed rows \(7\), got 0 to 8"),
    ([0, 4, 3, 7], [0, 4, 3, 7], 4, r"expected cu_seqlens_q non-decreasing, got 4 then 3 at sequence 1"),
    ([0, 3, 7], [0, 3, 7], 3, r"expected max_seqlen_q \(3\) to bound every sequence, got one of 4 at sequence 1"),
    ([0, 7], [0, 3, 7], 7, r"expected cu_seqlens_q and cu_seqlens_k of one batch, got 2 and 3 entries"),
], ids=["end", "decreasing", "max_seqlen", "batch"])
def test_bad_cu_seqlens(cu_q, cu_k, max_q, message):
    q, k, v = _packed([7], [7], 2, 2, 4, 4, torch.float32, seed=0)
    with pytest.raises(RuntimeError, match=message):
        op(q, k, v, torch.tensor(cu_q, dtype=torch.int32), torch.tensor(cu_k, dtype=torch.int32), max_q, 7)


def test_bad_shapes_and_dtypes():
    q, k, v = _packed([7], [7], 2, 2, 4, 4, torch.float32, seed=0)
    cu = _cu([7])
    with pytest.raises(RuntimeError, match=r"expected q of shape \(total_q, heads, head_dim\), got \[1, 7, 2, 4\]"):
        op(q[None], k, v, cu, cu, 7, 7)
    with pytest.raises(RuntimeError, match=r"expected cu_seqlens_q of shape \(batch \+ 1,\) and dtype int32, got \[2\] "
                                           r"Long"):
        op(q, k, v, cu.long(), cu, 7, 7)
    with pytest.raises(RuntimeError, match=r"query heads \(2\) to be a multiple of the kv heads \(3\)"):
        op(q, torch.randn(7, 3, 4), torch.randn(7, 3, 4), cu, cu, 7, 7)


def test_autocast_runs_in_bf16_like_the_dense_op():
    # As flash_attention (and SDPA): float32 inputs under CPU autocast are cast to bf16; out comes back in bf16.
    q, k, v = _packed([5, 9], [5, 9], 4, 2, 16, 16, torch.float32, seed=3)
    cu = _cu([5, 9])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, lse = op(q, k, v, cu, cu, 9, 9, causal=True)
    want, want_lse = op(q.bfloat16(), k.bfloat16(), v.bfloat16(), cu, cu, 9, 9, causal=True)
    assert out.dtype == torch.bfloat16 and lse.dtype == torch.float32
    torch.testing.assert_close(out, want, atol=0, rtol=0)
    torch.testing.assert_close(lse, want_lse, atol=0, rtol=0)
