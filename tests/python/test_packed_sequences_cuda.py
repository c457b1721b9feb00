"""Packed sequences on CUDA (skipped without a GPU): torch.ops.xtc.flash_attention_varlen's CUDA kernel against the
dense CUDA op run on each sequence alone (it launches exactly that per sequence, so the two agree bitwise), with
device and host cu_seqlens; and unpad on CUDA, in the padded frame by default and in the varlen kernel with the
cuda_varlen backend (benchmarks/gpu_check.sh runs this file both ways), against x-transformers on CUDA."""
import pytest
import torch

from x_transformers_cpp.backends import enabled_backends

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

LENGTHS = [5, 0, 1, 300, 17, 129]


def offsets(lengths, device):
    return torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32, device=device)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("cu_device", ["cuda", "cpu"])
def test_varlen_equals_the_dense_op_per_sequence(dtype, causal, cu_device):
    import x_transformers_cpp  # noqa: F401
    torch.manual_seed(0)
    h, hk, d = 4, 2, 64
    total = sum(LENGTHS)
    q, k, v = (torch.randn(total, heads, d, device="cuda", dtype=dtype, requires_grad=True)
               for heads in (h, hk, hk))
    cu = offsets(LENGTHS, cu_device)
    slopes = torch.rand(h, device="cuda")
    out, lse = torch.ops.xtc.flash_attention_varlen(q, k, v, cu, cu, max(LENGTHS), max(LENGTHS), causal=causal,
                                                    alibi_slopes=slopes, softcap=20.0)
    grad = torch.randn_like(out)
    dq, dk, dv = torch.autograd.grad(out, (q, k, v), grad)
    starts = offsets(LENGTHS, "cpu").tolist()
    for i, n in enumerate(LENGTHS):
        if n == 0:
            continue
        rows = slice(starts[i], starts[i + 1])
        qi, ki, vi = (t[rows].detach().unsqueeze(0).requires_grad_() for t in (q, k, v))
        want, want_lse = torch.ops.xtc.flash_attention(qi, ki, vi, None, causal, None, slopes, -1, -1, 20.0)
        torch.testing.assert_close(out[rows], want[0], atol=0, rtol=0)
        torch.testing.assert_close(lse[:, rows], want_lse[0], atol=0, rtol=0)
        gq, gk, gv = torch.autograd.grad(want, (qi, ki, vi), grad[rows].unsqueeze(0))
        for got, exp in ((dq, gq), (dk, gk), (dv, gv)):
            torch.testing.assert_close(got[rows], exp[0], atol=1e-2 if dtype != torch.float32 else 1e-5, rtol=0)


@pytest.mark.parametrize("options", [dict(rotary_pos_emb=True), dict(alibi_pos_bias=True), dict(rel_pos_bias=True)],
                         ids=["rotary", "alibi", "t5"])
def test_unpad_on_cuda_matches_x_transformers(options):
    from x_transformers import Encoder as XEncoder
    from x_transformers_cpp import Encoder
    torch.manual_seed(0)
    kwargs = dict(dim=128, depth=2, heads=4, **options)
    theirs = XEncoder(**kwargs)
    ours = Encoder(**kwargs, unpad=True)
    ours.load_state_dict(theirs.state_dict())
    ours, theirs = ours.cuda(), theirs.cuda()
    torch.backends.cuda.matmul.allow_tf32 = False
    x = torch.randn(4, 200, 128, device="cuda")
    mask = torch.arange(200, device="cuda")[None] < torch.tensor([200, 0, 37, 150], device="cuda")[:, None]
    with torch.no_grad():
        out, expected = ours(x, mask=mask), theirs(x, mask=mask)
    torch.testing.assert_close(out[mask], expected[mask], atol=1e-4, rtol=0)
    assert out[~mask].eq(0).all()
    # Under bf16 autocast (the GPU users' precision): within twice x-transformers' own error against float32.
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        low, theirs_low = ours(x, mask=mask).float(), theirs(x, mask=mask).float()
    e_ours = (low[mask] - expected[mask]).abs().max()
    e_theirs = (theirs_low[mask] - expected[mask]).abs().max()
    assert e_ours <= 2 * e_theirs + 1e-2, (e_ours, e_theirs, enabled_backends())
