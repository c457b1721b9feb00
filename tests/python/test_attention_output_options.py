"""What the attention block does to its values and output, x-transformers' research options against the pinned
x-transformers: the value and output gates (attn_gate_values with a rank or per head, attn_output_gate with a rank
or per head, attn_low_rank_silu_gates, attn_swiglu_values; hybrid gated attention), attn_gate_value_heads,
LASER (attn_laser, attn_laser_softclamp_value), the orthogonal projections (attn_orthog_projected_values and
_per_head), attn_project_out and attn_sublayer_dropout, for self- and cross-attention. Same weights, a padding mask
with a fully masked row, odd lengths: outputs within 1e-5, every gradient within 1e-4; the dropout's draws equal
x-transformers' under one seed."""
import pytest
import torch

from x_transformers_cpp import Decoder, Encoder
from x_transformers_cpp.backends import Backend
from xtc_testing import (assert_stack_matches_x_transformers, chosen_attention_paths, make_pair, random_mask,
                         rejection_reasons)

SMALL = dict(dim=24, depth=2, heads=3, attn_dim_head=8)
CASES = {
    "gate_values": dict(attn_gate_values=True),
    "gate_values_rank": dict(attn_gate_values=True, attn_gate_values_rank=4),
    "gate_values_rank_no_silu": dict(attn_gate_values=True, attn_gate_values_rank=5, attn_low_rank_silu_gates=False),
    "gate_values_headwise_swiglu": dict(attn_gate_values=True, attn_gate_values_headwise=True,
                                        attn_swiglu_values=True),
    "output_gate": dict(attn_output_gate=True),
    "output_gate_rank": dict(attn_output_gate=True, attn_output_gate_rank=6),
    "hyga_headwise_and_dimwise": dict(attn_gate_values=True, attn_gate_values_headwise=True, attn_output_gate=True,
                                      attn_output_gate_rank=4),
    "both_headwise_gqa": dict(attn_gate_values=True, attn_gate_values_headwise=True, attn_output_gate=True,
                              attn_output_gate_headwise=True, attn_kv_heads=1),
    "gate_value_heads_head_scale": dict(attn_gate_value_heads=True, attn_head_scale=True),
    "laser": dict(attn_laser=True),
    "laser_clamped_memory_zero_kv": dict(attn_laser=True, attn_laser_softclamp_value=0.5, attn_num_mem_kv=2,
                                         attn_add_zero_kv=True),
    "laser_alibi_value_dim": dict(attn_laser=True, alibi_pos_bias=True, attn_value_dim_head=6),
    "orthog": dict(attn_orthog_projected_values=True),
    "orthog_per_head_gqa": dict(attn_orthog_projected_values_per_head=True, attn_kv_heads=1),
    "orthog_both_value_residual": dict(attn_orthog_projected_values=True, attn_orthog_projected_values_per_head=True,
                                       add_value_residual=True),
    "project_out_one_head": dict(heads=1, attn_dim_head=10, attn_project_out=True),
    "no_project_out": dict(attn_project_out=False),
    "on_attn_gated": dict(attn_gate_values=True, attn_on_attn=True),
}


@pytest.mark.parametrize("options", CASES.values(), ids=CASES.keys())
@pytest.mark.parametrize("kind", ["encoder", "decoder"])
def test_output_option_matches_x_transformers(kind, options):
    assert_stack_matches_x_transformers(kind, {**SMALL, **options})


CROSS = {
    "gates": dict(cross_attn_gate_values=True, cross_attn_gate_values_rank=4, cross_attn_output_gate=True,
                  cross_attn_output_gate_headwise=True, cross_attn_swiglu_values=True),
    "gate_value_heads_laser": dict(cross_attn_gate_value_heads=True, cross_attn_laser=True),
    "no_project_out": dict(cross_attn_project_out=False),
}


@pytest.mark.parametrize("options", CROSS.values(), ids=CROSS.keys())
def test_cross_attention_output_option_matches_x_transformers(options):
    assert_stack_matches_x_transformers("decoder", dict(SMALL, cross_attend=True, **options), seed=1)


