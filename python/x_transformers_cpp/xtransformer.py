"""XTransformer, x-transformers' encoder-decoder (its README's first example), over our stacks and wrappers.

The same constructor (enc_* / dec_* keyword arguments) and the same state_dict as x-transformers'. Generation and
the training loss are x-transformers' own AutoregressiveWrapper around our decoder, so the x-transformers package
must be installed (a user swapping the import has it).
"""
import torch
from torch import nn

from . import distributed
from .attention_layers import Decoder, Encoder
from .pretrained import PretrainedMixin
from .wrappers import TransformerWrapper


def _group(prefix, kwargs):
    """x-transformers' groupby_prefix_and_trim: (the prefix's kwargs without it, the rest)."""
    picked = {k[len(prefix):]: v for k, v in kwargs.items() if k.startswith(prefix)}
    return picked, {k: v for k, v in kwargs.items() if not k.startswith(prefix)}


class XTransformer(PretrainedMixin, nn.Module):
    """x-transformers' XTransformer(dim=..., enc_num_tokens=..., enc_depth=..., dec_num_tokens=..., ...)."""

    def __init__(self, *, dim, tie_token_emb=False, ignore_index=-100, pad_value=0, cross_attn_tokens_dropout=0.0,
                 **kwargs):
        super().__init__()
        try:
            from x_transformers import AutoregressiveWrapper
        except ImportError as e:
            raise ImportError("XTransformer generates through x-transformers' AutoregressiveWrapper: "
                              "pip install x-transformers") from e
        enc_kwargs, kwargs = _group("enc_", kwargs)
        dec_kwargs, kwargs = _group("dec_", kwargs)
        if kwargs:
            raise TypeError(f"XTransformer: unrecognized keyword arguments {', '.join(sorted(kwargs))} "
                            "(encoder and decoder options take the enc_ / dec_ prefixes)")
        if "dim" in enc_kwargs or "dim" in dec_kwargs:
            raise TypeError("XTransformer: the width of encoder and decoder is set with `dim`")
        enc_wrapper = {k: enc_kwargs.pop(k) for k in ("num_tokens", "max_seq_len") if k in enc_kwargs}
        enc_wrapper.update(emb_dropout=enc_kwargs.pop("emb_dropout", 0),
                           num_memory_tokens=enc_kwargs.pop("num_memory_tokens", None),
                           scaled_sinu_pos_emb=enc_kwargs.pop("scaled_sinu_pos_emb", False),
                           use_abs_pos_emb=enc_kwargs.pop("use_abs_pos_emb", True))
        dec_wrapper = {k: dec_kwargs.pop(k) for k in ("num_tokens", "max_seq_len") if k in dec_kwargs}
        dec_wrapper.update(emb_dropout=dec_kwargs.pop("emb_dropout", 0),
                           scaled_sinu_pos_emb=dec_kwargs.pop("scaled_sinu_pos_emb", False),
                           use_abs_pos_emb=dec_kwargs.pop("use_abs_pos_emb", True))
        self.cross_attn_tokens_dropout = cross_attn_tokens_dropout
        self.encoder = TransformerWrapper(**enc_wrapper, return_only_embed=True,
                                          attn_layers=Encoder(dim=dim, **enc_kwargs))
        decoder = TransformerWrapper(**dec_wrapper, attn_layers=Decoder(dim=dim, cross_attend=True, **dec_kwargs))
        if tie_token_emb:
            # One embedding module in both, as x-transformers; the wrappers fetch their tensors by name, so the
            # decoder's op reads the encoder's table.
            decoder.token_emb = self.encoder.token_emb
        self.decoder = AutoregressiveWrapper(decoder, ignore_index=ignore_index, pad_value=pad_value)

    @torch.no_grad()
    def generate(self, seq_in, seq_out_start, seq_len, mask=None, attn_mask=None, **kwargs):
        encodings = self.encoder(seq_in, mask=mask, attn_mask=attn_mask, return_embeddings=True)
        return self.decoder.generate(seq_out_start, seq_len, context=encodings, context_mask=mask, **kwargs)

    def forward(self, src, tgt, mask=None, attn_mask=None, src_prepend_embeds=None):
        if distributed.is_active():
            raise ValueError("context_parallel: XTransformer's decoder would cross-attend to this rank's shard of "
                             "the encoding alone; run the encoder sharded, gather its output, then the decoder")
        enc = self.encoder(src, mask=mask, attn_mask=attn_mask, prepend_embeds=src_prepend_embeds,
                           return_embeddings=True)
        if src_prepend_embeds is not None and mask is not None:
            # The context mask covers the prepended positions too (x-transformers' pad_at_dim).
            mask = torch.cat((mask.new_ones(mask.shape[0], src_prepend_embeds.shape[-2]), mask), dim=-1)
        if self.training and self.cross_attn_tokens_dropout > 0:
            from x_transformers.x_transformers import dropout_seq
            enc, mask = dropout_seq(enc, mask, self.cross_attn_tokens_dropout)
        return self.decoder(tgt, context=enc, context_mask=mask)
