"""x-transformers' own AutoregressiveWrapper over our TransformerWrapper, against the same wrapper over x-transformers'
TransformerWrapper with the same weights: the training loss and its gradients, and generation with a fixed seed
token for token (with and without the kv cache, filters, temperature, past max_seq_len with rotary)."""
import random

import pytest
import torch
from x_transformers import AutoregressiveWrapper
from x_transformers import Decoder as XDecoder
from x_transformers import TransformerWrapper as XTokens

from test_transformer_wrapper import make_pair
from x_transformers_cpp import Decoder, TransformerWrapper
from xtc_testing import same_weights

LAYERS = dict(dim=32, depth=2, heads=4, attn_dim_head=16)
NETS = {
    "abs-pos": (dict(max_seq_len=32), LAYERS),
    "rotary": (dict(max_seq_len=16, use_abs_pos_emb=False), dict(LAYERS, rotary_pos_emb=True)),
    "alibi-gqa": (dict(max_seq_len=32, use_abs_pos_emb=False), dict(LAYERS, alibi_pos_bias=True, attn_kv_heads=2)),
}


def assert_loss_and_gradients_match(ours, theirs, loss, expected):
    """The two losses within 1e-5, every parameter's gradient within 1e-4 (scaled by its size)."""
    torch.testing.assert_close(loss, expected, atol=1e-5, rtol=0)
    got = torch.autograd.grad(loss, list(ours.parameters()))
    want = torch.autograd.grad(expected, list(theirs.parameters()))
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, atol=1e-4 * max(1.0, w.abs().max().item()), rtol=0)


def wrapped_pair(name):
    torch.manual_seed(0)
    kwargs, layers = NETS[name]
    ours, theirs = make_pair(kwargs, (Decoder, XDecoder), layers)
    return AutoregressiveWrapper(ours), AutoregressiveWrapper(theirs)


@pytest.mark.parametrize("name", NETS)
def test_training_loss_and_gradients_match(name):
    ours, theirs = wrapped_pair(name)
    tokens = torch.randint(0, 50, (3, 14))
    loss, expected = ours(tokens), theirs(tokens)
    assert_loss_and_gradients_match(ours, theirs, loss, expected)


@pytest.mark.parametrize("name", NETS)
@pytest.mark.parametrize("cache_kv", [True, False])
@pytest.mark.parametrize("sampling", [dict(), dict(temperature=0.0), dict(filter_kwargs=dict(k=5), temperature=0.7)],
                         ids=["default", "greedy", "top-k"])
def test_generation_matches_token_for_token(name, cache_kv, sampling):
    ours, theirs = wrapped_pair(name)
    ours.eval(), theirs.eval()
    prompt = torch.randint(0, 50, (2, 5))
    length = 20 if name == "rotary" else 9  # rotary: past max_seq_len (16), where the cache slides
    results = []
    for wrapper in (ours, theirs):
        torch.manual_seed(1)
        with torch.no_grad():
            results.append(wrapper.generate(prompt, length, cache_kv=cache_kv, **sampling))
    assert results[0].shape == (2, length)
    assert torch.equal(results[0], results[1])


def test_wrapper_attributes_are_x_transformers():
    ours, theirs = wrapped_pair("abs-pos")
    for name in ("max_seq_len", "can_cache_kv", "can_cache_kv_outside_max_seq_len", "looped", "output_is_log_prob",
                 "add_continuous_pred_head", "num_tokens", "emb_dim", "num_memory_tokens"):
        assert getattr(ours.net, name) == getattr(theirs.net, name), name
    for name in ("dim", "depth", "causal", "attn_heads", "attn_dim_head", "can_cache_kv"):
        assert getattr(ours.net.attn_layers, name) == getattr(theirs.net.attn_layers, name), name


