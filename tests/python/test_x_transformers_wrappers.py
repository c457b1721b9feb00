"""x-transformers' own AutoregressiveWrapper over our TransformerWrapper, against the same wrapper over x-transformers'
TransformerWrapper with the same weights: the training loss and its gradients, and generation with a fixed seed
token for token (with and without the kv cache, filters, temperature, past max_seq_len with rotary)."""
import pytest
import torch
from x_transformers import AutoregressiveWrapper
from x_transformers import Decoder as XDecoder

from test_transformer_wrapper import make_pair
from x_transformers_cpp import Decoder, TransformerWrapper

LAYERS = dict(dim=32, depth=2, heads=4, attn_dim_head=16)
NETS = {
    "abs-pos": (dict(max_seq_len=32), LAYERS),
    "rotary": (dict(max_seq_len=16, use_abs_pos_emb=False), dict(LAYERS, rotary_pos_emb=True)),
    "alibi-gqa": (dict(max_seq_len=32, use_abs_pos_emb=False), dict(LAYERS, alibi_pos_bias=True, attn_kv_heads=2)),
}


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
    torch.testing.assert_close(loss, expected, atol=1e-5, rtol=0)
    got = torch.autograd.grad(loss, list(ours.parameters()))
    want = torch.autograd.grad(expected, list(theirs.parameters()))
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, atol=1e-4 * max(1.0, w.abs().max().item()), rtol=0)


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
    net(tokens, return_attn_z_loss=False, prepend_embeds=None, seq_start_pos=None, looped_pred_all_logits=True)
    with pytest.raises(TypeError, match="seq_start_pos"):
        net(tokens, seq_start_pos=torch.tensor([0, 2]))
    with pytest.raises(TypeError, match="prepend_embeds"):
        net(tokens, prepend_embeds=torch.randn(2, 3, 32))
    with pytest.raises(TypeError, match="not_an_argument"):
        net(tokens, not_an_argument=1)


def their_wrapper_pair(wrapper_cls, layers_classes, layer_kwargs, **wrapper_kwargs):
    """x-transformers' own wrapper class around our stack and around x-transformers' stack, same weights."""
    torch.manual_seed(0)
    theirs = wrapper_cls(attn_layers=layers_classes[1](**layer_kwargs), **wrapper_kwargs)
    theirs.load_state_dict({k: v + torch.randn_like(v) * 0.1 for k, v in theirs.state_dict().items()})
    mixed = wrapper_cls(attn_layers=layers_classes[0](**layer_kwargs), **wrapper_kwargs)
    assert list(mixed.state_dict().keys()) == list(theirs.state_dict().keys())
    mixed.load_state_dict(theirs.state_dict(), strict=True)
    return mixed, theirs


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
    with pytest.raises(TypeError, match="condition"):
        stack(x, condition=torch.randn(2, 8))
    with pytest.raises(TypeError, match="layers_execute_order"):
        stack(x, layers_execute_order=(0, 1, 0, 1))
    with pytest.raises(TypeError, match="seq_pos_offset"):
        stack(x, seq_pos_offset=3)
