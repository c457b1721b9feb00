"""x-transformers' residual streams and layer integration against the pinned x-transformers: hyper-connections
(num_residual_streams, hyper_conn_sinkhorn_iters), the gated multi residual (residual_fn_kwargs read_gate_rank),
LIMe (integrate_layers, layer_integrate_use_softmax), attention residuals (attn_aggregated_residuals with its kwargs),
qkv_receive_diff_residuals over each, and cross_attn_tokens_dropout. Same weights, a padding mask with a fully masked
row, odd lengths: outputs within 1e-5, every gradient within 1e-4; construction draws as x-transformers'; unpad, the
decoding cache and return_hiddens with them."""
import copy

import pytest
import torch
from torch import nn

from x_transformers_cpp import Decoder, Encoder
from xtc_testing import (assert_constructs_as_x_transformers, assert_stack_matches_x_transformers, make_pair,
                         random_mask)

SMALL = dict(dim=24, depth=2, heads=3, attn_dim_head=8)
GATED = dict(gated_multi_residual=True, residual_fn_kwargs=dict(read_gate_rank=6))
AGGREGATED = dict(attn_aggregated_residuals=True, attn_aggregated_residual_kwargs=dict(lora_rank=8))
CASES = {
    "hyper": dict(num_residual_streams=4),
    "hyper_sinkhorn_iters": dict(num_residual_streams=3, hyper_conn_sinkhorn_iters=2),
    "hyper_qkv_rotary": dict(num_residual_streams=3, qkv_receive_diff_residuals=True, rotary_pos_emb=True),
    "hyper_unet": dict(num_residual_streams=2, unet_skips=True, depth=4),
    "hyper_sandwich": dict(num_residual_streams=2, sandwich_norm=True),
    "hyper_post_norm": dict(num_residual_streams=2, pre_norm=False),
    "hyper_cross_macaron": dict(num_residual_streams=2, cross_attend=True, macaron=True),
    "gated": dict(GATED, num_residual_streams=3),
    "gated_one_stream": GATED,
    "gated_qkv": dict(GATED, num_residual_streams=3, qkv_receive_diff_residuals=True),
    "lime": dict(integrate_layers=True),
    "lime_hyper": dict(integrate_layers=True, num_residual_streams=3),
    "lime_gated_qkv": dict(GATED, integrate_layers=True, num_residual_streams=2, qkv_receive_diff_residuals=True),
    "lime_cross_layerscale": dict(integrate_layers=True, cross_attend=True, use_layerscale=True),
    "aggregated": AGGREGATED,
    "aggregated_qkv_silu": dict(attn_aggregated_residuals=True, qkv_receive_diff_residuals=True,
                                attn_aggregated_residual_kwargs=dict(lora_rank=8, lora_activation=nn.SiLU())),
    "aggregated_hyper": dict(AGGREGATED, num_residual_streams=2),
}


@pytest.mark.parametrize("options", CASES.values(), ids=CASES.keys())
@pytest.mark.parametrize("kind", ["encoder", "decoder"])
def test_residual_stream_option_matches_x_transformers(kind, options):
    assert_stack_matches_x_transformers(kind, {**SMALL, **options})


@pytest.mark.parametrize("options", [CASES["hyper_qkv_rotary"], CASES["gated_qkv"], CASES["lime_hyper"],
                                     CASES["aggregated_qkv_silu"], CASES["hyper_unet"]],
                         ids=["hyper_qkv", "gated_qkv", "lime_hyper", "aggregated_qkv", "hyper_unet"])
def test_construction_draws_as_x_transformers(options):
    # Same seed, same state_dict: names, order and values (the statics' identity starts, the zeroed gates).
    assert_constructs_as_x_transformers("decoder", {**SMALL, **options}, seed=7)


