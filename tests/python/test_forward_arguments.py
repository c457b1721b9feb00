"""x-transformers' AttentionLayers.forward arguments beyond the masks, against x-transformers with the same weights:
context_pos (cross-attention's rotary positions), self_attn_additional_kv / additional_kv_mask (another model's
keys and values), self_attn_kv_residuals / cross_attn_kv_residuals, deep_embeds_and_ids (per-token scales of each
feed-forward's output), return_gumbel_log_probs, repeat_blocks per call, and the wrappers' input_not_include_cache.
Outputs within 1e-5, gradients within 1e-4."""
import pytest
import torch
from x_transformers import Decoder as XDecoder
from x_transformers import TransformerWrapper as XTokens

from xtc_testing import assert_parameter_grads_close, make_pair, random_mask, same_weights
from x_transformers_cpp import Decoder, TransformerWrapper

LAYERS = dict(dim=24, depth=2, heads=4, attn_dim_head=8)


def assert_close(got, want):
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


@pytest.mark.parametrize("kind", ["encoder", "decoder"])
@pytest.mark.parametrize("extra", [dict(), dict(rotary_xpos=True), dict(rotate_num_heads=2)],
                         ids=["rotary", "xpos", "partial-heads"])
@pytest.mark.parametrize("batched_pos", [False, True])
def test_context_pos_rotates_cross_attention(kind, extra, batched_pos):
    if extra.get("rotary_xpos") and kind == "encoder":
        pytest.skip("xPos is for causal stacks")
    torch.manual_seed(0)
    ours, theirs = make_pair(kind, **LAYERS, cross_attend=True, rotary_pos_emb=True, **extra)
    x, context = torch.randn(3, 7, 24, requires_grad=True), torch.randn(3, 5, 24)
    context_pos = torch.randint(0, 20, (3, 5) if batched_pos else (5,))
    mask, context_mask = random_mask(3, 7), torch.rand(3, 5) > 0.3
    kwargs = dict(context=context, context_mask=context_mask, context_pos=context_pos)
    out, expected = ours(x, mask=mask, **kwargs), theirs(x, mask=mask, **kwargs)
    assert_close(out, expected)
    assert_parameter_grads_close(ours, theirs, out, expected)
    # The keys really turn: other context positions give other outputs.
    assert not torch.allclose(ours(x, mask=mask, **dict(kwargs, context_pos=context_pos + 3)), out, atol=1e-4)


def test_context_pos_refused_without_rotary():
    ours, _ = make_pair("encoder", **LAYERS, cross_attend=True)
    with pytest.raises(ValueError, match="context_pos .* needs rotary_pos_emb"):
        ours(torch.randn(2, 4, 24), context=torch.randn(2, 3, 24), context_pos=torch.arange(3))


def additional_kv(batch, heads, length, dim_head, pairs, generator_seed=1):
    g = torch.Generator().manual_seed(generator_seed)
    return [(torch.randn(batch, heads, length, dim_head, generator=g),
             torch.randn(batch, heads, length, dim_head, generator=g)) for _ in range(pairs)]


@pytest.mark.parametrize("kind", ["encoder", "decoder"])
@pytest.mark.parametrize("options", [dict(), dict(attn_kv_heads=2), dict(attn_num_mem_kv=2, attn_add_zero_kv=True),
                                     dict(residual_attn=True), dict(rotary_pos_emb=True)],
                         ids=["plain", "gqa", "mem-kv-zero-kv", "residual-attn", "rotary"])
@pytest.mark.parametrize("heads_given", [4, 1])
@pytest.mark.parametrize("route", [True, False])
@pytest.mark.parametrize("pairs", [1, 2, 3])
def test_additional_key_values(kind, options, heads_given, route, pairs):
    torch.manual_seed(0)
    ours, theirs = make_pair(kind, **LAYERS, **options)
    x, mask = torch.randn(3, 6, 24, requires_grad=True), random_mask(3, 6)
    kv = additional_kv(3, heads_given, 4, 8, pairs)
    kv_mask = torch.rand(3, 4) > 0.4
    kv_mask[1] = False  # fully masked additional keys, over a fully masked row too
    kwargs = dict(self_attn_additional_kv=kv, route_additional_kv_to_top=route, additional_kv_mask=kv_mask)
    if options.get("residual_attn") and pairs < 2:
        # Each layer adds the previous one's scores (x-transformers fails on the shapes): refused by name.
        with pytest.raises(ValueError, match="with residual_attn needs a pair of one length"):
            ours(x, mask=mask, **kwargs)
        return
    out, expected = ours(x, mask=mask, **kwargs), theirs(x, mask=mask, **kwargs)
    assert_close(out, expected)
    assert_parameter_grads_close(ours, theirs, out, expected)
    # Without their mask, and without the sequence's mask: every combination of the two.
    assert_close(ours(x, self_attn_additional_kv=kv, route_additional_kv_to_top=route),
                 theirs(x, self_attn_additional_kv=kv, route_additional_kv_to_top=route))
    assert_close(ours(x, self_attn_additional_kv=kv, additional_kv_mask=kv_mask),
                 theirs(x, self_attn_additional_kv=kv, additional_kv_mask=kv_mask))


