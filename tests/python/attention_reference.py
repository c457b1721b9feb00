"""A naive, dense float64 reference of xtc::flash_attention's semantics, and its expectations on NaN logits, for the
op tests of every device."""
import torch


def visible_keys(n, m, mask=None, causal=False, window=(-1, -1), device="cpu"):
    """(b or 1, 1, n, m) bool: which key each query may attend to."""
    offset = m - n
    i = torch.arange(n, device=device)[:, None] + offset
    j = torch.arange(m, device=device)[None, :]
    keep = torch.ones(n, m, dtype=torch.bool, device=device)
    if causal:
        keep &= j <= i
    left, right = window
    if left >= 0:
        keep &= j >= i - left
    if right >= 0:
        keep &= j <= i + right
    keep = keep[None, None]
    if mask is not None:
        keep = keep & mask[:, None, None, :]
    return keep


def reference_attention(q, k, v, mask=None, causal=False, scale=None, alibi_slopes=None, window=(-1, -1),
                        softcap=0.0):
    """q (b, n, h, d), k (b, m, hk, d), v (b, m, hk, dv) -> out (b, n, h, dv), lse (b, h, n); in float64."""
    q, k, v = (t.double() for t in (q, k, v))
    b, n, h, d = q.shape
    m, hk = k.shape[1], k.shape[2]
    kv_index = torch.arange(h, device=q.device) % hk  # query head i reads kv head i % hk
    k = k[:, :, kv_index].transpose(1, 2)
    v = v[:, :, kv_index].transpose(1, 2)
    q = q.transpose(1, 2)
    scale = d ** -0.5 if scale is None else scale
    s = q @ k.transpose(-1, -2) * scale
    if alibi_slopes is not None:
        pos = torch.arange(n, device=q.device)[:, None] + (m - n)
        dist = (pos - torch.arange(m, device=q.device)[None, :]).abs().double()
        s = s - alibi_slopes.double()[None, :, None, None] * dist
    if softcap > 0:
        s = softcap * torch.tanh(s / softcap)
    keep = visible_keys(n, m, mask, causal, window, q.device)
    s = s.masked_fill(~keep, float("-inf"))
    lse = torch.logsumexp(s, dim=-1)
    p = torch.exp(s - lse[..., None]).nan_to_num(0.0)  # rows that see nothing: all zero
    out = (p @ v).transpose(1, 2)
    return out, lse


def low_precision_attention(q, k, v, mask=None, causal=False, scale=None, alibi_slopes=None, window=(-1, -1),
                            softcap=0.0):
    """The same attention as plain torch ops in q's own dtype (bf16 / fp16), as flash-attention's
    attention_ref(upcast=False): products, scores and probabilities rounded to that dtype; the yardstick of the
    low-precision tolerance rule. Returns out (b, n, h, dv) and the float32 lse of the rounded scores."""
    b, n, h, d = q.shape
    m, hk = k.shape[1], k.shape[2]
    kv_index = torch.arange(h, device=q.device) % hk
    k = k[:, :, kv_index].transpose(1, 2)
    v = v[:, :, kv_index].transpose(1, 2)
    q = q.transpose(1, 2)
    scale = d ** -0.5 if scale is None else scale
    s = (q @ k.transpose(-1, -2)) * scale
    if alibi_slopes is not None:
        pos = torch.arange(n, device=q.device)[:, None] + (m - n)
        dist = (pos - torch.arange(m, device=q.device)[None, :]).abs().to(q.dtype)
        s = s - alibi_slopes.to(q.dtype)[None, :, None, None] * dist
    if softcap > 0:
        s = softcap * torch.tanh(s / softcap)
    keep = visible_keys(n, m, mask, causal, window, q.device)
    s = s.masked_fill(~keep, float("-inf"))
    lse = torch.logsumexp(s.float(), dim=-1)
    p = torch.softmax(s, dim=-1).nan_to_num(0.0)
    return (p @ v).transpose(1, 2), lse


def check_nan_logits_reach_the_output(device, dtype, head_dim, keys):
    """A NaN among a query's visible keys makes its output, lse and query gradient NaN, as a softmax does; the other
    heads and batches stay finite; a masked NaN key changes nothing. The NaN key sits 100 before the end, past the
    first key block of every kernel for keys >= 300."""
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, keys, 2, head_dim, generator=g).to(device, dtype) for _ in range(3))
    nan_key = keys - 100
    k[0, nan_key, 1, 3] = float("nan")
    mask = torch.ones(2, keys, dtype=torch.bool, device=device)
    q.requires_grad_(True)
    out, lse = torch.ops.xtc.flash_attention(q, k, v, mask)
    assert out[0, :, 1].isnan().all() and lse[0, 1].isnan().all()
    assert not out[0, :, 0].isnan().any() and not out[1].isnan().any() and not lse[1].isnan().any()
    out.sum().backward()
    assert q.grad[0, :, 1].isnan().all()
    assert not q.grad[0, :, 0].isnan().any() and not q.grad[1].isnan().any()
    mask[0, nan_key] = False
    out, lse = torch.ops.xtc.flash_attention(q.detach(), k, v, mask)
    assert not out.isnan().any() and not lse.isnan().any()
