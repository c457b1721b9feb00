"""x-transformers' research position options against the pinned x-transformers: the forgetting transformer's
data-dependent ALiBi (attn_data_dependent_alibi, causal and bidirectional, per row, with
attn_data_dependent_alibi_kwargs), Inkling's relative projection bias (attn_use_rel_proj_pos_bias, with its distance
basis and max distance), the polar positional embedding (polar_pos_emb, polar_bias_uniform_init) and custom ALiBi
slopes (rel_pos_kwargs). Same weights, a
padding mask with a fully masked row, odd lengths: outputs within 1e-5, every gradient within 1e-4; seeded
construction equal to x-transformers' state_dict; decoding with a cache equal to the full forward."""
import pytest
import torch
from x_transformers_cpp import Decoder, Encoder
from x_transformers_cpp.backends import Backend
from xtc_testing import (assert_constructs_as_x_transformers, assert_stack_matches_x_transformers,
                         chosen_attention_paths, make_pair, random_mask, rejection_reasons)

SMALL = dict(dim=24, depth=2, heads=3, attn_dim_head=8)
CASES = {
    "dda": ("decoder", dict(attn_data_dependent_alibi=True)),
    "dda_bidirectional": ("encoder", dict(attn_data_dependent_alibi=True)),
    "dda_kwargs_memory": ("decoder", dict(attn_data_dependent_alibi=True, attn_num_mem_kv=2,
                                          attn_data_dependent_alibi_kwargs=dict(bias_init=1.0, post_log_scale=0.5))),
    "dda_per_row": ("decoder", dict(attn_data_dependent_alibi=True, attn_data_dependent_alibi_per_row=True,
                                    attn_data_dependent_alibi_per_row_dim_head=4, rotary_pos_emb=True)),
    "rel_proj": ("decoder", dict(attn_use_rel_proj_pos_bias=True)),
    "rel_proj_short_basis_encoder": ("encoder", dict(attn_use_rel_proj_pos_bias=True, attn_rel_proj_num_distance_basis=5,
                                                     attn_rel_proj_max_dist=4)),
    "rel_proj_with_t5": ("decoder", dict(attn_use_rel_proj_pos_bias=True, rel_pos_bias=True)),
    "rel_proj_and_dda": ("decoder", dict(attn_use_rel_proj_pos_bias=True, attn_data_dependent_alibi=True,
                                         attn_rel_proj_max_dist=6)),
    "cross_rel_proj": ("decoder", dict(cross_attend=True, cross_attn_use_rel_proj_pos_bias=True)),
    "custom_alibi_slopes": ("decoder", dict(alibi_pos_bias=True, rel_pos_kwargs=dict(slopes=[0.5, 0.3, 0.05]))),
    "custom_alibi_slopes_some_heads": ("encoder", dict(alibi_pos_bias=True, alibi_num_heads=2,
                                                       rel_pos_kwargs=dict(slopes=[1.5, 0.2]))),
    "polar": ("decoder", dict(polar_pos_emb=True)),
    "polar_encoder_one_kv_head_zero_kv": ("encoder", dict(polar_pos_emb=True, attn_kv_heads=1, attn_add_zero_kv=True)),
    "polar_l2_softclamp_cross": ("decoder", dict(polar_pos_emb=True, attn_l2_distance=True, attn_softclamp_logits=True,
                                                 cross_attend=True)),
    "polar_talking_heads": ("encoder", dict(polar_pos_emb=True, attn_pre_talking_heads=True)),
}


@pytest.mark.parametrize("kind,options", CASES.values(), ids=CASES.keys())
def test_position_option_matches_x_transformers(kind, options):
    prepare = _perturb_polar_bias if options.get("polar_pos_emb") else None
    assert_stack_matches_x_transformers(kind, {**SMALL, **options}, prepare)


def _perturb_polar_bias(ours, theirs):
    # the learned shift starts at zero, where a shared perturbation may fall outside [-2 pi, 0]: spread it inside
    with torch.no_grad():
        bias = torch.rand_like(theirs.polar_pos_emb.learned_bias) * -6.0
        theirs.polar_pos_emb.learned_bias.copy_(bias)
        ours.polar_pos_emb.learned_bias.copy_(bias)


@pytest.mark.parametrize("options", [dict(attn_use_rel_proj_pos_bias=True, attn_rel_proj_max_dist=5),
                                     dict(polar_pos_emb=True)], ids=["rel_proj", "polar"])
def test_decoding_with_a_cache_matches_x_transformers_and_the_full_forward(options):
    torch.manual_seed(1)
    ours, theirs = make_pair("decoder", **SMALL, **options)
    if options.get("polar_pos_emb"):
        _perturb_polar_bias(ours, theirs)
    x = torch.randn(2, 9, SMALL["dim"])
    _, cache = ours(x[:, :6], return_hiddens=True)
    _, their_cache = theirs(x[:, :6], return_hiddens=True)
    # x-transformers' decoding step: the sequence so far, the cached positions skipped
    out, expected = ours(x[:, :7], cache=cache), theirs(x[:, :7], cache=their_cache)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(out, ours(x[:, :7])[:, -1:], atol=1e-5, rtol=0)  # as the full forward


