"""Every bad input at every public entry point (one test per row of the README's bad-input table): the stacks' and
wrappers' constructors and forwards, and the attention op. Each gives a clear error naming the argument, the
expected and the actual value, or a defined result. (The stacks' forward checks are also in test_errors.py; the C++
modules' in tests/cpp/test_attention_layers.cpp.)"""
import pytest
import torch
from x_transformers import Decoder as XDecoder
from x_transformers import Encoder as XEncoder

from x_transformers_cpp import ContinuousTransformerWrapper, CrossAttender, Decoder, Encoder, TransformerWrapper
from x_transformers_cpp.backends import Backend
from xtc_testing import make_pair, random_mask, without_backend

KW = dict(dim=16, depth=1, heads=2, attn_dim_head=8)
op = torch.ops.xtc.flash_attention


def _tw():
    return TransformerWrapper(num_tokens=10, max_seq_len=8, attn_layers=Decoder(**KW))


def _ct():
    return ContinuousTransformerWrapper(dim_in=4, dim_out=3, max_seq_len=8, attn_layers=Encoder(**KW))


# ---------------------------------------------------------------------------------------------- constructors

@pytest.mark.parametrize("make,message", [
    (lambda: Encoder(dim=0, depth=1, heads=2), r"expected dim > 0, got 0"),
    (lambda: Encoder(dim=16, depth=-1, heads=2), r"expected depth > 0, got -1"),
    (lambda: Encoder(dim=16, depth=1, heads=0), r"expected heads > 0, got 0"),
    (lambda: Encoder(**{**KW, "attn_dim_head": 0}), r"expected attn_dim_head > 0, got 0"),
    (lambda: Encoder(**KW, attn_kv_heads=3), r"expected attn_kv_heads to divide heads \(2\), got 3"),
    (lambda: Encoder(**KW, ff_mult=0), r"expected ff_mult > 0"),
    (lambda: Encoder(**KW, attn_num_mem_kv=-1), r"expected attn_num_mem_kv >= 0"),
    (lambda: Encoder(**KW, shift_tokens=-1), r"expected shift_tokens >= 0, got -1"),
    (lambda: Encoder(**KW, rotary_pos_emb=True, rotary_emb_dim=3), r"even rotary_emb_dim .* got 3"),
    (lambda: TransformerWrapper(num_tokens=0, max_seq_len=8, attn_layers=Decoder(**KW)),
     r"expected num_tokens > 0, got 0"),
    (lambda: TransformerWrapper(num_tokens=5, max_seq_len=-1, attn_layers=Decoder(**KW)),
     r"expected max_seq_len >= 0, got -1"),
    (lambda: ContinuousTransformerWrapper(dim_in=0, max_seq_len=8, attn_layers=Encoder(**KW)),
     r"expected dim_in > 0, got 0"),
    (lambda: ContinuousTransformerWrapper(dim_out=-2, max_seq_len=8, attn_layers=Encoder(**KW)),
     r"expected dim_out > 0, got -2"),
], ids=["dim", "depth", "heads", "dim_head", "kv_heads", "ff_mult", "num_mem_kv", "shift_tokens", "rotary_dim",
        "num_tokens", "max_seq_len", "dim_in", "dim_out"])
