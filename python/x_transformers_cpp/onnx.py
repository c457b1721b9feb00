"""ONNX export through torch.onnx's exporter (dynamo=True):

    import x_transformers_cpp.onnx
    program = torch.onnx.export(model, (x,), kwargs={"mask": mask}, dynamo=True, dynamic_shapes=...,
                                custom_translation_table=x_transformers_cpp.onnx.translation_table())

The exporter decomposes our stack and wrapper ops into aten ops (they are CompositeImplicitAutograd) and
translates those itself; what it cannot translate is the attention kernel, torch.ops.xtc.flash_attention, which
this table maps onto standard ONNX operators (opset 18): the scores as one matrix, the key padding mask, causality,
windows, ALiBi and the soft-cap applied to it, a float32 softmax, and rows that see no key giving zeros (and a
log-sum-exp of -inf), as the kernel does. Any ONNX runtime runs it; it materialises the (b, h, n, m) scores.
"""
import math

import torch

_LOWEST = -3.4028234663852886e38  # float32's lowest: masked scores, as the stacks' materialising path


def _op():
    try:
        from onnxscript import opset18
    except ImportError as e:
        raise ImportError("ONNX export translates our attention with onnxscript: pip install onnxscript") from e
    return opset18


def _scalar(op, value, like):
    return op.CastLike(op.Constant(value_float=float(value)), like)


def _visible(op, q, k, key_padding_mask, causal, window_left, window_right):
    """Which keys each query sees, broadcasting to (b, h, n, m); None when every key is visible. Causality and
    windows are right-aligned: query i sits at position i + (m - n)."""
    keep = None
    if key_padding_mask is not None:
        keep = op.Unsqueeze(key_padding_mask, op.Constant(value_ints=[1, 2]))  # (b, 1, 1, m)
    if not causal and window_left < 0 and window_right < 0:
        return keep
    n, m = op.Shape(q, start=1, end=2), op.Shape(k, start=1, end=2)
    one = op.Constant(value_ints=[1])
    queries = op.Unsqueeze(op.Add(op.Range(op.Squeeze(op.Constant(value_ints=[0])), op.Squeeze(n),
                                           op.Squeeze(one)), op.Sub(m, n)), one)  # (n, 1) positions
    keys = op.Range(op.Squeeze(op.Constant(value_ints=[0])), op.Squeeze(m), op.Squeeze(one))  # (m,)
    rules = []
    if causal:
        rules.append(op.LessOrEqual(keys, queries))
    if window_left >= 0:
        rules.append(op.GreaterOrEqual(keys, op.Sub(queries, op.Constant(value_ints=[window_left]))))
    if window_right >= 0:
        rules.append(op.LessOrEqual(keys, op.Add(queries, op.Constant(value_ints=[window_right]))))
    for rule in rules:
        keep = rule if keep is None else op.And(keep, rule)
    return keep


def _alibi(op, q, k, slopes, like):
    """-slope * |i + (m - n) - j| per head, (1, h, n, m)."""
    n, m = op.Shape(q, start=1, end=2), op.Shape(k, start=1, end=2)
    zero, one = op.Squeeze(op.Constant(value_ints=[0])), op.Squeeze(op.Constant(value_ints=[1]))
    queries = op.Unsqueeze(op.Add(op.Range(zero, op.Squeeze(n), one), op.Sub(m, n)), op.Constant(value_ints=[1]))
    distance = op.CastLike(op.Abs(op.Sub(queries, op.Range(zero, op.Squeeze(m), one))), like)
    heads = op.Unsqueeze(op.CastLike(slopes, like), op.Constant(value_ints=[0, 2, 3]))
    return op.Neg(op.Mul(heads, distance))


def flash_attention(q, k, v, key_padding_mask=None, causal=False, scale=None, alibi_slopes=None, window_left=-1,
                    window_right=-1, softcap=0.0):
    """torch.ops.xtc.flash_attention in ONNX: q (b, n, h, d), k (b, m, hk, d), v (b, m, hk, dv), query head i
    reading kv head i % hk. Returns out (b, n, h, dv) and the log-sum-exp (b, h, n) in float32."""
    op = _op()
    from onnxscript import FLOAT

    qh = op.Transpose(q, perm=[0, 2, 1, 3])  # (b, h, n, d)
    repeats = op.Div(op.Shape(q, start=2, end=3), op.Shape(k, start=2, end=3))
    tiles = op.Concat(op.Constant(value_ints=[1]), repeats, op.Constant(value_ints=[1, 1]), axis=0)
    kh = op.Tile(op.Transpose(k, perm=[0, 2, 3, 1]), tiles)  # (b, h, d, m): head i holds kv head i % hk
    vh = op.Tile(op.Transpose(v, perm=[0, 2, 1, 3]), tiles)  # (b, h, m, dv)
    scores = op.Cast(op.MatMul(qh, kh), to=FLOAT.dtype)
    if scale is None:
        scale = 1.0 / math.sqrt(q.shape[-1])
    scores = op.Mul(scores, _scalar(op, scale, scores))
    if alibi_slopes is not None:
        scores = op.Add(scores, _alibi(op, q, k, alibi_slopes, scores))
    if softcap > 0:
        cap = _scalar(op, softcap, scores)
        scores = op.Mul(op.Tanh(op.Div(scores, cap)), cap)
    keep = _visible(op, q, k, key_padding_mask, causal, window_left, window_right)
    if keep is not None:
        scores = op.Where(keep, scores, _scalar(op, _LOWEST, scores))
    out = op.MatMul(op.CastLike(op.Softmax(scores, axis=-1), vh), vh)  # (b, h, n, dv)
    lse = op.ReduceLogSumExp(scores, op.Constant(value_ints=[-1]), keepdims=0)
    if keep is not None:
        # Rows that see no key: zeros, and a log-sum-exp of -inf.
        seen = op.Expand(keep, op.Shape(scores))
        any_key = op.Cast(op.ReduceMax(op.Cast(seen, to=FLOAT.dtype), op.Constant(value_ints=[-1]), keepdims=1),
                          to=9)  # BOOL
        out = op.Where(any_key, out, op.CastLike(op.Constant(value_float=0.0), out))
        lse = op.Where(op.Squeeze(any_key, op.Constant(value_ints=[-1])), lse,
                       op.Constant(value_float=float("-inf")))
    return op.Transpose(out, perm=[0, 2, 1, 3]), lse


def translation_table():
    """{op overload: ONNX function} for torch.onnx.export(..., dynamo=True, custom_translation_table=...)."""
    return {torch.ops.xtc.flash_attention.default: flash_attention}
