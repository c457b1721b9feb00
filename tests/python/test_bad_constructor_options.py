"""Bad constructor options of the stacks and wrappers raise ValueError (TypeError for unknown keywords and wrong
types) naming the option, the expected and the actual value, as one readable line."""
import re

import pytest
from x_transformers import Decoder as XDecoder

from x_transformers_cpp import AttentionLayers, ContinuousTransformerWrapper, Decoder, Encoder, TransformerWrapper
from xtc_testing import raises_clearly

DIM = 32
SMALL = dict(dim=16, depth=1, heads=2, attn_dim_head=8)


@pytest.mark.parametrize("cls", [Encoder, Decoder])
@pytest.mark.parametrize("heads,kv_heads", [(3, 2), (4, 3), (8, 16), (2, 0), (4, -2)])
def test_kv_heads_must_divide_heads(cls, heads, kv_heads):
    msg = raises_clearly(lambda: cls(dim=DIM, depth=1, heads=heads, attn_kv_heads=kv_heads), "attn_kv_heads",
                  str(kv_heads), types=ValueError)
    assert re.search(rf"\bheads\b.*\b{heads}\b", msg), msg


def test_one_kv_head_clashes_with_kv_heads():
    raises_clearly(lambda: Encoder(dim=DIM, depth=1, heads=4, attn_kv_heads=2, attn_one_kv_head=True),
            "attn_one_kv_head", "attn_kv_heads", types=ValueError)


@pytest.mark.parametrize("option", ["attn_dropout", "ff_dropout", "layer_dropout"])
@pytest.mark.parametrize("value", [-0.1, -1.0, 1.0, 1.5])
def test_dropout_out_of_range(option, value):
    raises_clearly(lambda: Encoder(dim=DIM, depth=1, **{option: value}), option, "[0, 1)", repr(value).rstrip("0").rstrip("."),
            types=ValueError)


@pytest.mark.parametrize("option,value", [("dim", 0), ("dim", -4), ("depth", 0), ("depth", -1), ("heads", 0),
                                          ("heads", -2), ("attn_dim_head", 0), ("ff_mult", 0)])
def test_non_positive_sizes(option, value):
    kwargs = dict(dim=DIM, depth=1, heads=2)
    kwargs[option] = value
    raises_clearly(lambda: Encoder(**kwargs), option, str(value), types=ValueError)


def test_single_head_needs_dim_head_equal_dim():
    raises_clearly(lambda: Encoder(dim=DIM, depth=1, heads=1, attn_dim_head=16), "attn_dim_head", str(DIM), "16",
            types=ValueError)


def test_non_integer_size():
    raises_clearly(lambda: Encoder(dim=32.5, depth=1), "dim", "32.5", types=ValueError)


@pytest.mark.parametrize("value", ["32", [32], object()])
def test_wrong_option_type(value):
    with pytest.raises(TypeError):
        AttentionLayers(dim=value, depth=1)


@pytest.mark.parametrize("make,message", [
    (lambda: Encoder(dim=0, depth=1, heads=2), r"expected dim > 0, got 0"),
    (lambda: Encoder(dim=16, depth=-1, heads=2), r"expected depth > 0, got -1"),
    (lambda: Encoder(dim=16, depth=1, heads=0), r"expected heads > 0, got 0"),
    (lambda: Encoder(**{**SMALL, "attn_dim_head": 0}), r"expected attn_dim_head > 0, got 0"),
    (lambda: Encoder(**SMALL, attn_kv_heads=3), r"expected attn_kv_heads to divide heads \(2\), got 3"),
    (lambda: Encoder(**SMALL, ff_mult=0), r"expected ff_mult > 0"),
    (lambda: Encoder(**SMALL, attn_num_mem_kv=-1), r"expected attn_num_mem_kv >= 0"),
    (lambda: Encoder(**SMALL, shift_tokens=-1), r"expected shift_tokens >= 0, got -1"),
    (lambda: Encoder(**SMALL, rotary_pos_emb=True, rotary_emb_dim=3), r"even rotary_emb_dim .* got 3"),
    (lambda: TransformerWrapper(num_tokens=0, max_seq_len=8, attn_layers=Decoder(**SMALL)),
     r"expected num_tokens > 0, got 0"),
    (lambda: TransformerWrapper(num_tokens=5, max_seq_len=-1, attn_layers=Decoder(**SMALL)),
     r"expected max_seq_len >= 0, got -1"),
    (lambda: ContinuousTransformerWrapper(dim_in=0, max_seq_len=8, attn_layers=Encoder(**SMALL)),
     r"expected dim_in > 0, got 0"),
    (lambda: ContinuousTransformerWrapper(dim_out=-2, max_seq_len=8, attn_layers=Encoder(**SMALL)),
     r"expected dim_out > 0, got -2"),
], ids=["dim", "depth", "heads", "dim_head", "kv_heads", "ff_mult", "num_mem_kv", "shift_tokens", "rotary_dim",
        "num_tokens", "max_seq_len", "dim_in", "dim_out"])
def test_constructor_sizes(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_constructor_unknown_keyword_and_wrong_stack():
    with pytest.raises(TypeError, match="unrecognized or unsupported keyword arguments: attn_no_such_option"):
        Encoder(**SMALL, attn_no_such_option=True)
    with pytest.raises(TypeError, match="attn_layers: expected an x_transformers_cpp AttentionLayers"):
        TransformerWrapper(num_tokens=5, max_seq_len=8, attn_layers=XDecoder(**SMALL))