def test_unsupported_forward_arguments_are_refused_by_name():
    net = TransformerWrapper(num_tokens=50, max_seq_len=16, attn_layers=Decoder(**LAYERS))
    tokens = torch.randint(0, 50, (2, 7))
    net(tokens, recycle_steps=None, prepend_embeds=None, seq_start_pos=None, looped_pred_all_logits=True)
    with pytest.raises(ValueError, match="recycle_steps need a wrapper built with recycling"):
        net(tokens, recycle_steps=2)
    with pytest.raises(TypeError, match="transform_token_embeds"):
        net(tokens, transform_token_embeds=lambda t: t)
    with pytest.raises(TypeError, match="not_an_argument"):
        net(tokens, not_an_argument=1)


def their_wrapper_pair(wrapper_cls, layers_classes, layer_kwargs, **wrapper_kwargs):
    """x-transformers' own wrapper class around our stack and around x-transformers' stack, same weights."""
    torch.manual_seed(0)
    return same_weights(lambda: wrapper_cls(attn_layers=layers_classes[0](**layer_kwargs), **wrapper_kwargs),
                        lambda: wrapper_cls(attn_layers=layers_classes[1](**layer_kwargs), **wrapper_kwargs))


@pytest.mark.parametrize("layers", [LAYERS, dict(LAYERS, rotary_pos_emb=True), dict(LAYERS, alibi_pos_bias=True)],
                         ids=["abs-pos", "rotary", "alibi"])
def test_their_transformer_wrapper_over_our_decoder(layers):
    from x_transformers import TransformerWrapper as XWrapper
    mixed, theirs = their_wrapper_pair(XWrapper, (Decoder, XDecoder), layers, num_tokens=50, max_seq_len=32)
    tokens = torch.randint(0, 50, (3, 13))
    mask = torch.rand(3, 13) > 0.2
    mask[:, 0] = True
    out, expected = mixed(tokens, mask=mask), theirs(tokens, mask=mask)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)
    got = torch.autograd.grad(out.sum(), list(mixed.parameters()))
    want = torch.autograd.grad(expected.sum(), list(theirs.parameters()))
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, atol=1e-4 * max(1.0, w.abs().max().item()), rtol=0)
    results = []
    for wrapper in (AutoregressiveWrapper(mixed).eval(), AutoregressiveWrapper(theirs).eval()):
        torch.manual_seed(2)
        with torch.no_grad():
            results.append(wrapper.generate(tokens[:, :4], 9))
    assert torch.equal(results[0], results[1])


def test_their_vit_wrapper_over_our_encoder():
    from x_transformers import Encoder as XEncoder, ViTransformerWrapper
    from x_transformers_cpp import Encoder
    mixed, theirs = their_wrapper_pair(ViTransformerWrapper, (Encoder, XEncoder), LAYERS, image_size=32,
                                       patch_size=8, num_classes=10)
    images = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(mixed(images), theirs(images), atol=1e-5, rtol=0)


def test_stack_refuses_unimplemented_x_transformers_arguments_by_name():
    stack = Decoder(**LAYERS)
    x = torch.randn(2, 5, 32)
    stack(x, seq_pos_offset=0, input_not_include_cache=False, deep_embeds_and_ids=None, causal=None)
    with pytest.raises(ValueError, match="condition was passed in, but no adaptive norm"):
        stack(x, condition=torch.randn(2, 32))
    with pytest.raises(TypeError, match="transform_block_inputs"):
        stack(x, transform_block_inputs=lambda depth, t: t)
    with pytest.raises(TypeError, match="seq_pos_offset"):
        stack(x, seq_pos_offset=3)


@pytest.mark.parametrize("kind", ["decoder", "encoder"])
def test_causal_override_per_call(kind):
    from x_transformers import Encoder as XEncoder
    from x_transformers_cpp import Encoder
    ours_cls, theirs_cls = (Decoder, XDecoder) if kind == "decoder" else (Encoder, XEncoder)
    torch.manual_seed(0)
    theirs = theirs_cls(**LAYERS, alibi_pos_bias=True)
    theirs.load_state_dict({k: v + torch.randn_like(v) * 0.1 for k, v in theirs.state_dict().items()})
    ours = ours_cls(**LAYERS, alibi_pos_bias=True)
    ours.load_state_dict(theirs.state_dict())
    x, mask = torch.randn(2, 9, 32), torch.rand(2, 9) > 0.3
    mask[:, 0] = True
    for causal in (True, False):
        torch.testing.assert_close(ours(x, mask=mask, causal=causal), theirs(x, mask=mask, causal=causal),
                                   atol=1e-5, rtol=0)
    assert not torch.allclose(ours(x, causal=True), ours(x, causal=False), atol=1e-3)


