"""Bad inputs to the stacks' forwards (x, mask, context, the parameters handed to the op, state_dicts) raise
Python exceptions (never crash the process) whose message names the argument, the expected and the actual value, as
one readable line; empty, length-one, NaN / Inf and strided inputs give defined results. (The C++ modules' checks
are in tests/cpp/test_attention_layers.cpp.)"""
import pytest
import torch
from x_transformers import Encoder as XEncoder

from x_transformers_cpp import CrossAttender, Decoder, Encoder
from x_transformers_cpp.attention_layers import stack_arguments
from xtc_testing import make_pair, raises_clearly, random_mask, shape_text

DIM = 32
KW = dict(dim=DIM, depth=2, heads=4, attn_dim_head=8)
SMALL = dict(dim=16, depth=1, heads=2, attn_dim_head=8)


@pytest.fixture(params=[Encoder, Decoder], ids=["encoder", "decoder"])
def module(request):
    torch.manual_seed(0)
    return request.param(**KW)


# ---------------------------------------------------------------------------------------------------- input x
@pytest.mark.parametrize("shape", [(5, DIM), (DIM,), (2, 3, 5, DIM)], ids=["2d", "1d", "4d"])
def test_x_not_3d(module, shape):
    x = torch.randn(*shape)
    raises_clearly(lambda: module(x), "x", f"(batch, seq, {DIM})", shape_text(shape))


@pytest.mark.parametrize("last", [DIM - 1, DIM + 7, 1])
def test_x_last_dim_mismatch(module, last):
    x = torch.randn(2, 5, last)
    raises_clearly(lambda: module(x), "x", f"(batch, seq, {DIM})", shape_text((2, 5, last)))


def test_scalar_x(module):
    raises_clearly(lambda: module(torch.tensor(1.0)), "x", f"(batch, seq, {DIM})")


def test_integer_x(module):
    x = torch.randint(0, 5, (2, 5, DIM))
    raises_clearly(lambda: module(x), "x", "float", "Long")


@pytest.mark.parametrize("dtype,name", [(torch.float64, "Double"), (torch.float16, "Half"),
                                        (torch.bfloat16, "BFloat16")])
def test_x_dtype_differs_from_parameters(module, dtype, name):
    x = torch.randn(2, 5, DIM, dtype=dtype)
    raises_clearly(lambda: module(x), "dtype", name, "Float")


def test_parameters_dtype_differs_from_x(module):
    module.double()
    raises_clearly(lambda: module(torch.randn(2, 5, DIM)), "dtype", "Double", "Float")


# ------------------------------------------------------------------------------------------------------- mask
@pytest.mark.parametrize("shape", [(2, 4), (2, 6), (3, 5), (5,), (2, 5, 1), (1, 5)],
                         ids=["short", "long", "batch", "1d", "3d", "batch1"])
def test_mask_shape(module, shape):
    x = torch.randn(2, 5, DIM)
    mask = torch.ones(*shape, dtype=torch.bool)
    raises_clearly(lambda: module(x, mask=mask), "mask", "(2, 5)", shape_text(shape))


@pytest.mark.parametrize("dtype,name", [(torch.float32, "Float"), (torch.int64, "Long"), (torch.int32, "Int"),
                                        (torch.uint8, "Byte"), (torch.float64, "Double")])
def test_mask_not_bool(module, dtype, name):
    x = torch.randn(2, 5, DIM)
    mask = torch.ones(2, 5, dtype=dtype)
    raises_clearly(lambda: module(x, mask=mask), "mask", "bool", name)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device for a second device")
def test_mask_on_other_device(module):
    x = torch.randn(2, 5, DIM)
    mask = torch.ones(2, 5, dtype=torch.bool, device="cuda")
    raises_clearly(lambda: module(x, mask=mask), "mask", "cuda", "cpu")


def test_x_on_other_device_than_parameters(module):
    """The meta device stands in for a second device on a CPU-only machine."""
    x = torch.randn(2, 5, DIM, device="meta")
    raises_clearly(lambda: module(x), "device", "meta", "cpu")


# ------------------------------------------------------------------------- the README's bad-input table's rows
@pytest.mark.parametrize("x,message", [
    (torch.randn(5, 16), r"expected x of shape \(batch, seq, 16\), got \[5, 16\]"),
    (torch.randn(2, 5, 15), r"expected x of shape \(batch, seq, 16\), got \[2, 5, 15\]"),
    (torch.randn(2, 5, 16, dtype=torch.float64), r"expected x of the parameters' dtype Float, got Double"),
    (torch.randint(0, 3, (2, 5, 16)), r"expected x of a floating dtype, got Long"),
    (torch.randn(2, 5, 16, device="meta"), r"expected x on the parameters' device cpu, got meta"),
], ids=["rank", "width", "dtype", "integer", "device"])
def test_stack_x(x, message):
    with pytest.raises(ValueError, match=message):
        Encoder(**SMALL)(x)


