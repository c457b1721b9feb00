"""TransformerWrapper's depth options against the pinned x-transformers: ff_deep_embed (per-token scales of each
feed-forward's output), recycling (recycle_steps, drawn in training), the looped LM (looped_steps, exit logits,
per-step logits, looped inference with its prompt cache and early exit, as x-transformers' AutoregressiveWrapper
generates) and the continuous prediction head (return_next_embed_pred). Same weights, a padding mask with a fully
masked row where x-transformers takes one, outputs within 1e-5 and every gradient within 1e-4."""
import random

import pytest
import torch
from x_transformers import AutoregressiveWrapper
from x_transformers import Decoder as XDecoder
from x_transformers import TransformerWrapper as XTransformerWrapper

from x_transformers_cpp import Decoder, TransformerWrapper
from xtc_testing import assert_parameter_grads_close, random_mask, same_weights

LAYERS = dict(dim=16, depth=2, heads=2, attn_dim_head=8)
LOOPED = dict(LAYERS, pre_and_post_norm=True)


def _pair(layers=LAYERS, seed=0, **kwargs):
    torch.manual_seed(seed)
    return same_weights(
        lambda: TransformerWrapper(num_tokens=20, max_seq_len=24, attn_layers=Decoder(**layers), **kwargs),
        lambda: XTransformerWrapper(num_tokens=20, max_seq_len=24, attn_layers=XDecoder(**layers), **kwargs))


def _inputs(b=3, n=9, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 20, (b, n), generator=g), random_mask(b, n, g)


CASES = {
    "ff_deep_embed": (dict(ff_deep_embed=True), LAYERS, {}),
    "ff_deep_embed_macaron": (dict(ff_deep_embed=True), dict(LAYERS, macaron=True), {}),
    "recycling_3": (dict(recycling=True), LAYERS, dict(recycle_steps=3)),
    "looped": (dict(looped=True, max_looped_steps=3), LOOPED, {}),
    "looped_steps_2": (dict(looped=True), LOOPED, dict(looped_steps=2)),
    "looped_memory_tokens": (dict(looped=True, num_memory_tokens=2), LOOPED, dict(max_looped_steps=2)),
}


@pytest.mark.parametrize("kwargs,layers,forward", CASES.values(), ids=CASES.keys())
def test_depth_option_matches_x_transformers(kwargs, layers, forward):
    ours, theirs = _pair(layers, **kwargs)
    tokens, mask = _inputs()
    out, expected = ours(tokens, mask=mask, **forward), theirs(tokens, mask=mask, **forward)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)
    assert_parameter_grads_close(ours, theirs, out, expected)
    assert list(ours.state_dict()) == list(theirs.state_dict())
    assert (ours.recycling, ours.looped, ours.can_cache_kv) == (theirs.recycling, theirs.looped, theirs.can_cache_kv)


def test_deep_embeds_follow_the_cache():
    ours, theirs = _pair(ff_deep_embed=True)
    ours.eval(), theirs.eval()
    tokens = torch.randint(0, 20, (2, 8))
    with torch.no_grad():
        _, cache = ours(tokens[:, :3], return_intermediates=True)
        _, their_cache = theirs(tokens[:, :3], return_intermediates=True)
        for t in range(4, 9):
            logits, cache = ours(tokens[:, :t], cache=cache, return_intermediates=True)
            expected, their_cache = theirs(tokens[:, :t], cache=their_cache, return_intermediates=True)
            torch.testing.assert_close(logits, expected, atol=1e-5, rtol=0)


def test_recycling_in_training_draws_the_steps_as_x_transformers():
    ours, theirs = _pair(recycling=True, train_max_recycle_steps=5)
    tokens, mask = _inputs()
    for seed in range(4):
        random.seed(seed)
        out = ours(tokens, mask=mask)
        random.seed(seed)
        expected = theirs(tokens, mask=mask)
        torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)
        assert_parameter_grads_close(ours, theirs, out, expected)
    ours.eval()
    with pytest.raises(ValueError, match="recycle_steps` must be provided"):
        ours(tokens)


