"""x-transformers' feed-forward research options against the pinned x-transformers: ff_solu (SoLU, its LayerNorm
gain in the state_dict), ff_softclamp_value (the non-GLU projection soft-clamped before the activation),
ff_glu_softclamp with ff_glu_gate_softclamp_value / ff_glu_up_softclamp_value (situ-GLU, GELU or swish) and
ff_sublayer_dropout. Same weights, a padding mask with a fully masked row, odd lengths: outputs within 1e-5 and
every gradient within 1e-4, in eval and, for the dropout, in training under one seed."""
import pytest
import torch
from torch import nn
from x_transformers.x_transformers import ReluSquared

from x_transformers_cpp import Encoder
from xtc_testing import assert_parameter_grads_close, make_pair, random_mask

SMALL = dict(dim=24, depth=2, heads=3, attn_dim_head=8)
# Clamp values near the activations' scale, so that the clamps bend them.
CASES = {
    "solu": dict(ff_solu=True),
    "solu_glu": dict(ff_solu=True, ff_glu=True, ff_glu_mult_bias=True),
    "solu_post_act_ln": dict(ff_solu=True, ff_post_act_ln=True),
    "softclamp": dict(ff_softclamp_value=0.5),
    "softclamp_solu": dict(ff_softclamp_value=0.7, ff_solu=True),
    "softclamp_swish_no_bias": dict(ff_softclamp_value=1.0, ff_swish=True, ff_no_bias=True),
    "glu_softclamp_gelu": dict(ff_glu=True, ff_glu_softclamp=True, ff_glu_gate_softclamp_value=0.5,
                               ff_glu_up_softclamp_value=0.8),
    "glu_softclamp_swish": dict(ff_glu=True, ff_swish=True, ff_glu_softclamp=True, ff_glu_mult_bias=True),
    "glu_softclamp_defaults": dict(ff_glu=True, ff_glu_softclamp=True),
    "sublayer_dropout": dict(ff_sublayer_dropout=0.3),
    # ff_custom_activation given torch.nn activations with a libtorch twin
    "custom_relu": dict(ff_custom_activation=nn.ReLU()),
    "custom_gelu_tanh_glu": dict(ff_custom_activation=nn.GELU(approximate="tanh"), ff_glu=True),
    "custom_sigmoid_post_act_ln": dict(ff_custom_activation=nn.Sigmoid(), ff_post_act_ln=True),
    "custom_leaky_relu": dict(ff_custom_activation=nn.LeakyReLU(0.2)),
    "custom_softplus_glu_mult_bias": dict(ff_custom_activation=nn.Softplus(beta=2.0, threshold=5.0), ff_glu=True,
                                          ff_glu_mult_bias=True),
    "custom_elu_softclamp": dict(ff_custom_activation=nn.ELU(alpha=0.5), ff_softclamp_value=1.5),
    "custom_mish": dict(ff_custom_activation=nn.Mish()),
    "custom_hardtanh": dict(ff_custom_activation=nn.Hardtanh(-0.5, 0.7)),
    "custom_relu_squared": dict(ff_custom_activation=ReluSquared()),
    "custom_silu_glu_softclamp": dict(ff_custom_activation=nn.SiLU(), ff_glu=True, ff_glu_softclamp=True),
    "custom_gelu_tanh_glu_softclamp": dict(ff_custom_activation=nn.GELU(approximate="tanh"), ff_glu=True,
                                           ff_glu_softclamp=True),
}


@pytest.mark.parametrize("options", CASES.values(), ids=CASES.keys())
@pytest.mark.parametrize("kind", ["encoder", "decoder"])
def test_feed_forward_option_matches_x_transformers(kind, options):
    torch.manual_seed(0)
    ours, theirs = make_pair(kind, **SMALL, **options)
    ours.eval(), theirs.eval()
    x = torch.randn(3, 11, SMALL["dim"]) * 2
    mask = random_mask(3, 11)
    out, expected = ours(x, mask=mask), theirs(x, mask=mask)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)
    assert_parameter_grads_close(ours, theirs, out, expected)


def test_sublayer_dropout_draws_as_x_transformers_in_training():
    torch.manual_seed(1)
    ours, theirs = make_pair("encoder", **SMALL, ff_sublayer_dropout=0.4)
    ours.train(), theirs.train()
    x = torch.randn(2, 9, SMALL["dim"])
    torch.manual_seed(7)
    out = ours(x)
    torch.manual_seed(7)
    expected = theirs(x)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)
    assert not torch.allclose(out, ours.eval()(x))  # the dropout did act


def test_options_show_in_the_module_tree_and_repr():
    encoder = Encoder(**SMALL, ff_solu=True, ff_glu=True)
    names = [name for name, _ in encoder.named_parameters()]
    assert "layers.1.1.ff.0.act.norm.gamma" in names
    assert names.index("layers.1.1.ff.0.act.norm.gamma") < names.index("layers.1.1.ff.0.proj.weight")
    assert "ff_solu=True" in repr(encoder)


@pytest.mark.parametrize("options,message", [
    (dict(ff_solu=True, ff_relu_squared=True), "ff_solu and ff_relu_squared exclude each other"),
    (dict(ff_glu_softclamp=True), "ff_glu_softclamp needs ff_glu"),
    (dict(ff_glu=True, ff_glu_softclamp=True, ff_relu_squared=True), "ff_glu_softclamp needs ff_glu"),
    (dict(ff_glu=True, ff_softclamp_value=2.0), "with ff_glu, use ff_glu_softclamp"),
    (dict(ff_softclamp_value=0.0), "expected ff_softclamp_value > 0"),
    (dict(ff_glu=True, ff_glu_softclamp=True, ff_glu_up_softclamp_value=-1.0), "softclamp_value > 0"),
    (dict(ff_sublayer_dropout=1.0), r"expected ff_sublayer_dropout in \[0, 1\)"),
    (dict(ff_custom_activation=nn.SiLU(), ff_swish=True), "takes the place of ff_swish"),
    (dict(ff_custom_activation="softplus:1.0"), "to name a torch.nn activation"),
    (dict(ff_custom_activation=nn.Sigmoid(), ff_glu=True, ff_glu_softclamp=True), "ff_glu_softclamp needs ff_glu"),
], ids=["solu_relu_squared", "softclamp_without_glu", "softclamp_relu_squared", "softclamp_value_with_glu",
        "softclamp_zero", "up_value_negative", "sublayer_dropout_one", "custom_with_swish", "custom_bad_spec",
        "custom_sigmoid_glu_softclamp"])
def test_bad_feed_forward_options_name_the_option(options, message):
    with pytest.raises(ValueError, match=message):
        Encoder(**SMALL, **options)


@pytest.mark.parametrize("activation", [nn.PReLU(), lambda x: x * 2, nn.Softmax(dim=-1)], ids=["prelu", "lambda", "softmax"])
def test_custom_activation_without_a_twin_is_refused_by_name(activation):
    with pytest.raises(TypeError, match="ff_custom_activation: .* has no libtorch twin"):
        Encoder(**SMALL, ff_custom_activation=activation)
