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


# The one-launch kernels (cuda_varlen_one_launch, off by default): sequences with no queries, with no keys, with
# more keys than queries and fewer, and one longer than a tile.
ONE_LAUNCH_Q = [5, 0, 1, 300, 17, 129, 3]
ONE_LAUNCH_K = [9, 4, 1, 300, 0, 140, 70]


def one_launch():
    from x_transformers_cpp.backends import Backend, attention_backend
    return attention_backend([*[b for b in enabled_backends() if b != Backend.CUDA_VARLEN_ONE_LAUNCH],
                              Backend.CUDA_VARLEN_ONE_LAUNCH])


def packed_call(dtype, d, heads, kv_heads, device="cuda", **rules):
    g = torch.Generator().manual_seed(0)
    q = torch.randn(sum(ONE_LAUNCH_Q), heads, d, generator=g, dtype=torch.float64)
    k, v = (torch.randn(sum(ONE_LAUNCH_K), kv_heads, d, generator=g, dtype=torch.float64) for _ in range(2))
    q, k, v = (t.to(device, dtype).requires_grad_() for t in (q, k, v))
    args = (offsets(ONE_LAUNCH_Q, device), offsets(ONE_LAUNCH_K, device), max(ONE_LAUNCH_Q), max(ONE_LAUNCH_K))
    return q, k, v, args, rules


def run_varlen(q, k, v, args, rules, grad):
    out, lse = torch.ops.xtc.flash_attention_varlen(q, k, v, *args, **rules)
    return (out, lse, *torch.autograd.grad(out, (q, k, v), grad))


RULES = [dict(), dict(causal=True), dict(window_left=7, window_right=3), dict(softcap=15.0),
         dict(causal=True, alibi=True)]


@pytest.mark.parametrize("rules", RULES, ids=["plain", "causal", "window", "softcap", "causal_alibi"])
@pytest.mark.parametrize("dtype,d", [(torch.bfloat16, 32), (torch.bfloat16, 64), (torch.float16, 128),
                                     (torch.float32, 80), (torch.float64, 48)])
def test_one_launch_equals_the_per_sequence_path(dtype, d, rules):
    """Each CTA narrows the frame to its sequence and runs the dense kernel's code: the forward is the
    per-sequence launch's bitwise; the backward (dQ by atomics) agrees to the accumulation order."""
    import x_transformers_cpp  # noqa: F401
    rules = dict(rules)
    if rules.pop("alibi", False):
        rules["alibi_slopes"] = torch.rand(4, device="cuda")
    q, k, v, args, rules = packed_call(dtype, d, 4, 2, **rules)
    grad = torch.randn(q.shape[0], 4, d, device="cuda", dtype=dtype)
    want = run_varlen(q, k, v, args, rules, grad)
    with one_launch():
        got = run_varlen(q, k, v, args, rules, grad)
    for name, a, b in zip(("out", "lse"), got, want):
        torch.testing.assert_close(a, b, atol=0, rtol=0, msg=name)
    tol = {torch.float64: 1e-12, torch.float32: 1e-5}.get(dtype, 1e-2)
    for name, a, b in zip(("dq", "dk", "dv"), got[2:], want[2:]):
        torch.testing.assert_close(a, b, atol=tol, rtol=0, msg=name)


def test_one_launch_float64_matches_the_cpu_kernel():
    """An independent check: CUDA's one-launch float64 against the CPU kernels, outputs and gradients."""
    import x_transformers_cpp  # noqa: F401
    rules = dict(causal=True, softcap=30.0)
    q, k, v, args, _ = packed_call(torch.float64, 40, 6, 3, **rules)
    grad = torch.randn(q.shape[0], 6, 40, dtype=torch.float64, device="cuda")
    with one_launch():
        got = run_varlen(q, k, v, args, rules, grad)
    cq, ck, cv = (t.detach().cpu().requires_grad_() for t in (q, k, v))
    cpu_args = (args[0].cpu(), args[1].cpu(), *args[2:])
    want = run_varlen(cq, ck, cv, cpu_args, rules, grad.cpu())
    for name, a, b in zip(("out", "lse", "dq", "dk", "dv"), got, want):
        torch.testing.assert_close(a.cpu(), b, atol=1e-10, rtol=0, msg=name)


def test_one_launch_needs_no_host_sync_and_replays_in_a_cuda_graph():
    """The offsets stay on the device: no synchronising call (sync debug mode 'error'), and a captured forward and
    backward replay on new inputs with the eager results."""
    import x_transformers_cpp  # noqa: F401
    q, k, v, args, rules = packed_call(torch.bfloat16, 64, 4, 4, causal=True)
    q, k, v = (t.detach() for t in (q, k, v))
    grad = torch.randn(q.shape[0], 4, 64, device="cuda", dtype=torch.bfloat16)

    def step():
        out, lse = torch.ops.xtc.flash_attention_varlen(q, k, v, *args, **rules)
        grads = torch.ops.xtc.flash_attention_varlen_backward(grad, q, k, v, out, lse, *args, True, None, None, -1,
                                                              -1, 0.0)
        return (out, lse, *grads)

    with one_launch():
        torch.cuda.set_sync_debug_mode("error")
        try:
            step()
        finally:
            torch.cuda.set_sync_debug_mode(0)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            step()  # warm-up off the capture stream, as torch.cuda.graphs asks
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            captured = step()
        for t in (q, k, v):
            t.copy_(torch.randn_like(t))
        graph.replay()
        eager = step()
    for a, b in zip(captured, eager):
        torch.testing.assert_close(a, b, atol=1e-2, rtol=0)


def test_one_launch_checks_the_frame_without_reading_the_offsets():
    import x_transformers_cpp  # noqa: F401
    q, k, v, args, _ = packed_call(torch.bfloat16, 64, 4, 2)
    with one_launch():
        with pytest.raises(RuntimeError, match="max_seqlen_q >= 1"):
            torch.ops.xtc.flash_attention_varlen(q, k, v, args[0], args[1], 0, args[3])
        with pytest.raises(RuntimeError, match="on q's device"):
            torch.ops.xtc.flash_attention_varlen(q, k, v, args[0].cpu(), args[1], *args[2:])
        with pytest.raises(RuntimeError, match="head_dim 40"):
            torch.ops.xtc.flash_attention_varlen(q[..., :40], k[..., :40], v[..., :40], *args)
