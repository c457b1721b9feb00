"""A naive, dense float64 reference of xtc::flash_attention's semantics, for the op tests."""
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
