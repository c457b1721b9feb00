"""AttentionLayers, Encoder and Decoder as torch.nn.Modules over the C++ op torch.ops.xtc.attention_layers.

The Python modules own their parameters, under x-transformers' names and nesting (`layers.0.0.0.gamma`,
`layers.0.1.to_q.weight`, ...), and hand them to the op at every call; the names, shapes and initial values come
from the C++ module xtc::nn::AttentionLayers. No math happens here.
"""
from functools import reduce

import torch
from torch import nn

from . import _C

# Keyword arguments of AttentionLayers itself; everything else is routed by prefix as in x-transformers.
_OWN_KWARGS = ("dim", "depth", "heads", "causal", "layer_dropout")
_PREFIXES = (("ff_", "ff."), ("attn_", "attn."))


def _option_value(value):
    if isinstance(value, bool):
        return "1" if value else "0"
    if value is None:
        return "none"
    if isinstance(value, (int, float)):
        return repr(value)
    raise TypeError(f"expected a bool, int, float or None option value, got {type(value).__name__}: {value!r}")


def _options_text(kwargs):
    """x-transformers kwargs -> the C++ options line; unknown or unsupported kwargs raise TypeError."""
    known = set(_C.option_keys())
    items, unknown = [], []
    for name, value in kwargs.items():
        key = name
        if name not in _OWN_KWARGS:
            for prefix, nested in _PREFIXES:
                if name.startswith(prefix):
                    key = nested + name[len(prefix):]
                    break
        if key not in known:
            unknown.append(name)
            continue
        items.append(f"{key}={_option_value(value)}")
    if unknown:
        supported = sorted(k for k in _OWN_KWARGS) + sorted(
            p + k[len(n):] for k in known for p, n in _PREFIXES if k.startswith(n))
        raise TypeError(
            f"unrecognized or unsupported keyword arguments: {', '.join(sorted(unknown))}; "
            f"supported: {', '.join(supported)}")
    return _C.normalize_options(";".join(items))


def _build_tree(named_tensors):
    """Nested modules holding nn.Parameters at the given dotted names; numbered children form ModuleLists."""
    tree = {}
    for name, tensor in named_tensors:
        *path, leaf = name.split(".")
        node = tree
        for part in path:
            node = node.setdefault(part, {})
        node[leaf] = tensor

    def make(node):
        children = {k: v for k, v in node.items() if isinstance(v, dict)}
        if children and len(children) == len(node) and sorted(children) == [str(i) for i in range(len(children))]:
            return nn.ModuleList(make(children[str(i)]) for i in range(len(children)))
        module = nn.Module()
        for key, value in node.items():
            if isinstance(value, dict):
                module.add_module(key, make(value))
            else:
                module.register_parameter(key, nn.Parameter(value.detach().clone()))
        return module

    return make(tree)


class AttentionLayers(nn.Module):
    """A stack of attention and feed-forward layers, as x-transformers' AttentionLayers.

    Args (keyword names are x-transformers'):
        dim: model width. depth: number of (attention, feed-forward) blocks. heads: attention heads (8).
        causal: causal self-attention. layer_dropout: probability of skipping a layer in training.
        attn_*: attention options (attn_dim_head=64, attn_kv_heads, attn_one_kv_head, attn_dropout, attn_flash).
        ff_*: feed-forward options (ff_mult=4, ff_dropout).
    """

    def __init__(self, dim, depth=None, heads=8, causal=False, **kwargs):
        super().__init__()
        if depth is None:
            raise TypeError("AttentionLayers: depth is required")
        self._options = _options_text(dict(dim=dim, depth=depth, heads=heads, causal=causal, **kwargs))
        layout = _C.parameter_layout(self._options)
        self._parameter_names = [name for name, _ in layout]
        tree = _build_tree(layout)
        for name, child in tree.named_children():
            self.add_module(name, child)

    def forward(self, x, mask=None):
        """x (batch, seq, dim) float; mask (batch, seq) bool, True = keep. Returns (batch, seq, dim).

        Padded positions are not attended to, and their attention outputs are zeroed; as in x-transformers, the
        feed-forward layers still run there, so the output at padded positions is defined but not zero.
        """
        params = [reduce(getattr, name.split("."), self) for name in self._parameter_names]
        return torch.ops.xtc.attention_layers(x, mask, params, self._options, self.training)

    def extra_repr(self):
        return self._options


class Encoder(AttentionLayers):
    """x-transformers' Encoder: bidirectional AttentionLayers. Keyword arguments only."""

    def __init__(self, **kwargs):
        if "causal" in kwargs:
            raise TypeError("Encoder: cannot set causality on an Encoder; use Decoder")
        super().__init__(causal=False, **kwargs)


class Decoder(AttentionLayers):
    """x-transformers' Decoder: causal AttentionLayers. Keyword arguments only."""

    def __init__(self, **kwargs):
        if "causal" in kwargs:
            raise TypeError("Decoder: cannot set causality on a Decoder; it is always causal")
        super().__init__(causal=True, **kwargs)