@pytest.mark.parametrize("mask,message", [
    (torch.ones(2, 4, dtype=torch.bool), r"expected mask of shape \(2, 5\), got \[2, 4\]"),
    (torch.ones(2, 5), r"expected mask of dtype bool \(True = keep\), got Float"),
    (torch.ones(2, 5, dtype=torch.bool, device="meta"), r"expected mask on x's device cpu, got meta"),
], ids=["shape", "dtype", "device"])
def test_stack_mask(mask, message):
    with pytest.raises(ValueError, match=message):
        Encoder(**SMALL)(torch.randn(2, 5, 16), mask=mask)


def test_stack_context():
    with pytest.raises(ValueError, match="context was passed in, but cross_attend is not set"):
        Encoder(**SMALL)(torch.randn(2, 5, 16), context=torch.randn(2, 3, 16))
    with pytest.raises(ValueError, match="context must be passed in when cross_attend is set"):
        CrossAttender(**SMALL)(torch.randn(2, 5, 16))
    with pytest.raises(ValueError, match=r"expected context of shape \(2, seq, 16\), got \[2, 3, 12\]"):
        CrossAttender(**SMALL)(torch.randn(2, 5, 16), context=torch.randn(2, 3, 12))


@pytest.mark.parametrize("batch,seq", [(0, 5), (2, 0), (0, 0), (3, 1)], ids=["empty_batch", "empty_seq", "empty",
                                                                             "length_1"])
def test_stack_empty_and_length_one_are_defined(batch, seq):
    """Empty batches and sequences give empty outputs, length 1 its value, as x-transformers."""
    torch.manual_seed(0)
    for kind in ("encoder", "decoder"):
        ours, theirs = make_pair(kind, **SMALL)
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
    ours, theirs = make_pair(kind, **SMALL, rotary_pos_emb=True)
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
    ours, theirs = make_pair("encoder", **SMALL)
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
    sd = XEncoder(**SMALL).state_dict()
    edit(sd)
    with pytest.raises(RuntimeError, match=message):
        Encoder(**SMALL).load_state_dict(sd)


# --------------------------------------------------------------------------------------- parameters handed in
@pytest.mark.parametrize("name,shape", [("layers.0.1.to_q.weight", (16, DIM)),
                                        ("layers.0.1.to_k.weight", (8, DIM)),
                                        ("layers.0.1.to_out.weight", (DIM, 16)),
                                        ("layers.1.1.ff.0.0.weight", (4 * DIM, DIM - 1)),
                                        ("layers.1.1.ff.0.0.bias", (4 * DIM - 1,)),
                                        ("final_norm.gamma", (1, DIM))])
def test_misshapen_parameter(module, name, shape):
    """A parameter of the wrong shape (here through functional_call) is caught before any kernel reads it."""
    params = {k: v.detach() for k, v in module.named_parameters()}
    params[name] = torch.randn(*shape)
    x = torch.randn(2, 5, DIM)
    leaf = name.split(".", 3)[-1] if name.startswith("layers.") else name
    expected = dict(module.named_parameters())[name].shape
    raises_clearly(lambda: torch.func.functional_call(module, params, (x,)), leaf, shape_text(expected), shape_text(shape))


def test_wrong_number_of_parameters_to_op(module):
    params = list(module.parameters())
    x = torch.randn(2, 5, DIM)
    no_inputs = stack_arguments()  # every stack input at its default, in the ops' order

    def op(params_in):
        return torch.ops.xtc.attention_layers(x, *no_inputs, params_in, module._options, False)

    raises_clearly(lambda: op(params[:-1]), "parameters")
    raises_clearly(lambda: op(params + [params[0]]), "parameters", str(len(params)), str(len(params) + 1))
    raises_clearly(lambda: op([]), "parameters")


def test_malformed_options_to_op(module):
    x = torch.randn(2, 5, DIM)
    raises_clearly(lambda: torch.ops.xtc.attention_layers(x, *stack_arguments(), list(module.parameters()),
                                                   "dim=32;garbage", False),
            "garbage")


def test_sparse_x(module):
    x = torch.randn(2, 5, DIM).to_sparse()
    raises_clearly(lambda: module(x), "x", "layout")
