"""Encoder and Decoder on CUDA against x-transformers on CUDA with the same weights (skipped without a GPU)."""
import pytest
import torch

from x_transformers import Decoder as XDecoder, Encoder as XEncoder

from x_transformers_cpp import Decoder, Encoder

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def pair(cls, xcls, dtype, **kwargs):
    torch.manual_seed(0)
    reference = xcls(**kwargs)
    with torch.no_grad():
        for p in reference.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    ours = cls(**kwargs)
    ours.load_state_dict(reference.state_dict())
    return ours.cuda().to(dtype), reference.cuda().to(dtype)


@pytest.mark.parametrize("cls,xcls", [(Encoder, XEncoder), (Decoder, XDecoder)])
@pytest.mark.parametrize("dim,depth,heads,kv_heads,seq", [(128, 2, 4, None, 97), (256, 3, 8, 2, 1000)])
def test_float32_matches_x_transformers(cls, xcls, dim, depth, heads, kv_heads, seq):
    kwargs = dict(dim=dim, depth=depth, heads=heads)
    if kv_heads:
        kwargs["attn_kv_heads"] = kv_heads
    ours, reference = pair(cls, xcls, torch.float32, **kwargs)
    torch.backends.cuda.matmul.allow_tf32 = False
    x = torch.randn(3, seq, dim, device="cuda", requires_grad=True)
    mask = torch.rand(3, seq, device="cuda") > 0.2
    mask[:, 0] = True
    out = ours(x, mask=mask)
    expected = reference(x, mask=mask)
    torch.testing.assert_close(out, expected, atol=1e-4, rtol=1e-4)
    grad = torch.randn_like(out)
    got = torch.autograd.grad(out, [x, *ours.parameters()], grad)
    want = torch.autograd.grad(expected, [x, *reference.parameters()], grad)
    for g, w in zip(got, want):
        # Sums over thousands of tokens (bias gradients) cancel: bound the error by the tensor's scale.
        torch.testing.assert_close(g, w, atol=1e-3 * max(1.0, w.abs().max().item()), rtol=1e-3)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_tracks_float32(dtype):
    """Ours in bf16/fp16 is no further from the float32 result than x-transformers under autocast in that dtype."""
    ours, reference = pair(Encoder, XEncoder, torch.float32, dim=256, depth=2, heads=4)
    x = torch.randn(2, 513, 256, device="cuda")
    mask = torch.rand(2, 513, device="cuda") > 0.3
    mask[1] = False  # a fully padded sequence
    with torch.no_grad():
        expected = reference(x, mask=mask)
        with torch.autocast("cuda", dtype=dtype):
            reference_low = reference(x, mask=mask).float()
        low = ours.to(dtype)(x.to(dtype), mask=mask).float()
    assert torch.isfinite(low).all()
    ours_error = (low - expected).abs().max()
    torch_error = (reference_low - expected).abs().max()
    assert ours_error <= 2 * torch_error + 1e-2, (ours_error, torch_error)


@pytest.mark.parametrize("precision, tolerance", [("highest", 1e-4), ("high", 2e-2)])
@pytest.mark.parametrize("cls,xcls", [(Encoder, XEncoder), (Decoder, XDecoder)])
def test_float32_sdpa_route_matches_x_transformers(cls, xcls, precision, tolerance):
    # The cuda_sdpa_fp32 route (off by default): fp32 layers that need no rule of ours run in torch's SDPA, the
    # memory-efficient kernel at 'highest', cuBLAS TF32 at 'high'; their outputs and gradients track
    # x-transformers in float32 at 'highest'.
    from x_transformers_cpp.backends import Backend, attention_backend, enabled_backends, record_choices
    ours, reference = pair(cls, xcls, torch.float32, dim=128, depth=2, heads=4, rotary_pos_emb=True)
    x = torch.randn(2, 257, 128, device="cuda", requires_grad=True)
    saved = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("highest")
        expected = reference(x)
        grad = torch.randn_like(expected)
        want = torch.autograd.grad(expected, [x, *reference.parameters()], grad)
        torch.set_float32_matmul_precision(precision)
        with attention_backend([*enabled_backends(), Backend.CUDA_SDPA_FP32]), record_choices() as choices:
            out = ours(x)
            got = torch.autograd.grad(out, [x, *ours.parameters()], grad)
    finally:
        torch.set_float32_matmul_precision(saved)
    assert {c.chosen for c in choices if "layer" in c.site} == {Backend.CUDA_SDPA_FP32}
    torch.testing.assert_close(out, expected, atol=tolerance, rtol=tolerance)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, atol=tolerance * 10, rtol=tolerance)