def test_constructor_sizes(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_constructor_unknown_keyword_and_wrong_stack():
    with pytest.raises(TypeError, match="unrecognized or unsupported keyword arguments: attn_no_such_option"):
        Encoder(**KW, attn_no_such_option=True)
    with pytest.raises(TypeError, match="attn_layers: expected an x_transformers_cpp AttentionLayers"):
        TransformerWrapper(num_tokens=5, max_seq_len=8, attn_layers=XDecoder(**KW))


# ---------------------------------------------------------------------------------------------- stack forwards

@pytest.mark.parametrize("x,message", [
    (torch.randn(5, 16), r"expected x of shape \(batch, seq, 16\), got \[5, 16\]"),
    (torch.randn(2, 5, 15), r"expected x of shape \(batch, seq, 16\), got \[2, 5, 15\]"),
    (torch.randn(2, 5, 16, dtype=torch.float64), r"expected x of the parameters' dtype Float, got Double"),
    (torch.randint(0, 3, (2, 5, 16)), r"expected x of a floating dtype, got Long"),
    (torch.randn(2, 5, 16, device="meta"), r"expected x on the parameters' device cpu, got meta"),
], ids=["rank", "width", "dtype", "integer", "device"])
def test_stack_x(x, message):
    with pytest.raises(ValueError, match=message):
        Encoder(**KW)(x)


@pytest.mark.parametrize("mask,message", [
    (torch.ones(2, 4, dtype=torch.bool), r"expected mask of shape \(2, 5\), got \[2, 4\]"),
    (torch.ones(2, 5), r"expected mask of dtype bool \(True = keep\), got Float"),
    (torch.ones(2, 5, dtype=torch.bool, device="meta"), r"expected mask on x's device cpu, got meta"),
], ids=["shape", "dtype", "device"])
def test_stack_mask(mask, message):
    with pytest.raises(ValueError, match=message):
        Encoder(**KW)(torch.randn(2, 5, 16), mask=mask)


def test_stack_context():
    with pytest.raises(ValueError, match="context was passed in, but cross_attend is not set"):
        Encoder(**KW)(torch.randn(2, 5, 16), context=torch.randn(2, 3, 16))
    with pytest.raises(ValueError, match="context must be passed in when cross_attend is set"):
        CrossAttender(**KW)(torch.randn(2, 5, 16))
    with pytest.raises(ValueError, match=r"expected context of shape \(2, seq, 16\), got \[2, 3, 12\]"):
        CrossAttender(**KW)(torch.randn(2, 5, 16), context=torch.randn(2, 3, 12))


@pytest.mark.parametrize("batch,seq", [(0, 5), (2, 0), (0, 0), (3, 1)], ids=["empty_batch", "empty_seq", "empty",
                                                                             "length_1"])
def test_stack_empty_and_length_one_are_defined(batch, seq):
    """Empty batches and sequences give empty outputs, length 1 its value, as x-transformers."""
    torch.manual_seed(0)
    for kind in ("encoder", "decoder"):
        ours, theirs = make_pair(kind, **KW)
        x = torch.randn(batch, seq, 16, requires_grad=True)
        out = ours(x, mask=torch.ones(batch, seq, dtype=torch.bool))
        assert out.shape == (batch, seq, 16)
        out.sum().backward()
        if batch * seq > 0:
            torch.testing.assert_close(out, theirs(x), atol=1e-5, rtol=0)


@pytest.mark.parametrize("kind", ["encoder", "decoder"])
def test_stack_nan_and_inf_propagate(kind):
    """NaN or Inf in a sequence reaches every position that attends to it (IEEE arithmetic, as x-transformers);
    the other sequences of the batch are untouched; nothing crashes."""
    torch.manual_seed(0)
    ours, theirs = make_pair(kind, **KW, rotary_pos_emb=True)
    x = torch.randn(3, 9, 16)
    x[0, 4, 2] = float("nan")
    x[1, 6, 0] = float("inf")
    mask = torch.ones(3, 9, dtype=torch.bool)
    out, expected = ours(x, mask=mask), theirs(x, mask=mask)
    first = {0: 4, 1: 6}
    for row, t in first.items():
        reached = out[row].isnan().any(-1)
        # Encoder: every query sees the token; Decoder: the queries from it on
        assert reached[(0 if kind == "encoder" else t):].all(), reached
    torch.testing.assert_close(out[2], expected[2], atol=1e-5, rtol=0)


def test_stack_non_contiguous_and_expanded_inputs_give_the_contiguous_results():
    torch.manual_seed(0)
    ours, theirs = make_pair("encoder", **KW)
    base = torch.randn(9, 3, 16)
    transposed = base.transpose(0, 1)  # (3, 9, 16), strided
    expanded = torch.randn(1, 9, 16).expand(4, 9, 16)  # stride 0 over the batch
    mask = random_mask(4, 9)
    for x, m in [(transposed, mask[:3]), (expanded, mask), (base[:, :, ::2].repeat(1, 1, 2).transpose(0, 1), mask[:3])]:
        torch.testing.assert_close(ours(x, mask=m), ours(x.contiguous(), mask=m), atol=0, rtol=0)
        torch.testing.assert_close(ours(x, mask=m), theirs(x, mask=m), atol=1e-5, rtol=0)
    expanded_mask = torch.ones(1, 9, dtype=torch.bool).expand(4, 9)
    torch.testing.assert_close(ours(expanded, mask=expanded_mask), ours(expanded.contiguous()), atol=0, rtol=0)


@pytest.mark.parametrize("edit,message", [
    (lambda sd: sd.pop("final_norm.gamma"), r'Missing key\(s\) in state_dict: "final_norm.gamma"'),
    (lambda sd: sd.update(extra=torch.ones(1)), r'Unexpected key\(s\) in state_dict: "extra"'),
    (lambda sd: sd.update({"final_norm.gamma": torch.ones(3)}),
     r"size mismatch for final_norm.gamma: copying a param with shape torch.Size\(\[3\]\)"),
], ids=["missing", "extra", "misshapen"])
def test_state_dict_keys_get_torch_errors(edit, message):
    sd = XEncoder(**KW).state_dict()
    edit(sd)
    with pytest.raises(RuntimeError, match=message):
        Encoder(**KW).load_state_dict(sd)


# ---------------------------------------------------------------------------------------------- wrapper forwards

@pytest.mark.parametrize("call,error,message", [
    (lambda m: m(torch.rand(2, 3)), ValueError, r"expected token ids of shape \(batch, seq\) and an integer dtype, got "
                                                r"\[2, 3\] Float"),
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


# ---------------------------------------------------------------------------------------------- the attention op

Q = torch.randn(2, 5, 4, 8)


@pytest.mark.parametrize("args,message", [
    ((Q[0], Q, Q), r"expected q of shape \(batch, queries, heads, head_dim\), got \[5, 4, 8\]"),
    ((Q, Q.double(), Q), r"expected q, k and v of one dtype, got q Float, k Double, v Float"),
    ((Q, Q, Q.to("meta")), r"expected q, k and v on one device"),
    ((Q, torch.randn(3, 5, 4, 8), Q), r"expected k of shape \(2, keys, kv_heads, 8\), got \[3, 5, 4, 8\]"),
    ((Q, torch.randn(2, 5, 3, 8), torch.randn(2, 5, 3, 8)), r"query heads \(4\) to be a multiple of the kv heads \(3\)"),
    ((torch.randn(2, 5, 4, 0), torch.randn(2, 5, 4, 0), Q), r"expected head dims > 0, got q/k 0 and v 8"),
    ((Q.long(), Q.long(), Q.long()), r"expected q, k, v of dtype float64, float32, bfloat16 or float16, got Long"),
    ((Q, Q, Q, torch.ones(2, 5)), r"expected key_padding_mask of dtype bool, got Float"),
    ((Q, Q, Q, torch.ones(2, 6, dtype=torch.bool)), r"expected key_padding_mask of shape \(2, 5\), got \[2, 6\]"),
    ((Q, Q, Q, None, False, None, torch.rand(3)), r"expected alibi_slopes of shape \(4\), got \[3\]"),
    ((Q, Q, Q, None, False, None, None, -2, -1), r"expected window_left and window_right >= -1"),
    ((Q, Q, Q, None, False, None, None, -1, -1, -1.0), r"expected softcap >= 0 \(0 = off\), got -1"),
    ((Q, Q, Q, None, False, float("nan")), r"expected a finite scale, got nan"),
], ids=["rank", "dtype", "device", "k_batch", "heads", "head_dim", "integer", "mask_dtype", "mask_shape",
        "slopes_shape", "window", "softcap", "scale"])
def test_op_bad_arguments(args, message):
    with pytest.raises(RuntimeError, match=message):
        op(*args)


@pytest.mark.parametrize("shape_q,shape_k", [((0, 5, 4, 8), (0, 5, 4, 8)), ((2, 0, 4, 8), (2, 5, 4, 8)),
                                             ((2, 5, 4, 8), (2, 0, 4, 8))], ids=["batch", "queries", "keys"])
def test_op_empty_sizes_are_defined(shape_q, shape_k):
    """No queries: empty output; no keys: every query sees none, so 0 and lse -inf (the op's rule)."""
    q, k = torch.randn(shape_q, requires_grad=True), torch.randn(shape_k, requires_grad=True)
    out, lse = op(q, k, k)
    assert out.shape == shape_q and lse.shape == (shape_q[0], 4, shape_q[1])
    if out.numel():
        assert (out == 0).all() and (lse == float("-inf")).all()
    out.sum().backward()
    assert q.grad.shape == shape_q


@pytest.mark.parametrize("bf16_matmul", [True, False])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
def test_op_nan_logits_reach_the_output(dtype, bf16_matmul):
    """A NaN among a query's visible keys makes its output and lse NaN (as softmax does); a masked NaN key does
    not."""
    with without_backend(None if bf16_matmul else Backend.CPU_BF16_MATMUL):
        check_nan_logits_reach_the_output(dtype)


def check_nan_logits_reach_the_output(dtype):
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 700, 2, 16, dtype=dtype) for _ in range(3))  # more than one key block
    k[0, 600, 1, 3] = float("nan")
    mask = torch.ones(2, 700, dtype=torch.bool)
    out, lse = op(q, k, v, mask)
    assert out[0, :, 1].isnan().all() and lse[0, 1].isnan().all()
    assert not out[0, :, 0].isnan().any() and not out[1].isnan().any()
    mask[0, 600] = False
    out, lse = op(q, k, v, mask)
    assert not out.isnan().any() and not lse.isnan().any()


def test_op_non_contiguous_and_expanded_inputs_give_the_contiguous_results():
    torch.manual_seed(0)
    q = torch.randn(2, 4, 9, 8).transpose(1, 2)  # (2, 9, 4, 8), strided
    k = torch.randn(1, 11, 2, 8).expand(2, 11, 2, 8)  # stride 0 over the batch
    v = torch.randn(2, 11, 2, 16)[..., ::2]  # a step in the last dim
    got = op(q, k, v, None, True)
    want = op(q.contiguous(), k.contiguous(), v.contiguous(), None, True)
    torch.testing.assert_close(got[0], want[0], atol=0, rtol=0)
    torch.testing.assert_close(got[1], want[1], atol=0, rtol=0)