def test_looped_training_intermediates_match_x_transformers():
    ours, theirs = _pair(LOOPED, looped=True, max_looped_steps=3)
    tokens, mask = _inputs()
    out, inter = ours(tokens, mask=mask, return_intermediates=True)
    expected, their_inter = theirs(tokens, mask=mask, return_intermediates=True)
    assert len(inter.exit_logits) == len(inter.all_pred_logits) == len(their_inter.all_pred_logits) == 3
    for mine, theirs_ in [(inter.exit_logits, their_inter.exit_logits),
                          (inter.all_pred_logits, their_inter.all_pred_logits)]:
        torch.testing.assert_close(torch.stack(mine), torch.stack(theirs_), atol=1e-5, rtol=0)
    assert inter.exit_indices.tolist() == their_inter.exit_indices.tolist() == [[2]]
    torch.testing.assert_close(inter.initial_embeds, their_inter.initial_embeds, atol=1e-6, rtol=0)
    ours.eval()
    _, inter = ours(tokens, return_intermediates=True)
    assert len(inter.exit_logits) == 3 and inter.all_pred_logits == []  # per-step logits: training's default


def test_autoregressive_wrapper_trains_the_looped_lm():
    ours, theirs = _pair(LOOPED, looped=True, max_looped_steps=3)
    seq = torch.randint(0, 20, (2, 11))
    loss, expected = AutoregressiveWrapper(ours)(seq), AutoregressiveWrapper(theirs)(seq)
    torch.testing.assert_close(loss, expected, atol=1e-5, rtol=0)
    assert_parameter_grads_close(ours, theirs, loss, expected)


def _with_varied_exit_gate(ours, theirs):
    with torch.no_grad():
        weight = torch.randn(1, ours.exit_gate.weight.shape[1], generator=torch.Generator().manual_seed(7)) * 3
        ours.exit_gate.weight.copy_(weight)
        theirs.exit_gate.weight.copy_(weight)


def test_looped_inference_decodes_as_x_transformers():
    # Absolute positions: x-transformers' stack positions play no part, so every step's numbers agree.
    ours, theirs = _pair(LOOPED, looped=True, max_looped_steps=5)
    _with_varied_exit_gate(ours, theirs)
    ours.eval(), theirs.eval()
    tokens = torch.randint(0, 20, (1, 14))
    cache = their_cache = None
    exits = set()
    with torch.no_grad():
        for t in range(5, 15):
            x = tokens[:, :t]
            logits, cache = ours(x, cache=cache, return_intermediates=True, looped_inference=True)
            expected, their_cache = theirs(x, cache=their_cache, return_intermediates=True, looped_inference=True)
            torch.testing.assert_close(logits, expected, atol=1e-5, rtol=0)
            assert cache.exit_indices.tolist() == their_cache.exit_indices.tolist()
            assert len(cache.exit_logits) == len(their_cache.exit_logits)
            exits.add(cache.exit_indices[0, -1].item())
    assert len(exits) > 1, "the test should see early exits at several steps"
    assert len(cache.looped_prompt_kv_cache) == 5
    for step, their_step in zip(cache.looped_prompt_kv_cache, their_cache.looped_prompt_kv_cache):
        for (k, v), (their_k, their_v) in zip(step, their_step):
            torch.testing.assert_close((k, v), (their_k, their_v), atol=1e-5, rtol=0)


def test_generate_over_the_looped_lm_matches_x_transformers():
    ours, theirs = _pair(LOOPED, looped=True, max_looped_steps=4)
    _with_varied_exit_gate(ours, theirs)
    prompt = torch.randint(0, 20, (1, 4))
    torch.manual_seed(5)
    generated = AutoregressiveWrapper(ours).generate(prompt, 10)
    torch.manual_seed(5)
    expected = AutoregressiveWrapper(theirs).generate(prompt, 10)
    assert generated.tolist() == expected.tolist()


def test_looped_inference_keeps_rotary_positions():
    # From the second step the stack runs on the last step's output alone; ours keeps the decoded token at its
    # position. x-transformers does with explicit positions (its default gives the token position 0 there).
    ours, theirs = _pair(dict(LOOPED, rotary_pos_emb=True), looped=True, max_looped_steps=3)
    _with_varied_exit_gate(ours, theirs)
    ours.eval(), theirs.eval()
    tokens = torch.randint(0, 20, (1, 10))
    cache = their_cache = None
    with torch.no_grad():
        for t in range(4, 11):
            x, pos = tokens[:, :t], torch.arange(t)
            logits, cache = ours(x, cache=cache, return_intermediates=True, looped_inference=True)
            expected, their_cache = theirs(x, cache=their_cache, return_intermediates=True, looped_inference=True,
                                           pos=pos)
            torch.testing.assert_close(logits, expected, atol=1e-5, rtol=0)
            assert cache.exit_indices.tolist() == their_cache.exit_indices.tolist()