@pytest.mark.parametrize("options", [dict(attn_data_dependent_alibi=True),
                                     dict(attn_data_dependent_alibi=True, attn_data_dependent_alibi_per_row=True),
                                     dict(attn_use_rel_proj_pos_bias=True, attn_rel_proj_max_dist=40)],
                         ids=["dda", "dda_per_row", "rel_proj"])
def test_construction_draws_as_x_transformers(options):
    assert_constructs_as_x_transformers("decoder", {**SMALL, **options}, seed=3)


def test_polar_bias_uniform_init_draws_as_x_transformers_under_no_grad():
    # x-transformers 2.31.10 draws the bias in place on the parameter, which only works under no_grad
    ours = assert_constructs_as_x_transformers("decoder", dict(SMALL, polar_pos_emb=True, polar_bias_uniform_init=True),
                                               seed=4, theirs_context=torch.no_grad)
    bias = ours.polar_pos_emb.learned_bias
    assert bias.min() >= -2 * torch.pi and bias.max() <= 0 and bias.std() > 0.5


def test_polar_keeps_the_flash_kernel():
    layers = chosen_attention_paths(Decoder(**SMALL, polar_pos_emb=True), torch.randn(2, 5, SMALL["dim"]),
                                    mask=random_mask(2, 5))
    assert layers and all(c.chosen == Backend.CPU_FLASH for c in layers)


def test_learned_biases_materialise_and_say_why():
    layers = chosen_attention_paths(Decoder(**SMALL, attn_data_dependent_alibi=True), torch.randn(2, 5, SMALL["dim"]))
    assert layers and all(c.chosen == Backend.MATH for c in layers)
    assert any("position bias" in r for r in rejection_reasons(layers))


def test_data_dependent_alibi_refuses_what_it_cannot_bias():
    torch.manual_seed(0)
    decoder = Decoder(**SMALL, attn_data_dependent_alibi=True)
    x = torch.randn(2, 6, SMALL["dim"])
    _, cache = decoder(x[:, :5], return_hiddens=True)
    with pytest.raises(ValueError, match="data_dependent_alibi biases the layer's own tokens alone"):
        decoder(x[:, 5:], cache=cache)
    with pytest.raises(ValueError, match="data_dependent_alibi biases the layer's own tokens alone"):
        decoder(x, attn_bias=torch.randn(3, 6, 6))


@pytest.mark.parametrize("cls,options,error,message", [
    (Decoder, dict(attn_data_dependent_alibi=True, alibi_pos_bias=True), ValueError, "takes the place of alibi_pos_bias"),
    (Encoder, dict(attn_data_dependent_alibi=True, attn_data_dependent_alibi_per_row=True), ValueError,
     "needs attn_data_dependent_alibi in a causal stack"),
    (Decoder, dict(attn_data_dependent_alibi=True, cross_attend=True), ValueError,
     "set cross_attn_data_dependent_alibi=False"),
    (Decoder, dict(attn_use_rel_proj_pos_bias=True, attn_num_mem_kv=1), ValueError, "clashes with attn_num_mem_kv"),
    (Encoder, dict(attn_use_rel_proj_pos_bias=True, unpad=True), ValueError, "clash with unpad"),
    (Decoder, dict(attn_data_dependent_alibi=True, attn_data_dependent_alibi_kwargs=dict(temperature=2)), TypeError,
     "unsupported keys 'temperature'"),
    (Decoder, dict(attn_data_dependent_alibi=True, attn_data_dependent_alibi_per_row=True,
                   attn_data_dependent_alibi_kwargs=dict(bias_init=2.0)), TypeError, "not an option of the per-row"),
    (Decoder, dict(polar_pos_emb=True, rotary_pos_emb=True), ValueError, "rotary_pos_emb and polar_pos_emb exclude"),
    (Decoder, dict(polar_pos_emb=True, heads=6, attn_kv_heads=3), ValueError, "needs one kv head per head"),
    (Decoder, dict(polar_pos_emb=True, attn_num_mem_kv=2), ValueError, "polar_pos_emb clashes with attn_num_mem_kv"),
    (Decoder, dict(polar_bias_uniform_init=True), ValueError, "polar_bias_uniform_init needs polar_pos_emb"),
    (Decoder, dict(alibi_pos_bias=True, rel_pos_kwargs=dict(slopes=[0.5])), ValueError, "one slope per ALiBi head"),
    (Decoder, dict(rel_pos_kwargs=dict(slopes=[0.5, 0.2, 0.1])), ValueError, "needs alibi_pos_bias"),
    (Decoder, dict(alibi_pos_bias=True, rel_pos_kwargs=dict(scale=2.0)), TypeError, "unsupported keys 'scale'"),
], ids=["dda_alibi", "per_row_encoder", "dda_cross", "rel_proj_mem_kv", "rel_proj_unpad", "dda_kwargs_unknown",
        "per_row_bias_init", "polar_rotary", "polar_gqa", "polar_mem_kv", "polar_init_alone", "slopes_count",
        "slopes_without_alibi", "rel_pos_kwargs_unknown"])
def test_bad_learned_bias_options_name_them(cls, options, error, message):
    with pytest.raises(error, match=message):
        cls(**{**SMALL, **options})
