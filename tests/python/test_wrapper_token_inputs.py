"""What TransformerWrapper takes as its tokens, against the pinned x-transformers: token ids in any integer dtype
or as floats holding integers (its embedding reads x.long()), x=None with prepend_embeds alone (the prefix as the
whole sequence, as its BeliefStateWrapper generates), and prepend_embeds beside the decoding cache."""
import pytest
import torch
from x_transformers import Decoder as XDecoder
from x_transformers import TransformerWrapper as XTransformerWrapper

from x_transformers_cpp import Decoder, TransformerWrapper
from xtc_testing import same_weights

LAYERS = dict(dim=16, depth=2, heads=2, attn_dim_head=8)
WRAPPER = dict(num_tokens=20, max_seq_len=16)


def _pair(**layer_kwargs):
    torch.manual_seed(0)
    return same_weights(lambda: TransformerWrapper(**WRAPPER, attn_layers=Decoder(**LAYERS, **layer_kwargs)),
                        lambda: XTransformerWrapper(**WRAPPER, attn_layers=XDecoder(**LAYERS, **layer_kwargs)))


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.int16, torch.uint8, torch.float32, torch.float64])
def test_token_ids_in_any_dtype_x_transformers_takes(dtype):
    ours, theirs = _pair()
    tokens = torch.randint(0, 20, (2, 7)).to(dtype)
    torch.testing.assert_close(ours(tokens), theirs(tokens), atol=1e-5, rtol=0)


@pytest.mark.parametrize("layer_kwargs", [dict(), dict(rotary_pos_emb=True)], ids=["absolute", "rotary"])
def test_prefix_alone_then_cached_decoding_after_it(layer_kwargs):
    ours, theirs = _pair(**layer_kwargs)
    prefix, tokens = torch.randn(2, 3, LAYERS["dim"]), torch.randint(0, 20, (2, 5))
    out, cache = ours(None, prepend_embeds=prefix, return_intermediates=True)
    expected, their_cache = theirs(None, prepend_embeds=prefix, return_intermediates=True)
    assert out.shape == (2, 3, WRAPPER["num_tokens"])
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)
    for step in range(1, 6):
        out, cache = ours(tokens[:, :step], prepend_embeds=prefix, cache=cache, return_intermediates=True)
        expected, their_cache = theirs(tokens[:, :step], prepend_embeds=prefix, cache=their_cache,
                                       return_intermediates=True)
        torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)
        torch.testing.assert_close(out, ours(tokens[:, :step], prepend_embeds=prefix)[:, -1:], atol=1e-5, rtol=0)
        assert cache.cache_length == their_cache.cache_length == 3 + step


def test_bad_token_inputs_name_them():
    ours, _ = _pair()
    with pytest.raises(ValueError, match="x may be None only with prepend_embeds"):
        ours(None)
    with pytest.raises(ValueError, match="non-integral values"):
        ours(torch.full((1, 3), 1.5))
    _, cache = ours(torch.randint(0, 20, (1, 3)), return_intermediates=True)
    with pytest.raises(ValueError, match="input_not_include_cache off"):
        ours(torch.randint(0, 20, (1, 1)), prepend_embeds=torch.randn(1, 2, 16), cache=cache,
             input_not_include_cache=True)
