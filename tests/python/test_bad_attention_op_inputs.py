"""Bad arguments to the attention op torch.ops.xtc.flash_attention raise RuntimeError naming the argument, the
expected and the actual value; empty sizes, NaN logits and strided inputs give defined results."""
import pytest
import torch

from attention_reference import check_nan_logits_reach_the_output
from x_transformers_cpp.backends import Backend
from xtc_testing import without_backend

op = torch.ops.xtc.flash_attention

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
    """A NaN among a query's visible keys makes its output, lse and gradient NaN (as softmax does); a masked NaN key
    does not."""
    with without_backend(None if bf16_matmul else Backend.CPU_BF16_MATMUL):
        check_nan_logits_reach_the_output("cpu", dtype, head_dim=16, keys=700)  # more than one key block


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_op_non_contiguous_and_expanded_inputs_give_the_contiguous_results(dtype):
    torch.manual_seed(0)
    q = torch.randn(2, 4, 9, 16, dtype=dtype).transpose(1, 2)  # (2, 9, 4, 16), strided
    k = torch.randn(1, 11, 2, 16, dtype=dtype).expand(2, 11, 2, 16)  # stride 0 over the batch
    v = torch.randn(2, 11, 2, 32, dtype=dtype)[..., ::2]  # a step in the last dim
    k_odd_rows = torch.randn(2, 11, 3, 17, dtype=dtype)[:, :, :2, 1:]  # rows 51 apart: odd
    for keys in (k, k_odd_rows):
        got = op(q, keys, v, None, True)
        want = op(q.contiguous(), keys.contiguous(), v.contiguous(), None, True)
        torch.testing.assert_close(got[0], want[0], atol=0, rtol=0)
        torch.testing.assert_close(got[1], want[1], atol=0, rtol=0)