@pytest.mark.parametrize("kind", ["encoder", "decoder"])
def test_lime_without_softmax_is_as_precise_as_x_transformers(kind):
    # ReLU mixes are unbounded, so float32 rounding grows through them: x-transformers' own float32 gradients stray
    # past 1e-4. So the precision rule: against x-transformers in float64, our float32 error (outputs and every
    # gradient) at most twice x-transformers' float32 error.
    torch.manual_seed(4)
    ours, theirs = make_pair(kind, **SMALL, integrate_layers=True, layer_integrate_use_softmax=False)
    reference = copy.deepcopy(theirs).double()
    # Every row keeps a token: through a fully masked row x-transformers' ReLU-mixed gradients are NaN, float64
    # included.
    x, mask = torch.randn(3, 11, SMALL["dim"]), random_mask(3, 11)
    mask[:, 0] = True
    grad = torch.randn(3, 11, SMALL["dim"])

    def run(module, dtype):
        out = module(x.to(dtype), mask=mask)
        return [out, *torch.autograd.grad(out, list(module.parameters()), grad.to(dtype))]

    exact, mine, their = run(reference, torch.float64), run(ours, torch.float32), run(theirs, torch.float32)
    names = ["output", *(name for name, _ in ours.named_parameters())]
    for name, e, m, t in zip(names, exact, mine, their):
        assert m.isfinite().all(), name
        our_error, their_error = (m.double() - e).abs().max().item(), (t.double() - e).abs().max().item()
        assert our_error <= 2 * their_error + 1e-6 * max(1.0, e.abs().max().item()), name


@pytest.mark.parametrize("options", [CASES["hyper_qkv_rotary"], CASES["gated"], CASES["lime"], AGGREGATED],
                         ids=["hyper_qkv", "gated", "lime", "aggregated"])
def test_unpad_matches_the_padded_stack(options):
    # The streams and the layer inputs are per token, so packing the kept tokens changes nothing at them.
    torch.manual_seed(5)
    padded = Decoder(**SMALL, **options)
    unpadded = copy.deepcopy(padded)
    unpadded.load_state_dict(padded.state_dict())
    unpadded._unpad = True
    x, mask = torch.randn(3, 11, SMALL["dim"]), random_mask(3, 11)
    ours_unpad = Decoder(**SMALL, **options, unpad=True)
    ours_unpad.load_state_dict(padded.state_dict())
    out, expected = ours_unpad(x, mask=mask), padded(x, mask=mask)
    torch.testing.assert_close(out[mask], expected[mask], atol=1e-5, rtol=0)


@pytest.mark.parametrize("options", [CASES["hyper_qkv_rotary"], CASES["gated"], CASES["lime"], AGGREGATED],
                         ids=["hyper_qkv", "gated", "lime", "aggregated"])
def test_cached_decoding_matches_x_transformers(options):
    torch.manual_seed(6)
    ours, theirs = make_pair("decoder", **{**SMALL, **options})
    x = torch.randn(2, 9, SMALL["dim"])
    _, cache = ours(x[:, :6], return_hiddens=True)
    _, their_cache = theirs(x[:, :6], return_hiddens=True)
    for step in (7, 8, 9):
        out, cache = ours(x[:, :step], cache=cache, return_hiddens=True)
        expected, their_cache = theirs(x[:, :step], cache=their_cache, return_hiddens=True)
        torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)
        torch.testing.assert_close(out, ours(x[:, :step])[:, -1:], atol=1e-5, rtol=0)


def test_return_hiddens_gives_x_transformers_layer_hiddens():
    # layer_hiddens: each layer's input after its read of the streams (the three views of a qkv layer), and the
    # streams at the end.
    torch.manual_seed(8)
    ours, theirs = make_pair("encoder", **SMALL, **CASES["gated_qkv"])
    x, mask = torch.randn(2, 7, SMALL["dim"]), random_mask(2, 7)
    _, mine = ours(x, mask=mask, return_hiddens=True)
    _, their = theirs(x, mask=mask, return_hiddens=True)
    assert [tuple(h.shape) for h in mine.layer_hiddens] == [tuple(h.shape) for h in their.layer_hiddens]
    for got, want in zip(mine.layer_hiddens, their.layer_hiddens):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


