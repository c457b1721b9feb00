"""torch.func.vmap over xtc::flash_attention: the vmapped dimension folds into the batch (each (batch, head) pair
is an independent attention, so one call over V * b batches is V calls over b), inputs without it are broadcast.
The layer-stack and wrapper ops need no rule here: under vmap they decompose into their aten ops (registered in
C++ for FuncTorchBatchedDecomposition)."""
import torch


def _slice(t, in_dim, i):
    """Slice i of the vmapped dim; t itself where it has none (None stays None)."""
    return t if t is None or in_dim is None else t.select(in_dim, i)


def _fold(t, in_dim, size):
    """(..., V at in_dim, ...) -> (V * b, ...): the vmapped dim moved to the front and merged with the batch."""
    t = t.movedim(in_dim, 0) if in_dim is not None else t.unsqueeze(0).expand(size, *t.shape)
    return t.flatten(0, 1)


@torch.library.register_vmap("xtc::flash_attention")
def _flash_attention_vmap(info, in_dims, q, k, v, key_padding_mask=None, causal=False, scale=None, alibi_slopes=None,
                          window_left=-1, window_right=-1, softcap=0.0):
    # in_dims covers the arguments passed positionally; the rest (defaults) are not vmapped.
    q_dim, k_dim, v_dim, mask_dim, _, _, slopes_dim, *_ = tuple(in_dims) + (None,) * (10 - len(in_dims))
    size = info.batch_size
    if alibi_slopes is not None and slopes_dim is not None:
        # Per-slice slopes: one call per slice.
        slices = [torch.ops.xtc.flash_attention(
            _slice(q, q_dim, i), _slice(k, k_dim, i), _slice(v, v_dim, i), _slice(key_padding_mask, mask_dim, i),
            causal, scale, _slice(alibi_slopes, slopes_dim, i), window_left, window_right, softcap)
            for i in range(size)]
        return (torch.stack([s[0] for s in slices]), torch.stack([s[1] for s in slices])), (0, 0)
    mask = None if key_padding_mask is None else _fold(key_padding_mask, mask_dim, size)
    out, lse = torch.ops.xtc.flash_attention(_fold(q, q_dim, size), _fold(k, k_dim, size), _fold(v, v_dim, size), mask,
                                             causal, scale, alibi_slopes, window_left, window_right, softcap)
    return (out.unflatten(0, (size, -1)), lse.unflatten(0, (size, -1))), (0, 0)
