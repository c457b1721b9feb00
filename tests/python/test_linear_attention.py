"""attn_linear (an xtc extension): linear attention in the stack against a float64 reference of the whole layer."""
import pytest
import torch
import torch.nn.functional as F

from x_transformers_cpp import Decoder, Encoder


def reference_linear_attention(q, k, v, key_mask, causal):
    """Dense float64 linear attention: phi = elu + 1, scores phi(q) phi(k)^T over visible keys, normalised."""
    b, n, h, d = q.shape
    m, hk = k.shape[1], k.shape[2]
    index = torch.arange(h) % hk
    phi_q, phi_k, v = F.elu(q) + 1, (F.elu(k) + 1)[:, :, index], v[:, :, index]
    scores = torch.einsum("bnhd,bmhd->bhnm", phi_q, phi_k)
    keep = torch.ones(b, 1, n, m, dtype=torch.bool)
    if key_mask is not None:
        keep = keep & key_mask[:, None, None, :]
    if causal:
        keep = keep & (torch.arange(m)[None, :] <= torch.arange(n)[:, None] + (m - n))
    scores = scores * keep
    den = scores.sum(-1, keepdim=True)
    out = torch.einsum("bhnm,bmhe->bhne", scores, v) / torch.where(den == 0, torch.ones_like(den), den)
    return out.transpose(1, 2)


def reference_layer_stack(model, x, mask, causal):
    """The default stack with linear attention, recomputed in float64 from the module's parameters."""
    p = {k: v.double() for k, v in model.state_dict().items()}
    x = x.double()
    ln = lambda t, g: F.layer_norm(t, t.shape[-1:]) * (g + 1)  # noqa: E731
    b, n, dim = x.shape
    heads, dh = model._heads, model._dim_head
    for i in range(len(model.layers)):
        prefix = f"layers.{i}."
        h = ln(x, p[prefix + "0.0.gamma"])
        if prefix + "1.to_q.weight" in p:
            q = (h @ p[prefix + "1.to_q.weight"].T).view(b, n, heads, dh)
            k = (h @ p[prefix + "1.to_k.weight"].T).view(b, n, -1, dh)
            v = (h @ p[prefix + "1.to_v.weight"].T).view(b, n, -1, dh)
            key_mask = mask
            if prefix + "1.mem_k" in p:
                mem_k = p[prefix + "1.mem_k"].transpose(0, 1)[None].expand(b, -1, -1, -1)
                mem_v = p[prefix + "1.mem_v"].transpose(0, 1)[None].expand(b, -1, -1, -1)
                k, v = torch.cat([mem_k, k], 1), torch.cat([mem_v, v], 1)
                if mask is not None:
                    key_mask = torch.cat([torch.ones(b, mem_k.shape[1], dtype=torch.bool), mask], 1)
            out = reference_linear_attention(q, k, v, key_mask, causal and n > 1).reshape(b, n, -1)
            out = out @ p[prefix + "1.to_out.weight"].T
            if mask is not None:
                out = out.masked_fill(~mask[..., None], 0)
        else:
            hidden = F.gelu(h @ p[prefix + "1.ff.0.0.weight"].T + p[prefix + "1.ff.0.0.bias"])
            out = hidden @ p[prefix + "1.ff.2.weight"].T + p[prefix + "1.ff.2.bias"]
        x = x + out
    return ln(x, p["final_norm.gamma"])


@pytest.mark.parametrize("cls,causal", [(Encoder, False), (Decoder, True)])
@pytest.mark.parametrize("kv_heads,mem,n", [(None, 0, 9), (2, 0, 150), (None, 3, 97), (1, 2, 1)])
@pytest.mark.parametrize("masked", [False, True])
def test_matches_float64_reference(cls, causal, kv_heads, mem, n, masked):
    torch.manual_seed(n + mem)
    kwargs = dict(dim=32, depth=2, heads=4, attn_dim_head=8, attn_linear=True, attn_num_mem_kv=mem)
    if kv_heads:
        kwargs["attn_kv_heads"] = kv_heads
    model = cls(**kwargs)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.1)
    model._heads, model._dim_head = 4, 8
    x = torch.randn(3, n, 32)
    mask = None
    if masked:
        mask = torch.rand(3, n) > 0.3
        mask[0] = True
        mask[2] = False  # a fully masked sequence
    out = model(x, mask=mask)
    expected = reference_layer_stack(model, x, mask, causal)
    torch.testing.assert_close(out.double(), expected, atol=1e-5, rtol=1e-5)


def test_gradcheck_float64():
    torch.manual_seed(0)
    model = Decoder(dim=16, depth=1, heads=2, attn_dim_head=8, attn_linear=True, attn_num_mem_kv=1).double()
    x = torch.randn(2, 70, 16, dtype=torch.float64, requires_grad=True)  # crosses a 64-query chunk
    mask = torch.rand(2, 70) > 0.2
    assert torch.autograd.gradcheck(lambda t: model(t, mask=mask), (x,), atol=1e-6)


@pytest.mark.parametrize("kwargs,message", [
    (dict(attn_softclamp_logits=True), "linear has no score matrix"),
    (dict(alibi_pos_bias=True), "linear has no score matrix"),
    (dict(attn_dropout=0.1), "linear has no score matrix"),
])
def test_clashes_are_rejected(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Encoder(dim=32, depth=1, heads=4, attn_linear=True, **kwargs)