@pytest.mark.parametrize("name", NETS)
@pytest.mark.parametrize("cache_kv", [True, False])
def test_generation_from_prompts_of_different_lengths(name, cache_kv):
    # prompt_lens: the prompts are left-padded, and AutoregressiveWrapper passes seq_start_pos to the wrapper, which
    # shifts each row's absolute positions and hides the padding keys.
    ours, theirs = wrapped_pair(name)
    ours.eval(), theirs.eval()
    prompt, prompt_lens = torch.randint(0, 50, (3, 6)), torch.tensor([6, 2, 4])
    results = []
    for wrapper in (ours, theirs):
        torch.manual_seed(1)
        with torch.no_grad():
            results.append(wrapper.generate(prompt, 7, prompt_lens=prompt_lens, cache_kv=cache_kv, temperature=0.0))
    assert torch.equal(results[0], results[1])


STACK_ARGUMENTS = {
    "context": (dict(cross_attend=True), lambda b, n: dict(context=torch.randn(b, 5, 32),
                                                            context_mask=torch.rand(b, 5) > 0.3)),
    "attn_mask": ({}, lambda b, n: dict(attn_mask=torch.rand(b, 1, n, n) > 0.3)),
    "pos-rotary": (dict(rotary_pos_emb=True), lambda b, n: dict(pos=torch.randint(0, 16, (b, n)).sort(-1).values)),
    "seq_start_pos": ({}, lambda b, n: dict(seq_start_pos=torch.tensor([0, 3, 1][:b]))),
    "causal-override": (dict(rotary_pos_emb=True), lambda b, n: dict(causal=False)),
}


@pytest.mark.parametrize("name", STACK_ARGUMENTS)
def test_wrappers_pass_the_stack_arguments_on(name):
    from x_transformers import ContinuousTransformerWrapper as XContinuous
    from x_transformers_cpp import ContinuousTransformerWrapper
    layer_options, arguments = STACK_ARGUMENTS[name]
    torch.manual_seed(0)
    tokens_pair = their_wrapper_pair(lambda attn_layers, **kw: (TransformerWrapper if isinstance(attn_layers, Decoder)
                                                                else XTokens)(attn_layers=attn_layers, **kw),
                                     (Decoder, XDecoder), dict(LAYERS, **layer_options), num_tokens=50,
                                     max_seq_len=16)
    continuous_pair = their_wrapper_pair(lambda attn_layers, **kw: (
        ContinuousTransformerWrapper if isinstance(attn_layers, Decoder) else XContinuous)(attn_layers=attn_layers,
                                                                                          **kw),
        (Decoder, XDecoder), dict(LAYERS, **layer_options), dim_in=12, max_seq_len=16)
    kwargs = arguments(3, 9)
    # Left padding: the positions before each row's start see no key (its own is hidden, later ones are in the
    # future), where x-transformers averages every value and we give 0 (the README's fully masked rows).
    keep = (torch.arange(9)[None] >= kwargs["seq_start_pos"][:, None] if "seq_start_pos" in kwargs
            else torch.ones(3, 9, dtype=torch.bool))
    for (ours, theirs), x in ((tokens_pair, torch.randint(0, 50, (3, 9))), (continuous_pair, torch.randn(3, 9, 12))):
        out, expected = ours(x, **kwargs), theirs(x, **kwargs)
        torch.testing.assert_close(out[keep], expected[keep], atol=1e-5, rtol=0)


