"""Bad inputs to the wrappers' forwards (TransformerWrapper's token ids and mask, ContinuousTransformerWrapper's x
and lens) raise ValueError naming the argument, the expected and the actual value; empty batches and lengths past
the sequence give defined results."""
import pytest
import torch

from x_transformers_cpp import ContinuousTransformerWrapper, Decoder, Encoder, TransformerWrapper

KW = dict(dim=16, depth=1, heads=2, attn_dim_head=8)


def _tw():
    return TransformerWrapper(num_tokens=10, max_seq_len=8, attn_layers=Decoder(**KW))


def _ct():
    return ContinuousTransformerWrapper(dim_in=4, dim_out=3, max_seq_len=8, attn_layers=Encoder(**KW))


@pytest.mark.parametrize("call,error,message", [
    (lambda m: m(torch.rand(2, 3) + 0.5), ValueError, r"floating tensor with non-integral values"),
    (lambda m: m(torch.zeros(2, 3, 1, dtype=torch.long)), ValueError, r"got \[2, 3, 1\] Long"),
    (lambda m: m(torch.full((2, 3), 10)), ValueError, r"expected token ids in \[0, 10\), got ids from 10 to 10"),
    (lambda m: m(torch.full((2, 3), -1)), ValueError, r"expected token ids in \[0, 10\), got ids from -1 to -1"),
    (lambda m: m(torch.zeros(2, 9, dtype=torch.long)), ValueError,
     r"expected at most max_seq_len \(8\) positions, got 9"),
    (lambda m: m(torch.zeros(2, 3, dtype=torch.long), mask=torch.ones(2, 4, dtype=torch.bool)), ValueError,
     r"expected mask of shape \(2, 3\), got \[2, 4\]"),
], ids=["float_ids", "rank", "id_too_large", "negative_id", "too_long", "mask_shape"])
def test_transformer_wrapper_forward(call, error, message):
    with pytest.raises(error, match=message):
        call(_tw())


def test_transformer_wrapper_empty_batch_is_defined():
    assert _tw()(torch.zeros(0, 3, dtype=torch.long)).shape == (0, 3, 10)


@pytest.mark.parametrize("call,message", [
    (lambda m: m(torch.randn(2, 3, 5)), r"expected x of shape \(batch, seq, 4\), got \[2, 3, 5\]"),
    (lambda m: m(torch.randn(2, 3, 4), lens=torch.tensor([1, 2, 3])), r"expected lens of shape \(2\) and an integer "
                                                                      r"dtype, got \[3\] Long"),
    (lambda m: m(torch.randn(2, 3, 4), lens=torch.tensor([1.0, 2.0])), r"got \[2\] Float"),
    (lambda m: m(torch.randn(2, 3, 4), mask=torch.ones(2, 3, dtype=torch.bool), lens=torch.tensor([1, 2])),
     r"pass either mask or lens, not both"),
], ids=["width", "lens_shape", "lens_dtype", "mask_and_lens"])
def test_continuous_wrapper_forward(call, message):
    with pytest.raises(ValueError, match=message):
        call(_ct())


def test_continuous_wrapper_lens_outside_the_sequence_are_defined():
    """As x-transformers (mask = arange(n) < lens): a negative length masks everything, a longer one nothing."""
    model = _ct()
    x = torch.randn(2, 3, 4)
    torch.testing.assert_close(model(x, lens=torch.tensor([-1, 7])),
                               model(x, mask=torch.tensor([[False] * 3, [True] * 3])), atol=0, rtol=0)
