"""Incremental decoding with `cache` (x-transformers' cached_kv), and rotary_xpos, against the pinned x-transformers.

Decoding token by token must give the full forward's outputs, ours and x-transformers' alike; the cache itself
(cached_kv per attention layer, cache_length) must hold what x-transformers' holds.
"""
import pytest
import torch

from test_options_parity import check, make_pair, option_id
from xtc_testing import assert_parameter_grads_close
from x_transformers_cpp import Decoder, Encoder

BASE = dict(dim=32, depth=2, heads=4, attn_dim_head=16)

CACHE_OPTIONS = [
    dict(), dict(rotary_pos_emb=True), dict(rotary_pos_emb=True, rotary_emb_dim=8), dict(rotary_xpos=True),
    dict(rotary_xpos=True, rotary_xpos_scale_base=64, rotary_interpolation_factor=2.0),
    dict(alibi_pos_bias=True), dict(rel_pos_bias=True), dict(dynamic_pos_bias=True),
    dict(attn_kv_heads=2, rotary_pos_emb=True), dict(attn_one_kv_head=True, attn_value_dim_head=8),
    dict(attn_num_mem_kv=2, attn_qk_norm=True, rotary_pos_emb=True), dict(attn_max_attend_past=3),
    dict(attn_softclamp_logits=True, attn_logit_softclamp_value=3.0, alibi_pos_bias=True),
    dict(residual_attn=True), dict(add_value_residual=True, rotary_pos_emb=True),
    dict(attn_pre_talking_heads=True, attn_post_talking_heads=True), dict(macaron=True, use_rmsnorm=True, depth=1),
    dict(layers_execute_order=(0, 1, 0, 1, 2, 3)), dict(attn_qk_norm=True, attn_qk_norm_dim_scale=True),
    dict(attn_add_zero_kv=True, attn_qk_rmsnorm=True, attn_value_rmsnorm=True, rotary_pos_emb=True),
    dict(attn_head_learned_sink=True, alibi_pos_bias=True),
]


def decode(model, x, prefill=0, **kwargs):
    """Runs x through `model` as a prefill of `prefill` tokens, then one token per call; returns the outputs and
    the final cache."""
    outs, cache = [], None
    if prefill:
        out, cache = model(x[:, :prefill], return_hiddens=True, **kwargs)
        outs.append(out)
    for t in range(prefill, x.shape[1]):
        out, cache = model(x[:, t:t + 1], cache=cache, return_hiddens=True, **kwargs)
        outs.append(out)
    return torch.cat(outs, 1), cache


