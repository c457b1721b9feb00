"""How attention scores and weighs, x-transformers' remaining research variants against the pinned x-transformers:
attn_l2_distance (scores -|q - k|^2, in the flash kernel through two more features of q and k), attn_gumbel_softmax
(+ _temp, _hard: the same noise under one seed), attn_selective (causal self-attention; no decoding cache) and
cross_attn_inverted_attention (each key's weights over the queries), for
self- and cross-attention, beside rotary, ALiBi, memory and zero keys, a sink and soft-clamped logits. Same weights,
a padding mask with a fully masked row, odd lengths: outputs within 1e-5, every gradient within 1e-4."""
import pytest
import torch

from x_transformers_cpp import Decoder, Encoder
from x_transformers_cpp.backends import Backend
from xtc_testing import (assert_parameter_grads_close, assert_stack_matches_x_transformers, chosen_attention_paths,
                         make_pair, random_mask, rejection_reasons)

SMALL = dict(dim=24, depth=2, heads=3, attn_dim_head=8)
CASES = {
    "l2": ("encoder", dict(attn_l2_distance=True)),
    "l2_causal_rotary_memory_zero_kv": ("decoder", dict(attn_l2_distance=True, rotary_pos_emb=True,
                                                        attn_num_mem_kv=2, attn_add_zero_kv=True)),
    "l2_alibi_softclamp_gqa": ("decoder", dict(attn_l2_distance=True, alibi_pos_bias=True, attn_softclamp_logits=True,
                                               attn_logit_softclamp_value=3.0, attn_kv_heads=1)),
    "l2_qk_norm_talking_heads": ("encoder", dict(attn_l2_distance=True, attn_qk_norm=True,
                                                 attn_pre_talking_heads=True)),
    "gumbel_hard": ("encoder", dict(attn_gumbel_softmax=True)),
    "gumbel_soft_temp_causal": ("decoder", dict(attn_gumbel_softmax=True, attn_gumbel_softmax_hard=False,
                                                attn_gumbel_softmax_temp=1.5)),
    "gumbel_sink_memory": ("decoder", dict(attn_gumbel_softmax=True, attn_gumbel_softmax_hard=False,
                                           attn_head_learned_sink=True, attn_num_mem_kv=1)),
    "selective": ("decoder", dict(attn_selective=True)),
    "selective_memory_rotary": ("decoder", dict(attn_selective=True, attn_num_mem_kv=2, rotary_pos_emb=True)),
    "selective_sink_cog": ("decoder", dict(attn_selective=True, attn_head_learned_sink=True, attn_cog_signed=True)),
    "cross_l2": ("encoder", dict(cross_attend=True, cross_attn_l2_distance=True)),
    "cross_gumbel": ("decoder", dict(cross_attend=True, cross_attn_gumbel_softmax=True,
                                     cross_attn_gumbel_softmax_temp=2.0)),
    "inverted_cross": ("encoder", dict(cross_attend=True, cross_attn_inverted_attention=True)),
    "inverted_cross_causal_sigmoid": ("decoder", dict(cross_attend=True, cross_attn_inverted_attention=True,
                                                      cross_attn_sigmoid=True)),
    "inverted_cross_hard_gqa": ("encoder", dict(cross_attend=True, cross_attn_inverted_attention=True,
                                                cross_attn_hard=True, cross_attn_kv_heads=1)),
    "inverted_cross_topk_memory": ("encoder", dict(cross_attend=True, cross_attn_inverted_attention=True,
                                                   cross_attn_sparse_topk=3, cross_attn_num_mem_kv=2)),
}


@pytest.mark.parametrize("kind,options", CASES.values(), ids=CASES.keys())
def test_scores_match_x_transformers(kind, options):
    assert_stack_matches_x_transformers(kind, {**SMALL, **options})  # Gumbel noise: one seed per forward