def test_additional_key_values_from_another_stacks_cache_and_detached():
    torch.manual_seed(0)
    ours, theirs = make_pair("decoder", **LAYERS)
    vlm_ours, vlm_theirs = make_pair("encoder", **LAYERS)
    prefix = torch.randn(2, 5, 24, requires_grad=True)
    (_, inter_ours), (_, inter_theirs) = (vlm(prefix, return_hiddens=True) for vlm in (vlm_ours, vlm_theirs))
    x = torch.randn(2, 6, 24)
    out = ours(x, self_attn_additional_kv=inter_ours, detach_additional_kv=True)
    expected = theirs(x, self_attn_additional_kv=inter_theirs, detach_additional_kv=True)
    assert_close(out, expected)
    out.sum().backward()
    assert prefix.grad is None  # detached: nothing flows back into the other model
    out = ours(x, self_attn_additional_kv=inter_ours)
    out.sum().backward()
    assert prefix.grad is not None and prefix.grad.abs().sum() > 0


def test_additional_key_values_with_cached_decoding():
    torch.manual_seed(0)
    ours, theirs = make_pair("decoder", **LAYERS)
    ours.eval(), theirs.eval()
    kv = additional_kv(2, 4, 3, 8, 2)
    x = torch.randn(2, 7, 24)
    full = theirs(x, self_attn_additional_kv=kv)
    _, cache = ours(x[:, :5], self_attn_additional_kv=kv, return_hiddens=True)
    for i in range(5, 7):
        step, cache = ours(x[:, :i + 1], cache=cache, self_attn_additional_kv=kv, return_hiddens=True)
        assert_close(step[:, -1], full[:, i])


@pytest.mark.parametrize("bad, match", [
    (dict(self_attn_additional_kv=[(torch.randn(2, 3, 4, 8), torch.randn(2, 3, 4, 8))]), "kv heads dividing 4"),
    (dict(self_attn_additional_kv=[(torch.randn(2, 4, 4, 8), torch.randn(2, 4, 5, 8))]), "pair 0"),
    (dict(self_attn_additional_kv=[(torch.randn(2, 4, 4, 8), torch.randn(2, 4, 4, 8))],
          additional_kv_mask=torch.ones(2, 3, dtype=torch.bool)), "additional_kv_mask of shape"),
    (dict(self_attn_additional_kv=[torch.randn(2, 4, 4, 8)]), "tensor pairs"),
    (dict(self_attn_kv_residuals=torch.randn(2, 6, 23)), "self_attn_kv_residuals of shape"),
    (dict(cross_attn_kv_residuals=torch.randn(2, 6, 24)), "cross_attn_kv_residuals needs"),
    (dict(repeat_blocks=((0, 2), 2)), "repeat_blocks groups"),
    (dict(repeat_blocks=(0, 2), layers_execute_order=(0, 1)), "cannot pass both"),
])
def test_bad_forward_arguments_are_refused_by_name(bad, match):
    ours, _ = make_pair("encoder", **LAYERS)
    with pytest.raises((ValueError, TypeError), match=match):
        ours(torch.randn(2, 6, 24), **bad)


def test_additional_key_values_refused_with_position_biases():
    ours, _ = make_pair("encoder", **LAYERS, alibi_pos_bias=True)
    with pytest.raises(ValueError, match="self_attn_additional_kv cannot be combined with alibi_pos_bias"):
        ours(torch.randn(2, 6, 24), self_attn_additional_kv=additional_kv(2, 4, 3, 8, 1))