@pytest.mark.parametrize("context_mask", [False, True], ids=["no_context_mask", "context_mask"])
def test_cross_attn_tokens_dropout_draws_as_x_transformers(context_mask):
    # In training each cross-attention layer keeps a random share of the context (of what the previous kept),
    # drawn from torch's generator as x-transformers draws it: the same seed keeps the same tokens.
    torch.manual_seed(9)
    options = dict(SMALL, cross_attend=True, cross_attn_tokens_dropout=0.4)
    ours, theirs = make_pair("encoder", **options)
    ours.train(), theirs.train()
    x, context = torch.randn(3, 8, SMALL["dim"]), torch.randn(3, 10, SMALL["dim"])
    kwargs = dict(mask=random_mask(3, 8), context=context)
    if context_mask:
        kwargs["context_mask"] = random_mask(3, 10)
    torch.manual_seed(10)
    out = ours(x, **kwargs)
    torch.manual_seed(10)
    expected = theirs(x, **kwargs)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)
    torch.manual_seed(11)
    assert not torch.allclose(ours(x, **kwargs), out)  # another draw, other tokens
    ours.eval(), theirs.eval()
    torch.testing.assert_close(ours(x, **kwargs), theirs(x, **kwargs), atol=1e-5, rtol=0)  # eval keeps them all


@pytest.mark.parametrize("options,message", [
    (dict(num_residual_streams=0), "num_residual_streams >= 1"),
    (dict(num_residual_streams=2, reinject_input=True), "clashes with num_residual_streams > 1"),
    (dict(num_residual_streams=2, gate_residual=True), "clash with gate_residual"),
    (dict(hyper_conn_sinkhorn_iters=3), "x-transformers would ignore it"),
    (dict(qkv_receive_diff_residuals=True), "needs views to read"),
    (dict(num_residual_streams=2, qkv_receive_diff_residuals=True, attn_gate_values=True), "cannot read"),
    (dict(gated_multi_residual=True), "read_gate_rank > 0"),
    (dict(GATED, sandwich_norm=True), "sandwich_norm"),
    (dict(residual_fn_kwargs=dict(read_gate_rank=4)), "read_gate_rank is gated_multi_residual's"),
    (dict(integrate_layers=True, attn_aggregated_residuals=True), "set at most one"),
    (dict(layer_integrate_use_softmax=False), "is integrate_layers'"),
    (dict(attn_aggregated_residuals=True), "lora_rank in \\(0, dim=24\\)"),
    (dict(attn_aggregated_residual_kwargs=dict(lora_rank=8)), "x-transformers would ignore them"),
    (dict(cross_attend=True, cross_attn_tokens_dropout=1.0), "cross_attn_tokens_dropout in \\[0, 1\\)"),
], ids=["zero_streams", "reinject", "hyper_gru", "iters_alone", "qkv_alone", "qkv_gates", "gated_no_rank",
        "gated_sandwich", "rank_alone", "lime_and_aggregated", "softmax_alone", "lora_rank_too_big", "kwargs_alone",
        "tokens_dropout_one"])
def test_bad_residual_stream_options_name_them(options, message):
    with pytest.raises(ValueError, match=message):
        Encoder(**{**SMALL, **options})


def test_lora_activation_without_libtorch_twin_is_refused():
    with pytest.raises(TypeError, match="attn_aggregated_residual_kwargs lora_activation"):
        Encoder(**SMALL, attn_aggregated_residuals=True,
                attn_aggregated_residual_kwargs=dict(lora_rank=8, lora_activation=lambda t: t))


def test_lime_refuses_a_reordered_stack_at_forward():
    # DynamicLIMe mixes as many inputs as layers before it; a reordered run has other counts (x-transformers
    # asserts as well).
    encoder = Encoder(**SMALL, integrate_layers=True, layers_execute_order=(1, 0, 2, 3))
    with pytest.raises(ValueError, match="integrate_layers expected 2 layer inputs so far"):
        encoder(torch.randn(1, 5, SMALL["dim"]))