def test_gumbel_softmax_below_temperature_one_keeps_masked_rows_finite():
    # x-transformers divides the masked scores past the float range: a row masked entirely turns its gradients
    # to NaN. Ours stay finite there, and equal x-transformers' wherever its are finite.
    torch.manual_seed(0)
    options = dict(attn_gumbel_softmax=True, attn_gumbel_softmax_hard=False, attn_gumbel_softmax_temp=0.5)
    ours, theirs = make_pair("decoder", **SMALL, **options)
    x, mask = torch.randn(3, 11, SMALL["dim"]), random_mask(3, 11)
    torch.manual_seed(5)
    out = ours(x, mask=mask)
    torch.manual_seed(5)
    expected = theirs(x, mask=mask)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)
    grad = torch.randn_like(out)
    got = torch.autograd.grad(out, list(ours.parameters()), grad)
    want = torch.autograd.grad(expected, list(theirs.parameters()), grad)
    assert all(g.isfinite().all() for g in got)
    assert any(not w.isfinite().all() for w in want)  # the case this guards against
    keep = mask.any(-1)  # without the fully masked row, x-transformers' gradients are finite and ours equal them
    torch.manual_seed(5)
    out = ours(x[keep], mask=mask[keep])
    torch.manual_seed(5)
    expected = theirs(x[keep], mask=mask[keep])
    assert_parameter_grads_close(ours, theirs, out, expected)


def test_l2_distance_keeps_the_flash_kernel_and_the_others_say_why_not():
    layers = chosen_attention_paths(Encoder(**SMALL, attn_l2_distance=True), torch.randn(2, 5, SMALL["dim"]),
                                    mask=random_mask(2, 5))
    assert layers and all(c.chosen == Backend.CPU_FLASH for c in layers)
    for options, needle in ((dict(attn_gumbel_softmax=True), "gumbel"), (dict(attn_selective=True), "selective")):
        layers = chosen_attention_paths(Decoder(**SMALL, **options), torch.randn(2, 5, SMALL["dim"]))
        assert layers and all(c.chosen == Backend.MATH for c in layers)
        assert any(needle in r for r in rejection_reasons(layers))


def test_gumbel_noise_is_drawn_on_every_call():
    torch.manual_seed(0)
    encoder = Encoder(**SMALL, attn_gumbel_softmax=True, attn_gumbel_softmax_hard=False).eval()
    x = torch.randn(2, 9, SMALL["dim"])
    assert not torch.allclose(encoder(x), encoder(x))


@pytest.mark.parametrize("options,message", [
    (dict(cross_attend=True, attn_inverted_attention=True), "attn_inverted_attention is cross-attention's"),
    (dict(cross_attend=True, cross_attn_inverted_attention=True, cross_attn_gumbel_softmax=True), "clashes with"),
    (dict(cross_attend=True, cross_attn_inverted_attention=True, cross_attn_flash=True), "clashes with"),
], ids=["self", "gumbel", "flash"])
def test_inverted_attention_is_cross_attentions_and_says_so(options, message):
    with pytest.raises(ValueError, match=message):
        Encoder(**SMALL, **options)
    unpadded = Encoder(**SMALL, cross_attend=True, cross_attn_inverted_attention=True, unpad=True)
    with pytest.raises(ValueError, match="cannot run packed"):
        unpadded(torch.randn(2, 5, SMALL["dim"]), mask=random_mask(2, 5), context=torch.randn(2, 3, SMALL["dim"]))


def test_selective_attention_refuses_a_cache_and_says_so():
    torch.manual_seed(0)
    decoder = Decoder(**SMALL, attn_selective=True)
    assert not decoder.can_cache_kv
    x = torch.randn(2, 6, SMALL["dim"])
    _, cache = decoder(x[:, :5], return_hiddens=True)
    with pytest.raises(ValueError, match="cache cannot be combined with attn_selective"):
        decoder(x[:, 5:], cache=cache)


@pytest.mark.parametrize("cls,options,message", [
    (Encoder, dict(attn_l2_distance=True, attn_sigmoid=True), "exclude each other"),
    (Encoder, dict(attn_gumbel_softmax=True, attn_hard=True), "exclude each other"),
    (Encoder, dict(attn_gumbel_softmax=True, attn_flash=True), "not available with attn_flash"),
    (Encoder, dict(attn_l2_distance=True, attn_linear=True), "linear has no score matrix"),
    (Encoder, dict(attn_gumbel_softmax=True, attn_gumbel_softmax_temp=0.0), "gumbel_softmax_temp > 0"),
    (Encoder, dict(attn_selective=True), "selective is designed for causal self-attention"),
    (Decoder, dict(attn_selective=True, cross_attend=True), "set cross_attn_selective=False"),
], ids=["l2_sigmoid", "gumbel_hard", "gumbel_flash", "l2_linear", "gumbel_temp_zero", "selective_encoder",
        "selective_cross"])
def test_bad_score_options_name_them(cls, options, message):
    with pytest.raises(ValueError, match=message):
        cls(**SMALL, **options)
