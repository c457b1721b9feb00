"""Parity of Encoder / Decoder with the installed x-transformers package: state_dict layout, forward and backward.

Every case builds the x-transformers module, perturbs its weights (randn * 0.1, so the norms' zero-initialised
gammas matter), loads them strictly into ours and compares, in float32: outputs within 1e-5, and with one random
upstream gradient, the input gradient and every parameter's gradient (matched by name) within 1e-4 (both relative to the tensor's
largest value when that exceeds 1). Padded
positions are defined the same way in both implementations (their attention output is zero, the feed-forward still
runs), so outputs are compared everywhere, fully masked batch rows included.
"""
import zlib

import pytest
import torch

from xtc_testing import make_pair, random_mask

OUT_TOL = 1e-5
GRAD_TOL = 1e-4

# (id, module kwargs, batch, seq). Sizes are odd on purpose; dim 512 only with small depth and seq to keep the file fast.
CASES = [
    ("d32-L1-h1-dh32", dict(dim=32, depth=1, heads=1, attn_dim_head=32), 3, 7),
    ("d32-L3-h4-dh8", dict(dim=32, depth=3, heads=4, attn_dim_head=8), 2, 13),
    ("d32-L2-h3-dh40-n97", dict(dim=32, depth=2, heads=3, attn_dim_head=40), 3, 97),
    ("d32-L1-h5-dh5", dict(dim=32, depth=1, heads=5, attn_dim_head=5), 2, 19),
    ("d128-L6-h8-dh16", dict(dim=128, depth=6, heads=8, attn_dim_head=16), 2, 11),
    ("d128-L2-h2-default-dh", dict(dim=128, depth=2, heads=2), 3, 33),
    ("d128-L4-h1-dh128", dict(dim=128, depth=4, heads=1, attn_dim_head=128), 2, 6),
    ("d512-L1-h8", dict(dim=512, depth=1, heads=8), 2, 9),
    ("d512-L2-h1-dh512", dict(dim=512, depth=2, heads=1, attn_dim_head=512), 2, 5),
    ("d512-L3-h4-dh40", dict(dim=512, depth=3, heads=4, attn_dim_head=40), 3, 16),
    ("d64-L2-h2-dh32-n130", dict(dim=64, depth=2, heads=2, attn_dim_head=32), 2, 130),
    ("d64-L1-h2-dh40-n257", dict(dim=64, depth=1, heads=2, attn_dim_head=40), 2, 257),
    # grouped-query attention and one kv head
    ("gqa-h6-kv2-dh24", dict(dim=64, depth=2, heads=6, attn_kv_heads=2, attn_dim_head=24), 3, 17),
    ("gqa-h8-kv4", dict(dim=32, depth=1, heads=8, attn_kv_heads=4, attn_dim_head=8), 2, 10),
    ("gqa-h4-kv4", dict(dim=32, depth=2, heads=4, attn_kv_heads=4, attn_dim_head=8), 2, 9),
    ("one-kv-head-h7", dict(dim=64, depth=2, heads=7, attn_one_kv_head=True, attn_dim_head=12), 3, 15),
    # feed-forward width
    ("ff-mult1", dict(dim=32, depth=2, heads=2, attn_dim_head=16, ff_mult=1), 2, 8),
    ("ff-mult3", dict(dim=48, depth=3, heads=3, attn_dim_head=16, ff_mult=3), 3, 12),
    ("ff-mult2.5", dict(dim=36, depth=1, heads=2, attn_dim_head=18, ff_mult=2.5), 2, 7),
    # the flash path of x-transformers (F.scaled_dot_product_attention) against ours with the same flag
    ("attn-flash", dict(dim=64, depth=2, heads=4, attn_dim_head=16, attn_flash=True), 3, 21),
]


def _run(module, x, mask, grad_out):
    x = x.clone().requires_grad_(True)
    module.zero_grad(set_to_none=True)
    out = module(x, mask=mask)
    out.backward(grad_out)
    grads = {name: p.grad for name, p in module.named_parameters()}
    return out.detach(), x.grad, grads


