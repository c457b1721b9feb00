"""The Python side of scripts/check_sanitizers.sh: runs the instrumented library through its Python entry points
(the stacks with their common options, both wrappers, decoding with a cache, the op's forward and backward in every
CPU dtype, a bad input's error path, torch.export), each checked against x-transformers or a float64 reference, so
that ASan / UBSan see the code paths users take."""
import torch
import x_transformers_cpp as xtc
from x_transformers import Decoder as XDecoder
from x_transformers import Encoder as XEncoder

from attention_reference import reference_attention

assert "build-sanitize" in xtc._C.__file__, xtc._C.__file__  # the instrumented build, not the installed one
torch.manual_seed(0)


def check(name, got, want, tol):
    err = (got - want).abs().max().item()
    assert err <= tol, f"{name}: {err}"
    print(f"sanitizer smoke: {name} ok ({err:.1e})")


# The op, every CPU dtype, forward and backward, with a mask (a fully masked row), causality, ALiBi and GQA.
for dtype, tol in [(torch.float64, 1e-10), (torch.float32, 1e-4), (torch.bfloat16, 5e-2)]:
    q = torch.randn(2, 37, 4, 24, dtype=dtype, requires_grad=True)
    k = torch.randn(2, 300, 2, 24, dtype=dtype, requires_grad=True)
    v = torch.randn(2, 300, 2, 16, dtype=dtype, requires_grad=True)
    mask = torch.rand(2, 300) > 0.3
    mask[1] = False
    slopes = torch.rand(4, dtype=torch.float64 if dtype == torch.float64 else torch.float32)
    out, _ = torch.ops.xtc.flash_attention(q, k, v, mask, True, None, slopes, -1, -1, 0.0)
    grads = torch.autograd.grad(out, (q, k, v), torch.ones_like(out))
    wide = [t.detach().double().requires_grad_() for t in (q, k, v)]
    ref, _ = reference_attention(*wide, mask, causal=True, alibi_slopes=slopes.double())
    ref_grads = torch.autograd.grad(ref, wide, torch.ones_like(ref))
    check(f"flash_attention {dtype}", out.double(), ref, tol)
    for g, r in zip(grads, ref_grads):
        check(f"flash_attention backward {dtype}", g.double(), r, tol * 10)

# The stacks against x-transformers, forward and backward.
for ours_cls, theirs_cls, kwargs in [
        (xtc.Encoder, XEncoder, dict(rotary_pos_emb=True, attn_kv_heads=2)),
        (xtc.Encoder, XEncoder, dict(rel_pos_bias=True, ff_glu=True, attn_num_mem_kv=2)),
        (xtc.Decoder, XDecoder, dict(alibi_pos_bias=True, use_rmsnorm=True, shift_tokens=1)),
        (xtc.Decoder, XDecoder, dict(attn_pre_talking_heads=True, residual_attn=True, gate_residual=True))]:
    theirs = theirs_cls(dim=32, depth=2, heads=4, attn_dim_head=8, **kwargs)
    ours = ours_cls(dim=32, depth=2, heads=4, attn_dim_head=8, **kwargs)
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(3, 19, 32, requires_grad=True)
    mask = torch.rand(3, 19) > 0.3
    mask[0] = True
    got, want = ours(x, mask=mask), theirs(x, mask=mask)
    check(f"{ours_cls.__name__} {sorted(kwargs)}", got, want, 1e-5)
    check("  its input gradient", torch.autograd.grad(got.sum(), x)[0], torch.autograd.grad(want.sum(), x)[0], 1e-4)

# Decoding with a cache, token by token, against the full forward.
decoder = xtc.Decoder(dim=32, depth=2, heads=4, attn_dim_head=8, rotary_pos_emb=True).eval()
x = torch.randn(2, 9, 32)
with torch.no_grad():
    full = decoder(x)
    _, cache = decoder(x[:, :1], return_hiddens=True)
    steps = [full[:, :1]]
    for i in range(2, 10):
        out, cache = decoder(x[:, :i], cache=cache, return_hiddens=True)
        steps.append(out[:, -1:])
check("cached decoding", torch.cat(steps, 1), full, 1e-5)

# Both wrappers.
tw = xtc.TransformerWrapper(num_tokens=50, max_seq_len=32, num_memory_tokens=2,
                            attn_layers=xtc.Decoder(dim=32, depth=1, heads=4))
tokens = torch.randint(0, 50, (2, 11))
logits = tw(tokens, mask=torch.rand(2, 11) > 0.2)
logits.sum().backward()
assert logits.shape == (2, 11, 50) and torch.isfinite(logits).all()
ct = xtc.ContinuousTransformerWrapper(dim_in=12, dim_out=5, max_seq_len=32,
                                      attn_layers=xtc.Encoder(dim=32, depth=1, heads=4))
out = ct(torch.randn(2, 11, 12), lens=torch.tensor([11, 4]))
assert out.shape == (2, 11, 5) and torch.isfinite(out).all()
print("sanitizer smoke: wrappers ok")

# An error path: the message crosses from C++ into a Python exception.
try:
    xtc.Encoder(dim=32, depth=1, heads=4)(torch.randn(2, 5, 31))
    raise AssertionError("a bad input was accepted")
except ValueError as e:
    assert "expected x of shape" in str(e)
print("sanitizer smoke: error path ok")

# torch.export with dynamic shapes (the symbolic-size paths).
encoder = xtc.Encoder(dim=32, depth=1, heads=4, rotary_pos_emb=True).eval()
batch, seq = torch.export.Dim("batch"), torch.export.Dim("seq")
program = torch.export.export(encoder, (torch.randn(2, 7, 32),), {"mask": torch.rand(2, 7) > 0.2},
                              dynamic_shapes={"x": {0: batch, 1: seq}, "mask": {0: batch, 1: seq}})
x, mask = torch.randn(3, 13, 32), torch.rand(3, 13) > 0.2
with torch.no_grad():
    check("exported encoder", program.module()(x, mask=mask), encoder(x, mask=mask), 1e-6)
print("sanitizer smoke: done")