@pytest.mark.parametrize("tie_token_emb", [False, True])
def test_xtransformer_matches_x_transformers(tie_token_emb):
    from x_transformers import XTransformer as XXTransformer
    from x_transformers_cpp import XTransformer
    kwargs = dict(dim=32, enc_num_tokens=40, enc_depth=2, enc_heads=4, enc_attn_dim_head=8, enc_max_seq_len=16,
                  dec_num_tokens=40, dec_depth=2, dec_heads=4, dec_attn_dim_head=8, dec_max_seq_len=16,
                  dec_rotary_pos_emb=True, tie_token_emb=tie_token_emb)
    torch.manual_seed(0)
    theirs, ours = XXTransformer(**kwargs), XTransformer(**kwargs)
    assert list(ours.state_dict()) == list(theirs.state_dict())
    theirs.load_state_dict({k: v + torch.randn_like(v) * 0.1 for k, v in theirs.state_dict().items()})
    ours.load_state_dict(theirs.state_dict(), strict=True)
    src, tgt = torch.randint(0, 40, (2, 12)), torch.randint(0, 40, (2, 10))
    mask = torch.rand(2, 12) > 0.3
    mask[:, 0] = True
    loss, expected = ours(src, tgt, mask=mask), theirs(src, tgt, mask=mask)
    assert_loss_and_gradients_match(ours, theirs, loss, expected)
    prefix = torch.randn(2, 3, 32)
    torch.testing.assert_close(ours(src, tgt, mask=mask, src_prepend_embeds=prefix),
                               theirs(src, tgt, mask=mask, src_prepend_embeds=prefix), atol=1e-5, rtol=0)
    ours.eval(), theirs.eval()
    results = []
    for model in (ours, theirs):
        torch.manual_seed(3)
        results.append(model.generate(src, torch.ones(2, 1, dtype=torch.long), 8, mask=mask))
    assert torch.equal(results[0], results[1])


def test_their_continuous_autoregressive_wrapper_over_ours():
    from x_transformers import ContinuousAutoregressiveWrapper
    from x_transformers import ContinuousTransformerWrapper as XContinuous
    from x_transformers_cpp import ContinuousTransformerWrapper
    ours, theirs = their_wrapper_pair(
        lambda attn_layers, **kw: (ContinuousTransformerWrapper if isinstance(attn_layers, Decoder)
                                   else XContinuous)(attn_layers=attn_layers, **kw),
        (Decoder, XDecoder), LAYERS, dim_in=7, dim_out=7, max_seq_len=16)
    ours, theirs = ContinuousAutoregressiveWrapper(ours), ContinuousAutoregressiveWrapper(theirs)
    x = torch.randn(2, 10, 7)
    torch.testing.assert_close(ours(x), theirs(x), atol=1e-5, rtol=0)
    ours.eval(), theirs.eval()
    with torch.no_grad():
        torch.testing.assert_close(ours.generate(x[:, :3], 5), theirs.generate(x[:, :3], 5), atol=1e-5, rtol=0)


def tokens_wrapper_pair(layer_kwargs=LAYERS, classes=(Decoder, XDecoder), **kwargs):
    return their_wrapper_pair(lambda attn_layers, **kw: (TransformerWrapper if isinstance(attn_layers, classes[0])
                                                         else XTokens)(attn_layers=attn_layers, **kw),
                              classes, layer_kwargs, **kwargs)