def test_sublayer_dropout_draws_as_x_transformers_in_training():
    torch.manual_seed(1)
    ours, theirs = make_pair("decoder", **SMALL, attn_sublayer_dropout=0.4, cross_attend=True,
                             cross_attn_sublayer_dropout=0.2)
    ours.train(), theirs.train()
    x, context = torch.randn(2, 9, SMALL["dim"]), torch.randn(2, 5, SMALL["dim"])
    torch.manual_seed(7)
    out = ours(x, context=context)
    torch.manual_seed(7)
    expected = theirs(x, context=context)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)
    assert not torch.allclose(out, ours.eval()(x, context=context))  # the dropout did act


def test_gates_start_as_x_transformers_and_name_their_parameters():
    torch.manual_seed(3)
    encoder = Encoder(**SMALL, attn_gate_values=True, attn_gate_values_rank=4, attn_output_gate=True,
                      attn_gate_value_heads=True)
    params = dict(encoder.named_parameters())
    attn = "layers.0.1."
    assert params[attn + "to_v_gate.down.weight"].shape == (4, 24)
    assert not params[attn + "to_v_gate.up.weight"].any()  # the bottleneck's output starts at zero
    assert not params[attn + "to_output_gate.weight"].any()
    assert not params[attn + "to_v_head_gate.weight"].any()
    assert (params[attn + "to_v_head_gate.bias"] == 10).all()  # open at the start
    assert params[attn + "to_v_gate.down.weight"].abs().sum() > 0


def test_the_output_options_keep_the_flash_kernel_where_x_transformers_can():
    encoder = Encoder(**SMALL, attn_gate_values=True, attn_output_gate=True, attn_laser=True,
                      attn_gate_value_heads=True, attn_orthog_projected_values=True)
    layers = chosen_attention_paths(encoder, torch.randn(2, 5, SMALL["dim"]), mask=random_mask(2, 5))
    assert layers and all(c.chosen == Backend.CPU_FLASH for c in layers)
    # A decoder's padded queries see no key; the projection reads them, as x-transformers' softmax leaves them.
    decoder = Decoder(**SMALL, attn_orthog_projected_values=True)
    reasons = rejection_reasons(chosen_attention_paths(decoder, torch.randn(2, 5, SMALL["dim"])))
    assert any("orthog_projected_values" in r for r in reasons), reasons


def test_orthogonal_projection_refuses_a_memory_it_cannot_align():
    torch.manual_seed(0)
    decoder = Decoder(**SMALL, attn_orthog_projected_values=True)
    x, mem = torch.randn(2, 5, SMALL["dim"]), [torch.randn(2, 3, SMALL["dim"])] * 2
    with pytest.raises(ValueError, match="one value per query"):
        decoder(x, mems=mem)


@pytest.mark.parametrize("options,message", [
    (dict(attn_gate_values_rank=4), "attn_gate_values_rank / gate_values_headwise needs attn_gate_values"),
    (dict(attn_output_gate_headwise=True), "needs attn_output_gate"),
    (dict(attn_swiglu_values=True), "attn_swiglu_values needs attn_gate_values or output_gate"),
    (dict(attn_gate_values=True, attn_gate_values_headwise=True, attn_gate_values_rank=2),
     "gate_values_rank cannot be set with attn_gate_values_headwise"),
    (dict(attn_output_gate=True, attn_output_gate_rank=24), "attn_output_gate_rank > 0 and below"),
    (dict(attn_laser=True, attn_laser_softclamp_value=0.0), "expected attn_laser_softclamp_value > 0"),
    (dict(attn_sublayer_dropout=1.0), r"attn_sublayer_dropout in \[0, 1\)"),
    (dict(attn_project_out=False, attn_dim_head=5), "must equal dim"),
    (dict(attn_project_out=False, attn_on_attn=True), "clashes with attn_project_out=False"),
    (dict(attn_orthog_projected_values=True, unpad=True), "clashes with unpad"),
], ids=["rank_without_gate", "headwise_without_gate", "swiglu_alone", "headwise_and_rank", "rank_too_wide",
        "laser_clamp_zero", "dropout_one", "no_projection_width", "on_attn_without_projection", "orthog_unpad"])
def test_bad_output_options_name_them(options, message):
    with pytest.raises(ValueError, match=message):
        Encoder(**{**SMALL, **options})