@pytest.mark.parametrize("options", CACHE_OPTIONS, ids=option_id)
def test_token_by_token_equals_full_forward(options):
    torch.manual_seed(0)
    ours, theirs = make_pair("decoder", **{**BASE, **options})
    ours.eval(), theirs.eval()
    x = torch.randn(2, 9, BASE["dim"])
    with torch.no_grad():
        full, expected = ours(x), theirs(x)
        stepped, cache = decode(ours, x)
        prefilled, _ = decode(ours, x, prefill=4)
        their_stepped, their_cache = decode(theirs, x)
    torch.testing.assert_close(full, expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(stepped, full, atol=1e-5, rtol=0)
    torch.testing.assert_close(prefilled, full, atol=1e-5, rtol=0)
    torch.testing.assert_close(stepped, their_stepped, atol=1e-5, rtol=0)
    assert cache.cache_length == their_cache.cache_length == x.shape[1]
    assert len(cache.attn_intermediates) == len(their_cache.attn_intermediates)
    for ours_layer, their_layer in zip(cache.attn_intermediates, their_cache.attn_intermediates):
        for got, want in zip(ours_layer.cached_kv, their_layer.cached_kv):
            assert got.shape == want.shape
            torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


def test_cross_attention_cache_and_key_mask():
    torch.manual_seed(1)
    ours, theirs = make_pair("decoder", **BASE, cross_attend=True, rotary_pos_emb=True)
    ours.eval(), theirs.eval()
    x, context = torch.randn(2, 7, BASE["dim"]), torch.randn(2, 5, BASE["dim"])
    context_mask = torch.tensor([[True] * 5, [True, True, False, True, False]])
    with torch.no_grad():
        full = theirs(x, context=context, context_mask=context_mask)
        stepped, cache = decode(ours, x, context=context, context_mask=context_mask)
    torch.testing.assert_close(stepped, full, atol=1e-5, rtol=0)
    assert [inter.layer_type for inter in cache.attn_intermediates] == ["a", "c", "a", "c"]
    assert cache.attn_intermediates[1].cached_kv[0].shape == (2, 4, 5, 16)  # the context's keys, projected once


def test_key_mask_covers_cached_and_new_keys():
    # With a cache, `mask` is the key mask over cached + new positions (x-transformers' semantics).
    torch.manual_seed(2)
    ours, theirs = make_pair("decoder", **BASE, alibi_pos_bias=True)
    ours.eval(), theirs.eval()
    x = torch.randn(2, 6, BASE["dim"])
    keep = torch.tensor([[True] * 6, [True, False, True, True, False, True]])
    with torch.no_grad():
        full = theirs(x, mask=keep)
        outs, cache = [], None
        for t in range(x.shape[1]):
            out, cache = ours(x[:, t:t + 1], mask=keep[:, :t + 1], cache=cache, return_hiddens=True)
            outs.append(out)
    stepped = torch.cat(outs, 1)
    torch.testing.assert_close(stepped[keep], full[keep], atol=1e-5, rtol=0)


def test_cache_age_runs_the_last_tokens_of_a_full_prefix():
    torch.manual_seed(3)
    ours, _ = make_pair("decoder", **BASE, rotary_xpos=True)
    ours.eval()
    x = torch.randn(1, 8, BASE["dim"])
    with torch.no_grad():
        full = ours(x)
        _, cache = ours(x[:, :5], return_hiddens=True)
        # The whole prefix is passed, as AutoregressiveWrapper does; only the last cache_age tokens run.
        out = ours(x[:, :7], cache=cache, cache_age=2)
    torch.testing.assert_close(out, full[:, 5:7], atol=1e-5, rtol=0)


def test_gradients_flow_through_a_cached_step():
    torch.manual_seed(4)
    ours, theirs = make_pair("decoder", **BASE, rotary_pos_emb=True, attn_kv_heads=2)
    x = torch.randn(2, 5, BASE["dim"])
    _, cache = ours(x[:, :4], return_hiddens=True)
    _, their_cache = theirs(x[:, :4], return_hiddens=True)
    out = ours(x[:, 4:], cache=cache)
    expected = theirs(x[:, 4:], cache=their_cache)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)
    assert_parameter_grads_close(ours, theirs, out, expected)


@pytest.mark.parametrize("options", [dict(rotary_xpos=True), dict(rotary_xpos=True, rotary_emb_dim=8),
                                     dict(rotary_xpos=True, rotary_xpos_scale_base=16, attn_kv_heads=2)],
                         ids=option_id)
def test_rotary_xpos_matches_x_transformers(options):
    torch.manual_seed(5)
    ours, theirs = make_pair("decoder", **{**BASE, **options})
    assert "rotary_pos_emb.scale" in ours.state_dict()
    x = torch.randn(3, 11, BASE["dim"])
    mask = torch.rand(3, 11) > 0.3
    mask[:, 0] = True
    check(ours, theirs, x)
    check(ours, theirs, x, mask)


def test_cache_errors():
    torch.manual_seed(6)
    decoder = Decoder(**BASE)
    x = torch.randn(2, 4, BASE["dim"])
    _, cache = decoder(x, return_hiddens=True)
    encoder = Encoder(**BASE)
    with pytest.raises(ValueError, match="causal"):
        encoder(x[:, :1], cache=cache)
    with pytest.raises(ValueError, match="attn_mask"):
        decoder(x[:, :1], cache=cache, attn_mask=torch.ones(1, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"mask of shape \(2, 5\)"):
        decoder(x[:, :1], cache=cache, mask=torch.ones(2, 1, dtype=torch.bool))
    short = type(cache)(**{**cache.__dict__, "attn_intermediates": cache.attn_intermediates[:1]})
    with pytest.raises(ValueError, match="2 \\(k, v\\) pairs"):
        decoder(x[:, :1], cache=short)
    with pytest.raises(ValueError, match="rotary_xpos is for causal"):
        Encoder(**BASE, rotary_xpos=True)
