"""Bad inputs and options raise Python exceptions (never crash the process) whose message names the argument and
the expected and actual values, as one readable line (no C++ backtrace)."""
import re

import pytest
import torch

from x_transformers_cpp import AttentionLayers, Decoder, Encoder
from x_transformers_cpp.attention_layers import stack_arguments

DIM = 32
KW = dict(dim=DIM, depth=2, heads=4, attn_dim_head=8)


@pytest.fixture(params=[Encoder, Decoder], ids=["encoder", "decoder"])
def module(request):
    torch.manual_seed(0)
    return request.param(**KW)


def _raises(fn, *needles, types=(RuntimeError, ValueError)):
    """Calls fn, which must raise one of types; every needle (plain text) must appear in the message."""
    with pytest.raises(types) as info:
        fn()
    message = str(info.value)
    for needle in needles:
        assert needle in message, f"{needle!r} not in message {message!r}"
    assert "Exception raised from" not in message and "frame #" not in message, f"C++ backtrace in {message!r}"
    assert len(message.splitlines()) <= 2, f"multi-line message {message!r}"
    return message


def _shape_text(shape):
    return str(list(shape))


# ----------------------------------------------------------------------------------------------------- input x
@pytest.mark.parametrize("shape", [(5, DIM), (DIM,), (2, 3, 5, DIM)], ids=["2d", "1d", "4d"])
def test_x_not_3d(module, shape):
    x = torch.randn(*shape)
    _raises(lambda: module(x), "x", f"(batch, seq, {DIM})", _shape_text(shape))


@pytest.mark.parametrize("last", [DIM - 1, DIM + 7, 1])
def test_x_last_dim_mismatch(module, last):
    x = torch.randn(2, 5, last)
    _raises(lambda: module(x), "x", f"(batch, seq, {DIM})", _shape_text((2, 5, last)))


def test_scalar_x(module):
    _raises(lambda: module(torch.tensor(1.0)), "x", f"(batch, seq, {DIM})")


def test_integer_x(module):
    x = torch.randint(0, 5, (2, 5, DIM))
    _raises(lambda: module(x), "x", "float", "Long")


@pytest.mark.parametrize("dtype,name", [(torch.float64, "Double"), (torch.float16, "Half"),
                                        (torch.bfloat16, "BFloat16")])
def test_x_dtype_differs_from_parameters(module, dtype, name):
    x = torch.randn(2, 5, DIM, dtype=dtype)
    _raises(lambda: module(x), "dtype", name, "Float")


def test_parameters_dtype_differs_from_x(module):
    module.double()
    _raises(lambda: module(torch.randn(2, 5, DIM)), "dtype", "Double", "Float")


# -------------------------------------------------------------------------------------------------------- mask
@pytest.mark.parametrize("shape", [(2, 4), (2, 6), (3, 5), (5,), (2, 5, 1), (1, 5)],
                         ids=["short", "long", "batch", "1d", "3d", "batch1"])
def test_mask_shape(module, shape):
    x = torch.randn(2, 5, DIM)
    mask = torch.ones(*shape, dtype=torch.bool)
    _raises(lambda: module(x, mask=mask), "mask", "(2, 5)", _shape_text(shape))


@pytest.mark.parametrize("dtype,name", [(torch.float32, "Float"), (torch.int64, "Long"), (torch.int32, "Int"),
                                        (torch.uint8, "Byte"), (torch.float64, "Double")])
def test_mask_not_bool(module, dtype, name):
    x = torch.randn(2, 5, DIM)
    mask = torch.ones(2, 5, dtype=dtype)
    _raises(lambda: module(x, mask=mask), "mask", "bool", name)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device for a second device")
def test_mask_on_other_device(module):
    x = torch.randn(2, 5, DIM)
    mask = torch.ones(2, 5, dtype=torch.bool, device="cuda")
    _raises(lambda: module(x, mask=mask), "mask", "cuda", "cpu")


def test_x_on_other_device_than_parameters(module):
    """The meta device stands in for a second device on a CPU-only machine."""
    x = torch.randn(2, 5, DIM, device="meta")
    _raises(lambda: module(x), "device", "meta", "cpu")


# ------------------------------------------------------------------------------------------ parameters handed in
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
    _raises(lambda: torch.func.functional_call(module, params, (x,)), leaf, _shape_text(expected), _shape_text(shape))


def test_wrong_number_of_parameters_to_op(module):
    params = list(module.parameters())
    x = torch.randn(2, 5, DIM)
    no_inputs = stack_arguments()  # every stack input at its default, in the ops' order

    def op(params_in):
        return torch.ops.xtc.attention_layers(x, *no_inputs, params_in, module._options, False)

    _raises(lambda: op(params[:-1]), "parameters")
    _raises(lambda: op(params + [params[0]]), "parameters", str(len(params)), str(len(params) + 1))
    _raises(lambda: op([]), "parameters")


def test_malformed_options_to_op(module):
    x = torch.randn(2, 5, DIM)
    _raises(lambda: torch.ops.xtc.attention_layers(x, *stack_arguments(), list(module.parameters()),
                                                   "dim=32;garbage", False),
            "garbage")


def test_sparse_x(module):
    x = torch.randn(2, 5, DIM).to_sparse()
    _raises(lambda: module(x), "x", "layout")


# ------------------------------------------------------------------------------------------ constructor options
@pytest.mark.parametrize("cls", [Encoder, Decoder])
@pytest.mark.parametrize("heads,kv_heads", [(3, 2), (4, 3), (8, 16), (2, 0), (4, -2)])
def test_kv_heads_must_divide_heads(cls, heads, kv_heads):
    msg = _raises(lambda: cls(dim=DIM, depth=1, heads=heads, attn_kv_heads=kv_heads), "attn_kv_heads",
                  str(kv_heads), types=ValueError)
    assert re.search(rf"\bheads\b.*\b{heads}\b", msg), msg


def test_one_kv_head_clashes_with_kv_heads():
    _raises(lambda: Encoder(dim=DIM, depth=1, heads=4, attn_kv_heads=2, attn_one_kv_head=True),
            "attn_one_kv_head", "attn_kv_heads", types=ValueError)


@pytest.mark.parametrize("option", ["attn_dropout", "ff_dropout", "layer_dropout"])
@pytest.mark.parametrize("value", [-0.1, -1.0, 1.0, 1.5])
def test_dropout_out_of_range(option, value):
    _raises(lambda: Encoder(dim=DIM, depth=1, **{option: value}), option, "[0, 1)", repr(value).rstrip("0").rstrip("."),
            types=ValueError)


@pytest.mark.parametrize("option,value", [("dim", 0), ("dim", -4), ("depth", 0), ("depth", -1), ("heads", 0),
                                          ("heads", -2), ("attn_dim_head", 0), ("ff_mult", 0)])
def test_non_positive_sizes(option, value):
    kwargs = dict(dim=DIM, depth=1, heads=2)
    kwargs[option] = value
    _raises(lambda: Encoder(**kwargs), option, str(value), types=ValueError)


def test_single_head_needs_dim_head_equal_dim():
    _raises(lambda: Encoder(dim=DIM, depth=1, heads=1, attn_dim_head=16), "attn_dim_head", str(DIM), "16",
            types=ValueError)


def test_non_integer_size():
    _raises(lambda: Encoder(dim=32.5, depth=1), "dim", "32.5", types=ValueError)


@pytest.mark.parametrize("value", ["32", [32], object()])
def test_wrong_option_type(value):
    with pytest.raises(TypeError):
        AttentionLayers(dim=value, depth=1)