@pytest.mark.parametrize("prepend", [False, True], ids=["tokens", "prepend_embeds"])
def test_next_embed_prediction_matches_x_transformers(prepend):
    ours, theirs = _pair(add_continuous_pred_head=True)
    tokens, mask = _inputs()
    kwargs = dict(prepend_embeds=torch.randn(3, 2, 16), excise_prepend_embeds=True) if prepend else {}
    (out, (pred, init)), (expected, (their_pred, their_init)) = [
        model(tokens, mask=mask, return_next_embed_pred=True, **kwargs) for model in (ours, theirs)]
    for mine, reference in [(out, expected), (pred, their_pred), (init, their_init)]:
        torch.testing.assert_close(mine, reference, atol=1e-5, rtol=0)
    grads = [torch.randn_like(t) for t in (out, pred, init)]
    mine = torch.autograd.grad((out, pred, init), list(ours.parameters()), grads, allow_unused=True)
    reference = torch.autograd.grad((expected, their_pred, their_init), list(theirs.parameters()), grads,
                                    allow_unused=True)
    for name, a, b in zip([n for n, _ in ours.named_parameters()], mine, reference):
        assert (a is None) == (b is None), name
        if a is not None:
            torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4, msg=name)


def test_autoregressive_wrapper_adds_the_next_embed_loss():
    ours, theirs = _pair(add_continuous_pred_head=True)
    seq = torch.randint(0, 20, (2, 11))
    loss, expected = AutoregressiveWrapper(ours)(seq), AutoregressiveWrapper(theirs)(seq)
    torch.testing.assert_close(loss, expected, atol=1e-5, rtol=0)
    assert_parameter_grads_close(ours, theirs, loss, expected)


def test_exported_looped_and_recycling_wrappers():
    for kwargs, layers, forward in [CASES["looped"], CASES["recycling_3"], CASES["ff_deep_embed"]]:
        ours, _ = _pair(layers, **kwargs)
        ours.eval()
        tokens, mask = _inputs()
        program = torch.export.export(ours, (tokens,), dict(mask=mask, **forward))
        tokens, mask = _inputs(seed=4)
        with torch.no_grad():
            torch.testing.assert_close(program.module()(tokens, mask=mask, **forward),
                                       ours(tokens, mask=mask, **forward), atol=1e-5, rtol=0)


@pytest.mark.parametrize("kwargs,layers,forward,message", [
    (dict(looped=True), LAYERS, {}, "pre_and_post_norm"),
    (dict(looped=True, recycling=True), LOOPED, {}, "recycling and looped clash"),
    (dict(ff_deep_embed=True, num_memory_tokens=2), LAYERS, {}, "clashes with num_memory_tokens"),
    (dict(add_continuous_pred_head=True, mixture_of_softmax=True), LAYERS, {}, "set at most one"),
    (dict(ff_deep_embed=True), LAYERS, dict(prepend_embeds=torch.randn(3, 2, 16)), "clashes with prepend_embeds"),
    (dict(), LAYERS, dict(looped_steps=2), "looped_steps need a wrapper built with looped"),
    (dict(recycling=True), LAYERS, dict(recycle_steps=2, max_looped_steps=3), "built with looped .this one is recy"),
    (dict(), LAYERS, dict(return_next_embed_pred=True), "needs add_continuous_pred_head"),
    (dict(looped=True), LOOPED, dict(looped_inference=True), "one sequence at a time"),
], ids=["looped_post_norm", "both", "deep_memory", "pred_mixture", "deep_prepend", "steps_alone", "looped_on_recycling",
        "pred_alone", "looped_batch"])
def test_bad_depth_options_name_them(kwargs, layers, forward, message):
    with pytest.raises(ValueError, match=message):
        model = TransformerWrapper(num_tokens=20, max_seq_len=24, attn_layers=Decoder(**layers), **kwargs).eval()
        model(torch.randint(0, 20, (3, 9)), **forward)