@pytest.mark.parametrize("tie_embedding", [False, True])
def test_wrapper_extra_embeddings_and_returns(tie_embedding):
    ours, theirs = tokens_wrapper_pair(num_tokens=50, max_seq_len=16, post_emb_norm=True,
                                       tie_embedding=tie_embedding)
    tokens, mask = torch.randint(0, 50, (2, 7)), torch.rand(2, 7) > 0.3
    extra = dict(sum_embeds=torch.randn(2, 7, 32), prepend_embeds=torch.randn(2, 3, 32),
                 prepend_mask=torch.tensor([[True, False, True], [True, True, True]]))
    excised = ours(tokens, excise_prepend_embeds=True, **extra)
    torch.testing.assert_close(excised, theirs(tokens, excise_prepend_embeds=True, **extra), atol=1e-5, rtol=0)
    assert excised.shape == (2, 7, 50)
    for kwargs in (dict(extra, mask=mask), dict(sum_embeds=extra["sum_embeds"])):
        torch.testing.assert_close(ours(tokens, **kwargs), theirs(tokens, **kwargs), atol=1e-5, rtol=0)
        (logits, emb), (want_logits, want_emb) = (net(tokens, return_logits_and_embeddings=True, **kwargs)
                                                  for net in (ours, theirs))
        torch.testing.assert_close(logits, want_logits, atol=1e-5, rtol=0)
        torch.testing.assert_close(emb, want_emb, atol=1e-5, rtol=0)
        (emb, inter), (want_emb, want_inter) = (net(tokens, return_embeddings_and_intermediates=True, **kwargs)
                                                for net in (ours, theirs))
        torch.testing.assert_close(emb, want_emb, atol=1e-5, rtol=0)
        for got, want in zip(inter.hiddens, want_inter.hiddens):
            torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


@pytest.mark.parametrize("self_cond", [False, True])
def test_their_non_autoregressive_wrapper_over_ours(self_cond):
    from x_transformers import Encoder as XEncoder, NonAutoregressiveWrapper
    from x_transformers_cpp import Encoder
    ours, theirs = tokens_wrapper_pair(LAYERS, (Encoder, XEncoder), num_tokens=51, max_seq_len=16)
    torch.manual_seed(0)
    ours, theirs = (NonAutoregressiveWrapper(net, mask_id=50, steps=4, self_cond=self_cond) for net in (ours, theirs))
    theirs.load_state_dict(ours.state_dict(), strict=True) if self_cond else None
    tokens = torch.randint(0, 50, (2, 16))
    losses = []
    for wrapper in (ours, theirs):
        torch.manual_seed(1)
        random.seed(1)  # its coin flips draw from Python's generator
        losses.append(wrapper(tokens).loss)
    torch.testing.assert_close(losses[0], losses[1], atol=1e-5, rtol=0)
    results = []
    for wrapper in (ours.eval(), theirs.eval()):
        torch.manual_seed(2)
        random.seed(2)
        results.append(wrapper.generate(batch_size=2))
    assert torch.equal(results[0], results[1])


def test_their_belief_state_wrapper_over_ours():
    from x_transformers import BeliefStateWrapper
    ours, theirs = tokens_wrapper_pair(num_tokens=50, max_seq_len=16)
    torch.manual_seed(0)
    ours, theirs = BeliefStateWrapper(ours), BeliefStateWrapper(theirs)
    theirs.load_state_dict(ours.state_dict(), strict=True)
    tokens = torch.randint(0, 50, (2, 10))
    torch.testing.assert_close(ours(tokens), theirs(tokens), atol=1e-5, rtol=0)


@pytest.mark.parametrize("layer_options", [dict(rel_pos_bias=True), dict(rotary_pos_emb=True)],
                         ids=["t5-bias", "rotary"])
def test_their_xl_wrapper_over_ours(layer_options):
    # Transformer-XL training: segments of max_seq_len, each layer's hiddens carried as the next segment's memories.
    from x_transformers import XLAutoregressiveWrapper
    ours, theirs = tokens_wrapper_pair(dict(LAYERS, **layer_options), num_tokens=50, max_seq_len=8, max_mem_len=8,
                                       use_abs_pos_emb=False)
    assert ours.max_mem_len == theirs.max_mem_len == 8
    ours, theirs = XLAutoregressiveWrapper(ours), XLAutoregressiveWrapper(theirs)
    tokens = torch.randint(0, 50, (2, 29))
    loss, expected = ours(tokens), theirs(tokens)
    assert_loss_and_gradients_match(ours, theirs, loss, expected)
    # Generation matches token for token, within the first segment and past it, where the XL wrapper decodes only
    # the new tokens with a kv cache beside the memories (input_not_include_cache).
    for prompt, length in ((3, 4), (11, 9)):
        results = []
        for wrapper in (ours.eval(), theirs.eval()):
            torch.manual_seed(5)
            results.append(wrapper.generate(tokens[:, :prompt], length))
        assert torch.equal(results[0], results[1])


