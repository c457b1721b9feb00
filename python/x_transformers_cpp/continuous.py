"""ContinuousTransformerWrapper as a torch.nn.Module over the C++ op torch.ops.xtc.continuous_transformer.

As x-transformers' wrapper: an optional input projection, absolute (or scaled sinusoidal) positions, a
post-embedding norm, memory tokens, the layer stack, optional mean pooling and an output projection. The module owns
the wrapper's parameters under x-transformers' names and holds the given AttentionLayers as `attn_layers`.
"""
from functools import reduce

import torch
from torch import nn

from . import _C
from .attention_layers import AttentionLayers, _build_tree, _option_value

# x-transformers keyword arguments that need module objects or features not implemented here.
_UNSUPPORTED = {"project_in": None, "project_out": None, "probabilistic": False, "max_mem_len": 0}


class ContinuousTransformerWrapper(nn.Module):
    """x-transformers' ContinuousTransformerWrapper(max_seq_len=..., attn_layers=Encoder(...), dim_in=..., ...).

    Keyword arguments only: attn_layers (an x_transformers_cpp AttentionLayers), dim_in, dim_out, max_seq_len,
    num_memory_tokens, post_emb_norm, emb_dropout, use_abs_pos_emb, scaled_sinu_pos_emb, average_pool_embed,
    use_identity_if_same_dim.
    """

    def __init__(self, *, attn_layers, **kwargs):
        super().__init__()
        if not isinstance(attn_layers, AttentionLayers):
            raise TypeError(f"attn_layers: expected an x_transformers_cpp AttentionLayers (Encoder, Decoder, ...), "
                            f"got {type(attn_layers).__name__}")
        rejected = [k for k, default in _UNSUPPORTED.items() if k in kwargs and kwargs[k] != default]
        unknown = [k for k in kwargs if k not in _UNSUPPORTED and k not in _C.continuous_option_keys()]
        if rejected or unknown:
            raise TypeError(f"unrecognized or unsupported keyword arguments: {', '.join(sorted(rejected + unknown))}")
        text = ";".join(f"{k}={_option_value(k, v)}" for k, v in kwargs.items() if k not in _UNSUPPORTED)
        self._options, layout = _C.continuous_layout(text, attn_layers._options)
        self._layer_options = attn_layers._options
        self._tensor_names = [name for name, _, _ in layout]
        tree = _build_tree([entry for entry in layout if not entry[0].startswith("attn_layers.")])
        for name, param in tree.named_parameters(recurse=False):
            self.register_parameter(name, param)
        # Children in the layout's (x-transformers') order, the user's stack in its place.
        children = dict(tree.named_children(), attn_layers=attn_layers)
        for top in dict.fromkeys(name.split(".")[0] for name in self._tensor_names):
            if top in children:
                self.add_module(top, children[top])

    def forward(self, x, return_embeddings=False, mask=None, lens=None):
        """x (batch, seq, dim_in) float; mask (batch, seq) bool (True = keep) or lens (batch,) int.

        Returns (batch, seq, dim_out), or (batch, dim_out) with average_pool_embed; the stack's embeddings before
        the output projection with return_embeddings.
        """
        tensors = [reduce(getattr, name.split("."), self) for name in self._tensor_names]
        return torch.ops.xtc.continuous_transformer(x, mask, lens, tensors, self._options, self._layer_options,
                                                    self.training, return_embeddings)

    def extra_repr(self):
        return self._options
