"""TransformerWrapper's embedding, memory and head research options against the pinned x-transformers:
emb_frac_gradient (the embeddings' gradient scaled, the values not), embed_num_tokens with embed_ids, interspersed
memory tokens, num_output_heads (a tuple of logits) and mixture_of_softmax (with its k, and sigsoftmax); same weights,
a padding mask where x-transformers takes one, outputs within 1e-5 and every gradient within 1e-4, and x-transformers'
AutoregressiveWrapper training over them."""
import pytest
import torch
from x_transformers import AutoregressiveWrapper
from x_transformers import Decoder as XDecoder
from x_transformers import TransformerWrapper as XTransformerWrapper

from x_transformers_cpp import Decoder, TransformerWrapper
from xtc_testing import assert_parameter_grads_close, random_mask, same_weights

LAYERS = dict(dim=16, depth=2, heads=2, attn_dim_head=8)
CASES = {
    "emb_frac_gradient": dict(emb_frac_gradient=0.3),
    "emb_frac_gradient_prepend_norm": dict(emb_frac_gradient=0.1, post_emb_norm=True, emb_dim=12),
    "three_heads": dict(num_output_heads=3, logits_dim=7),
    "mixture": dict(mixture_of_softmax=True),
    "mixture_k2_sigsoftmax": dict(mixture_of_softmax=True, mixture_of_softmax_k=2, sigsoftmax_logits=True),
    "mixture_tied": dict(mixture_of_softmax=True, tie_embedding=True),
}


def _pair(**kwargs):
    torch.manual_seed(0)
    return same_weights(
        lambda: TransformerWrapper(num_tokens=20, max_seq_len=16, attn_layers=Decoder(**LAYERS), **kwargs),
        lambda: XTransformerWrapper(num_tokens=20, max_seq_len=16, attn_layers=XDecoder(**LAYERS), **kwargs))


@pytest.mark.parametrize("kwargs", CASES.values(), ids=CASES.keys())
def test_head_option_matches_x_transformers(kwargs):
    ours, theirs = _pair(**kwargs)
    tokens, mask = torch.randint(0, 20, (3, 9)), random_mask(3, 9)
    out, expected = ours(tokens, mask=mask), theirs(tokens, mask=mask)
    if kwargs.get("num_output_heads", 1) > 1:
        assert isinstance(out, tuple) and len(out) == len(expected) == kwargs["num_output_heads"]
        out, expected = torch.stack(out), torch.stack(expected)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)
    assert_parameter_grads_close(ours, theirs, out, expected)
    assert ours.output_is_log_prob == theirs.output_is_log_prob


def test_emb_frac_gradient_scales_the_embeddings_gradient_only():
    torch.manual_seed(1)
    plain = TransformerWrapper(num_tokens=20, max_seq_len=16, attn_layers=Decoder(**LAYERS))
    scaled = TransformerWrapper(num_tokens=20, max_seq_len=16, attn_layers=Decoder(**LAYERS), emb_frac_gradient=0.25)
    scaled.load_state_dict(plain.state_dict())
    tokens = torch.randint(0, 20, (2, 6))
    out, out_scaled = plain(tokens), scaled(tokens)
    torch.testing.assert_close(out, out_scaled, atol=0, rtol=0)
    grad = torch.randn_like(out)
    g, = torch.autograd.grad(out, [plain.token_emb.emb.weight], grad)
    g_scaled, = torch.autograd.grad(out_scaled, [scaled.token_emb.emb.weight], grad)
    torch.testing.assert_close(g_scaled, g * 0.25, atol=1e-6, rtol=1e-5)


def test_autoregressive_wrapper_trains_over_the_mixture():
    ours, theirs = _pair(mixture_of_softmax=True)
    seq = torch.randint(0, 20, (2, 10))
    torch.manual_seed(2)
    loss = AutoregressiveWrapper(ours)(seq)
    torch.manual_seed(2)
    expected = AutoregressiveWrapper(theirs)(seq)
    torch.testing.assert_close(loss, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("kwargs,message", [
    (dict(num_output_heads=2, tie_embedding=True), "num_output_heads > 1 clashes"),
    (dict(mixture_of_softmax=True, return_only_embed=True), "needs logits"),
    (dict(mixture_of_softmax_k=3), "x-transformers would ignore it"),
    (dict(emb_frac_gradient=0.0), "emb_frac_gradient in \\(0, 1\\]"),
], ids=["heads_tied", "mixture_no_logits", "k_alone", "frac_zero"])
def test_bad_head_options_name_them(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TransformerWrapper(num_tokens=20, max_seq_len=16, attn_layers=Decoder(**LAYERS), **kwargs)


def test_mixture_has_no_embeddings_to_return():
    ours, _ = _pair(mixture_of_softmax=True)
    with pytest.raises(ValueError, match="expanded to the mixture"):
        ours(torch.randint(0, 20, (1, 4)), return_embeddings=True)


@pytest.mark.parametrize("sum_embeds", [False, True], ids=["alone", "with_sum_embeds"])
def test_embed_num_tokens_matches_x_transformers(sum_embeds):
    ours, theirs = _pair(embed_num_tokens=dict(type=3, segment=5), post_emb_norm=True)
    assert [k for k in ours.state_dict() if k.startswith("embeds.")] == ["embeds.type_embed.weight",
                                                                         "embeds.segment_embed.weight"]
    tokens, mask = torch.randint(0, 20, (3, 9)), random_mask(3, 9)
    ids = dict(segment=torch.randint(0, 5, (3, 9)), type=torch.randint(0, 3, (3, 9)))
    extra = dict(sum_embeds=torch.randn(3, 9, 16)) if sum_embeds else {}
    out = ours(tokens, mask=mask, embed_ids=ids, **extra)
    expected = theirs(tokens, mask=mask, embed_ids=ids, **extra)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)
    assert_parameter_grads_close(ours, theirs, out, expected)


def test_embed_ids_must_match_the_tables():
    ours, _ = _pair(embed_num_tokens=dict(type=3))
    tokens = torch.randint(0, 20, (1, 4))
    with pytest.raises(ValueError, match="exactly the embed_num_tokens names"):
        ours(tokens)
    with pytest.raises(ValueError, match=r"embed_ids 'type' in \[0, 3\)"):
        ours(tokens, embed_ids=dict(type=torch.full((1, 4), 3)))
    with pytest.raises(ValueError, match="of the tokens' shape"):
        ours(tokens, embed_ids=dict(type=torch.zeros(1, 3, dtype=torch.long)))


@pytest.mark.parametrize("every,length", [(3, 9), (4, 10), (5, 3)], ids=["divides", "pads", "one_chunk"])
def test_interspersed_memory_tokens_match_x_transformers(every, length):
    ours, theirs = _pair(num_memory_tokens=2, memory_tokens_interspersed_every=every)
    tokens = torch.randint(0, 20, (2, length))
    out, expected = ours(tokens), theirs(tokens)
    assert out.shape == (2, length, 20)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)
    assert_parameter_grads_close(ours, theirs, out, expected)


def test_interspersed_memory_tokens_refuse_a_mask():
    ours, _ = _pair(num_memory_tokens=2, memory_tokens_interspersed_every=3)
    with pytest.raises(ValueError, match="no mask or prepend_embeds"):
        ours(torch.randint(0, 20, (1, 4)), mask=torch.ones(1, 4, dtype=torch.bool))
