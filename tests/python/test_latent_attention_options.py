"""Multi-latent attention (DeepSeek-V2) against the pinned x-transformers: attn_use_latent_q / attn_dim_latent_q,
attn_use_latent_kv / attn_dim_latent_kv and the decoupled rope heads attn_latent_rope_subheads, for self- and
cross-attention, with the decoding cache holding the latent (and the rope heads) as x-transformers' does. Same
weights, a padding mask with a fully masked row, odd lengths: outputs within 1e-5, every gradient within 1e-4;
seeded construction equal to x-transformers' state_dict; cached decoding equal to x-transformers and to the full
forward."""
import pytest
import torch
from x_transformers_cpp import Encoder
from xtc_testing import assert_constructs_as_x_transformers, assert_stack_matches_x_transformers, make_pair

SMALL = dict(dim=24, depth=2, heads=3, attn_dim_head=8)
MLA = dict(attn_use_latent_q=True, attn_dim_latent_q=10, attn_use_latent_kv=True, attn_dim_latent_kv=12)
CASES = {
    "latent_q": ("encoder", dict(attn_use_latent_q=True, attn_dim_latent_q=10)),
    "latent_kv": ("decoder", dict(attn_use_latent_kv=True, attn_dim_latent_kv=12)),
    "mla_rope_subheads": ("decoder", dict(MLA, attn_latent_rope_subheads=1, rotary_pos_emb=True)),
    "mla_rope_subheads_no_rotary": ("encoder", dict(MLA, attn_latent_rope_subheads=2)),
    "mla_gqa_value_dim": ("decoder", dict(MLA, attn_kv_heads=1, attn_value_dim_head=6)),
    "mla_value_residual_qk_norm": ("decoder", dict(MLA, add_value_residual=True, learned_value_residual_mix=False,
                                                   attn_qk_norm=True,
                                                   attn_num_mem_kv=1)),
    "latent_q_learned_value_mix": ("decoder", dict(attn_use_latent_q=True, attn_dim_latent_q=24, add_value_residual=True)),
    "mla_cross": ("decoder", dict(cross_attend=True, cross_attn_use_latent_kv=True, cross_attn_dim_latent_kv=9)),
}


@pytest.mark.parametrize("kind,options", CASES.values(), ids=CASES.keys())
def test_latent_attention_matches_x_transformers(kind, options):
    assert_stack_matches_x_transformers(kind, {**SMALL, **options})


@pytest.mark.parametrize("options", [dict(MLA, attn_latent_rope_subheads=1, rotary_pos_emb=True),
                                     dict(attn_use_latent_kv=True, attn_dim_latent_kv=12, cross_attend=True,
                                          cross_attn_use_latent_kv=False)],
                         ids=["mla_rope", "latent_kv_cross"])
def test_cached_decoding_holds_the_latent_and_matches(options):
    torch.manual_seed(2)
    ours, theirs = make_pair("decoder", **{**SMALL, **options})
    x = torch.randn(2, 9, SMALL["dim"])
    kwargs = dict(context=torch.randn(2, 5, SMALL["dim"])) if options.get("cross_attend") else {}
    _, cache = ours(x[:, :6], return_hiddens=True, **kwargs)
    _, their_cache = theirs(x[:, :6], return_hiddens=True, **kwargs)
    latent, rope = cache.attn_intermediates[0].cached_kv
    assert latent.shape == (2, 1, 6, 12)  # the latent, not the keys and values
    assert rope.shape == (2, options.get("attn_latent_rope_subheads", 0), 6, SMALL["attn_dim_head"])
    for step in (7, 8):
        out, cache = ours(x[:, :step], cache=cache, return_hiddens=True, **kwargs)
        expected, their_cache = theirs(x[:, :step], cache=their_cache, return_hiddens=True, **kwargs)
        torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)
        torch.testing.assert_close(out, ours(x[:, :step], **kwargs)[:, -1:], atol=1e-5, rtol=0)


def test_construction_draws_as_x_transformers():
    assert_constructs_as_x_transformers("decoder", dict(SMALL, **MLA, attn_latent_rope_subheads=1, rotary_pos_emb=True),
                                        seed=5)


@pytest.mark.parametrize("options,message", [
    (dict(attn_use_latent_q=True), "attn_use_latent_q and attn_dim_latent_q go together"),
    (dict(attn_dim_latent_kv=8), "attn_use_latent_kv and attn_dim_latent_kv go together"),
    (dict(attn_latent_rope_subheads=1), "attn_latent_rope_subheads needs attn_use_latent_kv"),
    (dict(MLA, attn_latent_rope_subheads=4), "1 to 3"),
    (dict(MLA, attn_latent_rope_subheads=1, rotary_pos_emb=True, rotate_num_heads=1), "rotate_num_heads cannot"),
    (dict(MLA, attn_use_rel_proj_pos_bias=True), "use_latent_q clashes"),
    (dict(MLA, unpad=True), "clash with attn_linear, unpad"),
], ids=["q_without_width", "width_without_kv", "rope_without_latent", "rope_too_many", "rope_rotate_num_heads",
        "latent_q_rel_proj", "unpad"])
def test_bad_latent_options_name_them(options, message):
    with pytest.raises(ValueError, match=message):
        Encoder(**{**SMALL, **options})
