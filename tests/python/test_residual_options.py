"""x-transformers' residual research options against the pinned x-transformers: orthog_residual (the branch joins by
its part orthogonal to the residual), mv_split_residual with residual_fn_kwargs (learned, init_alpha, init_beta;
masked means over the kept tokens), scale_residual and depth_scale_residual as numbers (a Scale on every branch
output) and depth_scale_residual=True (the depth-scaled init of the output projections, draw for draw). Same
weights, a padding mask with a fully masked row, odd lengths: outputs within 1e-5, every gradient within 1e-4."""
import pytest
import torch

from x_transformers_cpp import Decoder, Encoder
from xtc_testing import assert_constructs_as_x_transformers, assert_stack_matches_x_transformers

SMALL = dict(dim=24, depth=2, heads=3, attn_dim_head=8)
CASES = {
    "orthog": dict(orthog_residual=True),
    "orthog_scaled": dict(orthog_residual=True, scale_residual=True),
    "orthog_sandwich_cross": dict(orthog_residual=True, sandwich_norm=True, cross_attend=True),
    "mv_split": dict(mv_split_residual=True),
    "mv_split_init": dict(mv_split_residual=True, residual_fn_kwargs=dict(init_alpha=0.2, init_beta=0.5)),
    "mv_split_learned": dict(mv_split_residual=True, residual_fn_kwargs=dict(learned=True, init_beta=0.1)),
    "mv_split_macaron_post_norm": dict(mv_split_residual=True, macaron=True, pre_norm=False),
    "scale_residual_number": dict(scale_residual=0.5),
    "scale_residual_one": dict(scale_residual=1.0),
    "scale_residual_number_layerscale": dict(scale_residual=0.7, use_layerscale=True),
    "depth_scale_number": dict(depth_scale_residual=0.3, gate_residual=True),
    "depth_scale_number_beats_scale": dict(depth_scale_residual=0.3, scale_residual=2.0, macaron=True),
    "depth_scale_init": dict(depth_scale_residual=True),
    "depth_scale_init_shift_custom": dict(depth_scale_residual=True, custom_layers=("a", "f", "a", "f"),
                                          shift_tokens=1),
}


@pytest.mark.parametrize("options", CASES.values(), ids=CASES.keys())
@pytest.mark.parametrize("kind", ["encoder", "decoder"])
def test_residual_option_matches_x_transformers(kind, options):
    assert_stack_matches_x_transformers(kind, {**SMALL, **options})


@pytest.mark.parametrize("options", [dict(depth_scale_residual=True), dict(depth_scale_residual=True, macaron=True),
                                     dict(depth_scale_residual=True, sandwich_coef=1, depth=3),
                                     dict(mv_split_residual=True, residual_fn_kwargs=dict(learned=True)),
                                     dict(scale_residual=0.5, use_layerscale=True)],
                         ids=["depth_scale", "depth_scale_macaron", "depth_scale_sandwich", "mv_split_learned",
                              "scale_number_layerscale"])
def test_construction_draws_as_x_transformers(options):
    # Same seed, same state_dict: names, order and the values of every draw (the depth-scaled init included).
    assert_constructs_as_x_transformers("decoder", {**SMALL, **options}, seed=11)


def test_depth_scaled_init_shrinks_with_depth():
    torch.manual_seed(0)
    encoder = Encoder(dim=64, depth=6, heads=4, attn_dim_head=16, depth_scale_residual=True)
    first, last = (encoder.state_dict()[f"layers.{i}.1.to_out.weight"].std().item() for i in (0, 10))
    assert first == pytest.approx((2 * 64) ** -0.5, rel=0.1) and last == pytest.approx((2 * 64 * 6) ** -0.5, rel=0.1)


def test_whole_sequence_updates_refuse_a_cache():
    torch.manual_seed(0)
    for options in (dict(orthog_residual=True), dict(mv_split_residual=True)):
        decoder = Decoder(**SMALL, **options)
        assert not decoder.can_cache_kv
        x = torch.randn(2, 6, SMALL["dim"])
        _, cache = decoder(x[:, :5], return_hiddens=True)
        with pytest.raises(ValueError, match="reduce over the whole sequence"):
            decoder(x[:, 5:], cache=cache)


@pytest.mark.parametrize("options,error,message", [
    (dict(orthog_residual=True, mv_split_residual=True), ValueError, "exclude each other"),
    (dict(gate_residual=True, orthog_residual=True), ValueError, "exclude each other"),
    (dict(mv_split_residual=True, scale_residual=True), ValueError, "mv_split_residual has no residual scale"),
    (dict(residual_fn_kwargs=dict(learned=True)), ValueError, "set mv_split_residual=True"),
    (dict(mv_split_residual=True, residual_fn_kwargs=dict(read_rank=4)), TypeError, "unsupported keys 'read_rank'"),
    (dict(orthog_residual=True, unpad=True), ValueError, "clashes with unpad"),
    (dict(depth_scale_residual=True, attn_on_attn=True), ValueError, "depth_scale_residual scales the output"),
], ids=["orthog_mv", "gru_orthog", "mv_scale", "fn_kwargs_alone", "fn_kwargs_unknown", "orthog_unpad",
        "depth_scale_on_attn"])
def test_bad_residual_options_name_them(options, error, message):
    with pytest.raises(error, match=message):
        Encoder(**{**SMALL, **options})