def _assert_close(actual, expected, tol, what):
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    assert torch.isfinite(actual).all(), f"{what}: non-finite values"
    # tol is absolute for values of unit scale and relative to the largest value beyond that: deep, wide stacks give
    # parameter gradients of magnitude ~100, where float32 rounding alone (x-transformers' own, measured against a
    # float64 run) exceeds an absolute 1e-4.
    scale = max(1.0, expected.abs().max().item())
    err = (actual - expected).abs().max().item()
    assert err <= tol * scale, f"{what}: max abs error {err:.3g} > {tol} * {scale:.3g}"


@pytest.mark.parametrize("masked", [False, True], ids=["nomask", "mask"])
@pytest.mark.parametrize("kind", ["encoder", "decoder"])
@pytest.mark.parametrize("kwargs,batch,seq", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_parity_with_x_transformers(kind, kwargs, batch, seq, masked):
    torch.manual_seed(zlib.crc32(repr((kind, sorted(kwargs.items()), batch, seq, masked)).encode()))
    ours, theirs = make_pair(kind, **kwargs)

    ours_sd, theirs_sd = ours.state_dict(), theirs.state_dict()
    assert list(ours_sd) == list(theirs_sd)
    for name in theirs_sd:
        assert ours_sd[name].shape == theirs_sd[name].shape, name
        assert torch.equal(ours_sd[name], theirs_sd[name]), name
    assert [n for n, _ in ours.named_parameters()] == [n for n, _ in theirs.named_parameters()]

    x = torch.randn(batch, seq, kwargs["dim"])
    mask = random_mask(batch, seq) if masked else None
    grad_out = torch.randn(batch, seq, kwargs["dim"])

    out, x_grad, grads = _run(ours, x, mask, grad_out)
    ref_out, ref_x_grad, ref_grads = _run(theirs, x, mask, grad_out)

    _assert_close(out, ref_out, OUT_TOL, "output")
    _assert_close(x_grad, ref_x_grad, GRAD_TOL, "input gradient")
    assert grads.keys() == ref_grads.keys()
    for name, ref in ref_grads.items():
        assert ref is not None, f"x-transformers left {name} without a gradient"
        assert grads[name] is not None, f"no gradient for {name}"
        _assert_close(grads[name], ref, GRAD_TOL, f"gradient of {name}")


def test_parameter_seeding_is_not_trivial():
    """Guard for the test itself: the perturbation makes outputs depend on every kind of parameter."""
    torch.manual_seed(0)
    ours, _ = make_pair("encoder", dim=32, depth=1, heads=2, attn_dim_head=16)
    x = torch.randn(2, 5, 32)
    base = ours(x)
    for name, p in ours.named_parameters():
        with torch.no_grad():
            p.add_(1.0)
        changed = ours(x)
        with torch.no_grad():
            p.sub_(1.0)
        assert not torch.allclose(changed, base), f"output does not depend on {name}"


@pytest.mark.parametrize("kind", ["encoder", "decoder"])
def test_masked_positions_do_not_leak(kind):
    """Changing padded tokens changes nothing at kept positions (checks the mask is honoured, not only matched)."""
    torch.manual_seed(1)
    ours, _ = make_pair(kind, dim=32, depth=2, heads=4, attn_dim_head=8)
    x = torch.randn(3, 11, 32)
    mask = random_mask(3, 11)
    y = x.clone()
    y[~mask] = torch.randn(int((~mask).sum()), 32)
    a, b = ours(x, mask=mask), ours(y, mask=mask)
    assert torch.allclose(a[mask], b[mask], atol=1e-6, rtol=0)


def test_decoder_is_causal():
    """Changing a later token leaves earlier outputs of the Decoder untouched, and changes the Encoder's."""
    torch.manual_seed(2)
    dec, _ = make_pair("decoder", dim=32, depth=2, heads=4, attn_dim_head=8)
    enc, _ = make_pair("encoder", dim=32, depth=2, heads=4, attn_dim_head=8)
    x = torch.randn(2, 9, 32)
    y = x.clone()
    y[:, 6:] = torch.randn(2, 3, 32)
    assert torch.allclose(dec(x)[:, :6], dec(y)[:, :6], atol=1e-6, rtol=0)
    assert not torch.allclose(enc(x)[:, :6], enc(y)[:, :6], atol=1e-4, rtol=0)
