"""How attention weighs its scores, x-transformers' research variants against the pinned x-transformers:
attn_sigmoid (sigmoid instead of softmax), attn_hard (a straight-through one-hot of each row's top score) and
attn_cog_signed (the softmax of the magnitudes, the signs put back), for self- and cross-attention, beside the
options that touch the scores (ALiBi, talking heads, a learned sink, soft-clamped logits, memory keys). Same
weights, a padding mask with a fully masked row, odd lengths: outputs within 1e-5, every gradient within 1e-4.
All three take the materialising path (x-transformers refuses them with attn_flash)."""
import pytest
import torch

from x_transformers_cpp import Encoder
from x_transformers_cpp.backends import Backend, record_choices
from xtc_testing import assert_parameter_grads_close, make_pair, random_mask

SMALL = dict(dim=24, depth=2, heads=3, attn_dim_head=8)
CASES = {
    "sigmoid": ("encoder", dict(attn_sigmoid=True)),
    "sigmoid_causal_alibi": ("decoder", dict(attn_sigmoid=True, alibi_pos_bias=True)),
    "sigmoid_mem_kv": ("encoder", dict(attn_sigmoid=True, attn_num_mem_kv=2)),
    "hard": ("encoder", dict(attn_hard=True)),
    "hard_causal_rotary": ("decoder", dict(attn_hard=True, rotary_pos_emb=True)),
    "cog": ("encoder", dict(attn_cog_signed=True)),
    "cog_causal_sink": ("decoder", dict(attn_cog_signed=True, attn_head_learned_sink=True)),
    "cog_talking_heads_softclamp": ("encoder", dict(attn_cog_signed=True, attn_pre_talking_heads=True,
                                                    attn_softclamp_logits=True, attn_logit_softclamp_value=2.0)),
    "cog_sigmoid": ("encoder", dict(attn_cog_signed=True, attn_sigmoid=True)),
    "cross_sigmoid": ("decoder", dict(cross_attend=True, cross_attn_sigmoid=True)),
    "cross_cog": ("encoder", dict(cross_attend=True, cross_attn_cog_signed=True)),
}


@pytest.mark.parametrize("kind,options", CASES.values(), ids=CASES.keys())
def test_weighting_matches_x_transformers(kind, options):
    torch.manual_seed(0)
    ours, theirs = make_pair(kind, **SMALL, **options)
    x = torch.randn(3, 11, SMALL["dim"])
    kwargs = dict(mask=random_mask(3, 11))
    if options.get("cross_attend"):
        kwargs.update(context=torch.randn(3, 7, SMALL["dim"]), context_mask=random_mask(3, 7))
    out, expected = ours(x, **kwargs), theirs(x, **kwargs)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)
    assert_parameter_grads_close(ours, theirs, out, expected)


def test_the_variants_take_the_materialising_path_and_say_why():
    encoder = Encoder(**SMALL, attn_sigmoid=True)
    with record_choices() as choices:
        encoder(torch.randn(2, 5, SMALL["dim"]))
    layers = [c for c in choices if c.site.endswith("layer")]
    assert layers and all(c.chosen == Backend.MATH for c in layers)
    reasons = [r for c in layers for why in c.rejected.values() for r in why]
    assert any("sigmoid" in r for r in reasons), reasons


@pytest.mark.parametrize("options,message", [
    (dict(attn_sigmoid=True, attn_hard=True), "exclude each other"),
    (dict(attn_hard=True, attn_sparse_topk=2), "exclude each other"),
    (dict(attn_sigmoid=True, attn_flash=True), "not available with attn_flash"),
    (dict(attn_cog_signed=True, attn_flash=True), "not available with attn_flash"),
    (dict(attn_hard=True, attn_linear=True), "linear has no score matrix"),
], ids=["sigmoid_hard", "hard_topk", "sigmoid_flash", "cog_flash", "hard_linear"])
def test_bad_weighting_options_name_them(options, message):
    with pytest.raises(ValueError, match=message):
        Encoder(**SMALL, **options)
