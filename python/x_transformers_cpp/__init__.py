"""x-transformers' layer stacks in LibTorch C++.

    from x_transformers_cpp import Encoder
    encoder = Encoder(dim=512, depth=6, heads=8)
    out = encoder(embed, mask=mask)   # embed (batch, seq, 512) float; mask (batch, seq) bool, True = keep

Importing the package loads the native library, which registers the ops torch.ops.xtc.flash_attention,
torch.ops.xtc.flash_attention_backward and torch.ops.xtc.attention_layers.
"""
import torch  # noqa: F401  (loads libtorch before our library)

from . import _C  # noqa: F401  (loads libxtc.so, registering torch.ops.xtc.*)
from . import batching  # noqa: F401  (torch.func.vmap rule of torch.ops.xtc.flash_attention)
from .attention_layers import AttentionLayers, CrossAttender, Decoder, Encoder, PrefixDecoder
from .wrappers import ContinuousTransformerWrapper, TransformerWrapper
from .xtransformer import XTransformer

__all__ = [
    "AttentionLayers", "ContinuousTransformerWrapper", "CrossAttender", "Decoder", "Encoder", "PrefixDecoder",
    "TransformerWrapper", "XTransformer"]
__version__ = "0.1.0"