@pytest.mark.parametrize("kind", ["encoder", "decoder"])
@pytest.mark.parametrize("per_layer", [False, True])
def test_kv_residuals(kind, per_layer):
    torch.manual_seed(0)
    ours, theirs = make_pair(kind, **LAYERS, cross_attend=True, cross_attn_dim_context=16)
    x, context = torch.randn(2, 6, 24, requires_grad=True), torch.randn(2, 5, 16)
    mask = random_mask(2, 6)
    lead = (2,) if per_layer else ()  # two layers of each kind: both get one, else the first only
    self_res = torch.randn(*lead, 2, 6, 24, requires_grad=True)
    cross_res = torch.randn(*lead, 2, 5, 16, requires_grad=True)
    kwargs = dict(context=context, self_attn_kv_residuals=self_res, cross_attn_kv_residuals=cross_res)
    out, expected = ours(x, mask=mask, **kwargs), theirs(x, mask=mask, **kwargs)
    assert_close(out, expected)
    assert_parameter_grads_close(ours, theirs, out, expected)
    out, expected = ours(x, mask=mask, **kwargs), theirs(x, mask=mask, **kwargs)
    grad = torch.randn_like(out)
    got = torch.autograd.grad(out, (x, self_res, cross_res), grad)
    want = torch.autograd.grad(expected, (x, self_res, cross_res), grad)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, atol=1e-4, rtol=0)


@pytest.mark.parametrize("kind", ["encoder", "decoder"])
@pytest.mark.parametrize("depth", [2, 3], ids=["every_ff", "past_the_table"])
def test_deep_embeds_and_ids(kind, depth):
    # A table of depth rows per token: with depth 3 over a 2-block stack the third row goes unread.
    torch.manual_seed(0)
    ours, theirs = make_pair(kind, **LAYERS)
    x, mask = torch.randn(2, 7, 24), random_mask(2, 7)
    table = (1 + 0.5 * torch.randn(11, depth, 24)).requires_grad_()
    ids = torch.randint(0, 11, (2, 7))
    out = ours(x, mask=mask, deep_embeds_and_ids=(table, ids))
    expected = theirs(x, mask=mask, deep_embeds_and_ids=(table, ids))
    assert_close(out, expected)
    assert_parameter_grads_close(ours, theirs, out, expected)
    out, expected = [m(x, mask=mask, deep_embeds_and_ids=(table, ids)) for m in (ours, theirs)]
    grad = torch.randn_like(out)
    torch.testing.assert_close(torch.autograd.grad(out, table, grad)[0],
                               torch.autograd.grad(expected, table, grad)[0], atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match="ff_output_scales of shape"):
        ours(x, deep_embeds_and_ids=(table, ids[:, :5]))


@pytest.mark.parametrize("options", [dict(attn_gumbel_softmax=True), dict()], ids=["gumbel", "softmax"])
def test_return_gumbel_log_probs(options):
    torch.manual_seed(1)
    ours, theirs = make_pair("decoder", **LAYERS, **options)
    ours.eval(), theirs.eval()
    x = torch.randn(2, 6, 24)
    torch.manual_seed(2)  # the same Gumbel noise
    _, inter = ours(x, return_gumbel_log_probs=True)
    torch.manual_seed(2)
    _, their_inter = theirs(x, return_gumbel_log_probs=True)
    for mine, reference in zip(inter.attn_intermediates, their_inter.attn_intermediates):
        assert mine.log_probs.shape == (2, 4, 6)
        assert_close(mine.log_probs, reference.log_probs)
    flash, _ = make_pair("decoder", **LAYERS, attn_flash=True)
    with pytest.raises(ValueError, match="attn_flash=True does not keep"):
        flash(x, return_gumbel_log_probs=True)


@pytest.mark.parametrize("kind", ["encoder", "decoder"])
@pytest.mark.parametrize("repeat_blocks", [((0, 1), 2), (1, 3), (((0, 1), 2), (2, 0)), ((1, 2), 2)],
                         ids=["all-twice", "one-block-thrice", "with-zero-repeats", "middle"])
def test_repeat_blocks_per_call(kind, repeat_blocks):
    torch.manual_seed(0)
    ours, theirs = make_pair(kind, **dict(LAYERS, depth=3))
    x = torch.randn(2, 6, 24, requires_grad=True)
    out, expected = ours(x, repeat_blocks=repeat_blocks), theirs(x, repeat_blocks=repeat_blocks)
    assert_close(out, expected)
    assert_parameter_grads_close(ours, theirs, out, expected)


def test_repeat_blocks_refused_with_custom_layers():
    ours, _ = make_pair("encoder", dim=24, heads=4, attn_dim_head=8, custom_layers=("a", "f", "a", "f"))
    with pytest.raises(ValueError, match="repeat_blocks is only supported for the default block layout"):
        ours(torch.randn(2, 6, 24), repeat_blocks=(0, 2))