def test_return_mems_and_shift_mem_down():
    ours, theirs = tokens_wrapper_pair(dict(LAYERS, rel_pos_bias=True), num_tokens=50, max_seq_len=8, max_mem_len=5,
                                       shift_mem_down=1, use_abs_pos_emb=False)
    tokens = torch.randint(0, 50, (2, 8))
    mems = [torch.randn(2, 5, 32) for _ in range(2)]
    (out, new_mems), (want, want_mems) = (net(tokens, mems=mems, return_mems=True) for net in (ours, theirs))
    torch.testing.assert_close(out, want, atol=1e-5, rtol=0)
    for got, exp in zip(new_mems, want_mems):
        torch.testing.assert_close(got, exp, atol=1e-5, rtol=0)
        assert got.shape == (2, 5, 32) and not got.requires_grad


def test_return_attn_gives_the_attention_maps():
    ours, theirs = tokens_wrapper_pair(num_tokens=50, max_seq_len=16)
    tokens = torch.randint(0, 50, (2, 9))
    (out, maps), (want, want_maps) = (net(tokens, return_attn=True) for net in (ours, theirs))
    torch.testing.assert_close(out, want, atol=1e-5, rtol=0)
    assert len(maps) == len(want_maps) == 2
    for got, exp in zip(maps, want_maps):
        torch.testing.assert_close(got, exp, atol=1e-5, rtol=0)


def test_in_attn_cond_and_layers_execute_order_per_call():
    from x_transformers import Encoder as XEncoder
    from x_transformers_cpp import Encoder
    torch.manual_seed(0)
    for layer_kwargs in (dict(LAYERS), dict(LAYERS, learned_reinject_input_gate=True)):
        theirs = XEncoder(**layer_kwargs)
        theirs.load_state_dict({k: v + torch.randn_like(v) * 0.1 for k, v in theirs.state_dict().items()})
        ours = Encoder(**layer_kwargs)
        ours.load_state_dict(theirs.state_dict())
        x = torch.randn(2, 7, 32)
        for cond in (torch.randn(2, 32), torch.randn(2, 7, 32)):
            torch.testing.assert_close(ours(x, in_attn_cond=cond), theirs(x, in_attn_cond=cond), atol=1e-5, rtol=0)
        order = (0, 1, 0, 1, 2, 3)  # depth extrapolation: the first block twice
        torch.testing.assert_close(ours(x, layers_execute_order=order), theirs(x, layers_execute_order=order),
                                   atol=1e-5, rtol=0)
        _, inter = ours(x, layers_execute_order=order, return_hiddens=True)
        assert len(inter.attn_intermediates) == 3


def test_their_continuous_autoregressive_wrapper_over_a_probabilistic_one():
    from x_transformers import ContinuousAutoregressiveWrapper
    from x_transformers import ContinuousTransformerWrapper as XContinuous
    from x_transformers_cpp import ContinuousTransformerWrapper
    ours, theirs = their_wrapper_pair(
        lambda attn_layers, **kw: (ContinuousTransformerWrapper if isinstance(attn_layers, Decoder)
                                   else XContinuous)(attn_layers=attn_layers, **kw),
        (Decoder, XDecoder), LAYERS, dim_in=7, dim_out=7, max_seq_len=16, probabilistic=True)
    x = torch.randn(2, 10, 7)
    out, expected = ours(x), theirs(x)
    assert out.shape == (2, 2, 10, 7)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)
    ours, theirs = ContinuousAutoregressiveWrapper(ours), ContinuousAutoregressiveWrapper(theirs)
    torch.testing.assert_close(ours(x), theirs(x), atol=1e-5, rtol=0)
    ours.eval(), theirs.eval()
    results = []
    for wrapper in (ours, theirs):
        torch.manual_seed(4)
        with torch.no_grad():
            results.append(wrapper.generate(x[:, :3], 5))
    torch.testing.assert_close(results[0], results[1], atol=1e-5, rtol=0)