def tokens_pair(layer_kwargs, **kwargs):
    torch.manual_seed(0)
    ours, theirs = same_weights(lambda: TransformerWrapper(attn_layers=Decoder(**layer_kwargs), num_tokens=40, **kwargs),
                                lambda: XTokens(attn_layers=XDecoder(**layer_kwargs), num_tokens=40, **kwargs))
    return ours.eval(), theirs.eval()


@pytest.mark.parametrize("positions", ["abs-pos", "rotary"])
@pytest.mark.parametrize("at_construction", [False, True])
def test_input_not_include_cache_decodes_from_new_tokens_only(positions, at_construction):
    layers = dict(LAYERS, rotary_pos_emb=positions == "rotary")
    extra = dict(input_not_include_cache=True) if at_construction else {}
    ours, theirs = tokens_pair(layers, max_seq_len=16, **extra)
    call = {} if at_construction else dict(input_not_include_cache=True)
    tokens = torch.randint(0, 40, (2, 9))
    with torch.no_grad():
        full = theirs(tokens)
        logits, cache = ours(tokens[:, :5], return_intermediates=True)
        assert_close(logits, full[:, :5])
        for i in range(5, 9):
            step, cache = ours(tokens[:, i:i + 1], cache=cache, return_intermediates=True, **call)
            assert_close(step[:, -1], full[:, i])
        # x-transformers' own call with the same cache, step by step.
        _, their_cache = theirs(tokens[:, :5], return_intermediates=True)
        _, our_cache = ours(tokens[:, :5], return_intermediates=True)
        for i in range(5, 9):
            want, their_cache = theirs(tokens[:, i:i + 1], cache=their_cache, return_intermediates=True,
                                       input_not_include_cache=True)
            got, our_cache = ours(tokens[:, i:i + 1], cache=our_cache, return_intermediates=True, **call)
            assert_close(got, want)


@pytest.mark.parametrize("options", [dict(rotary_pos_emb=True), dict(rel_pos_bias=True), dict()],
                         ids=["rotary", "t5-bias", "plain"])
def test_cached_decoding_beside_transformer_xl_memories(options):
    # x-transformers' XL generation: the memories stay in front of the cached keys, which exclude them.
    torch.manual_seed(0)
    ours, theirs = make_pair("decoder", **LAYERS, **options)
    ours.eval(), theirs.eval()
    x = torch.randn(2, 7, 24)
    mems = [torch.randn(2, 4, 24) for _ in range(2)]
    mem_masks = [torch.rand(2, 4) > 0.3 for _ in range(2)]
    for masks in (None, mem_masks):
        full = theirs(x, mems=mems, mem_masks=masks)
        assert_close(ours(x, mems=mems, mem_masks=masks), full)
        _, cache = ours(x[:, :4], mems=mems, mem_masks=masks, return_hiddens=True)
        assert cache.attn_intermediates[0].cached_kv[0].shape[2] == 4  # the memories are not cached
        for i in range(4, 7):
            step, cache = ours(x[:, :i + 1], mems=mems, mem_masks=masks, cache=cache, return_hiddens=True)
            assert_close(step[:, -1], full[:, i])


@pytest.mark.parametrize("prefix", [3, "per-sequence"])
def test_prefix_decoder_matches_x_transformers(prefix):
    from x_transformers import PrefixDecoder as XPrefixDecoder
    from x_transformers_cpp import PrefixDecoder
    torch.manual_seed(0)
    theirs = XPrefixDecoder(**LAYERS)
    theirs.load_state_dict({k: v + torch.randn_like(v) * 0.1 for k, v in theirs.state_dict().items()})
    ours = PrefixDecoder(**LAYERS)
    ours.load_state_dict(theirs.state_dict(), strict=True)
    x = torch.randn(3, 7, 24, requires_grad=True)
    prefix_attn_len = prefix if isinstance(prefix, int) else torch.tensor([0, 2, 7])
    out, expected = ours(x, prefix_attn_len=prefix_attn_len), theirs(x, prefix_attn_len=prefix_attn_len)
    assert_close(out, expected)
    assert_parameter_grads_close(ours, theirs, out, expected)
    band = torch.ones(7, 7, dtype=torch.bool).tril()  # with a further attn_mask
    assert_close(ours(x, prefix_attn_len=prefix_attn_len, attn_mask=band),
                 theirs(x, prefix_attn_len=prefix_attn_len, attn_mask=band))