def test_their_dpo_entropy_tokenizer_and_next_latent_wrappers_over_ours():
    # DPO (a deep copy of the policy as reference), EntropyBasedTokenizer (logits' entropies) and NextLatentWrapper
    # (which calls the wrapper's token_emb and to_logits itself), with the same weights and seeds.
    from x_transformers import DPO, EntropyBasedTokenizer, NextLatentWrapper
    ours, theirs = tokens_wrapper_pair(num_tokens=50, max_seq_len=32)
    seq, other = torch.randint(1, 50, (2, 10)), torch.randint(1, 50, (2, 10))
    other[:, -2:] = 0  # padding, with pad_id 0
    prompt_mask = torch.zeros(2, 10, dtype=torch.bool)
    prompt_mask[:, :3] = True
    loss, expected = (DPO(net, pad_id=0)(seq, other, prompt_mask=prompt_mask) for net in (ours, theirs))
    torch.testing.assert_close(loss, expected, atol=1e-5, rtol=0)
    got, want = (EntropyBasedTokenizer(net, entropy_threshold=2.5)(seq) for net in (ours, theirs))
    assert all(torch.equal(g, w) for g, w in zip(got, want))
    results = []
    for net in (ours, theirs):
        torch.manual_seed(2)
        wrapper = NextLatentWrapper(net, dim=32)
        torch.manual_seed(3)
        results.append(wrapper(seq))
    torch.testing.assert_close(results[0], results[1], atol=1e-5, rtol=0)
    torch.testing.assert_close(ours.token_emb(seq), theirs.token_emb(seq), atol=0, rtol=0)


def test_their_xval_and_multi_input_wrappers_over_our_stacks():
    # x-transformers' own token wrappers that take an AttentionLayers: ours in its place, the same weights.
    from x_transformers import Decoder as TheirDecoder, MultiInputTransformerWrapper, XValTransformerWrapper
    builders = [
        (lambda stack: XValTransformerWrapper(num_tokens=20, numerical_token_id=19, max_seq_len=16,
                                              attn_layers=stack(**LAYERS)),
         lambda: (torch.randint(0, 20, (2, 10)), torch.randn(2, 10))),
        (lambda stack: MultiInputTransformerWrapper(num_tokens=dict(a=10, b=12), max_seq_len=16,
                                                    attn_layers=stack(**LAYERS)),
         lambda: (dict(a=torch.randint(0, 10, (2, 8)), b=torch.randint(0, 12, (2, 8))),)),
    ]
    for build, inputs in builders:
        torch.manual_seed(0)
        theirs, ours = build(TheirDecoder), build(Decoder)
        state = {k: v + torch.randn_like(v) * 0.1 for k, v in theirs.state_dict().items()}
        theirs.load_state_dict(state)
        ours.load_state_dict(state, strict=True)
        args = inputs()
        got, want = ours(*args), theirs(*args)
        got, want = (list(r.values()) if isinstance(r, dict) else list(r) for r in (got, want))
        for g, w in zip(got, want):
            torch.testing.assert_close(g, w, atol=1e-5, rtol=0)


def test_their_universal_pretrain_wrapper_trains_ours():
    # Its synthetic data differs run to run even under one seed (in x-transformers itself), so the loss over the
    # same data is compared, and its own forward runs.
    from x_transformers.up_wrapper import UniversalPretrainWrapper
    ours, theirs = tokens_wrapper_pair(num_tokens=20, max_seq_len=16)
    wrappers = [UniversalPretrainWrapper(net, batch_size=2, seq_len=12, buffer_size=4, num_reset=2)
                for net in (ours, theirs)]
    data = torch.randint(0, 20, (2, 12))
    torch.testing.assert_close(wrappers[0].ar_wrapped(data), wrappers[1].ar_wrapped(data), atol=1e-5, rtol=0)
    loss = wrappers[0]()
    loss.backward()
    assert torch.isfinite(loss) and ours.token_emb.emb.weight.grad is not None
