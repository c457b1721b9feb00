"""The layer stack's forward inputs are one list (XTC_STACK_INPUTS in csrc/include/xtc/nn/functional/stack_inputs.h): every op that runs a
stack takes exactly that list after its first input, in that order, and the Python modules pass it in that order."""
import pathlib
import re

import pytest
import torch

import x_transformers_cpp  # noqa: F401
from x_transformers_cpp.attention_layers import ORDER_KWARGS, STACK_KWARGS, _stack_input_schema, stack_arguments

OPS = ["attention_layers", "attention_layers_with_hiddens", "transformer_wrapper", "transformer_wrapper_with_hiddens",
       "continuous_transformer", "continuous_transformer_with_hiddens"]


STACK_INPUTS_H = (pathlib.Path(__file__).resolve().parents[2] / "csrc" / "include" / "xtc" / "nn" / "functional"
                  / "stack_inputs.h")


def the_one_list():
    """(name, schema type) of each row of XTC_STACK_INPUTS, read from the header itself."""
    rows = re.findall(r'^\s*X\((\w+), "([^"]+)",', STACK_INPUTS_H.read_text(), re.MULTILINE)
    assert len(rows) > 20, "XTC_STACK_INPUTS not found in stack_inputs.h"
    return rows


@pytest.mark.parametrize("op", OPS)
def test_every_stack_op_takes_the_one_list(op):
    arguments = getattr(torch.ops.xtc, op).default._schema.arguments
    rows = the_one_list()
    assert [a.name for a in arguments[1:1 + len(rows)]] == [name for name, _ in rows]
    # The schema's types are the list's ("Tensor?" prints as "Optional[Tensor]", "Tensor[]" as "List[Tensor]").
    spelled = {"Tensor?": "Optional[Tensor]", "Tensor[]": "List[Tensor]", "int[]": "List[int]", "bool?": "Optional[bool]",
               "bool": "bool"}
    assert [str(a.type) for a in arguments[1:1 + len(rows)]] == [spelled[t] for _, t in rows]


def test_python_reads_the_one_list():
    assert [name for name, _ in _stack_input_schema()] == [name for name, _ in the_one_list()]


def test_python_passes_every_input_of_the_list():
    # Each x-transformers keyword lands in its place; the lists' packed-sequence entries come from the two kwargs,
    # the additional key/values' list from their pairs.
    names = [name for name, _ in _stack_input_schema()]
    marker = torch.zeros(1)
    converted = ("mems", "mem_masks", "self_attn_additional_kv", "detach_additional_kv", "route_additional_kv_to_top",
                 "deep_embeds_and_ids")
    for kwarg in STACK_KWARGS:
        if kwarg.startswith("flash_pack_seq") or kwarg in converted:
            continue
        arguments = stack_arguments(**{kwarg: marker})
        assert arguments[names.index(kwarg)] is marker
    cu = torch.tensor([0, 2], dtype=torch.int32)
    arguments = stack_arguments(flash_pack_seq_context_kwargs=dict(cu_seqlens_q=cu, cu_seqlens_k=cu, max_seqlen_q=2,
                                                                   max_seqlen_k=2))
    assert arguments[names.index("flash_pack_seq_context_max")] == [2, 2]
    assert arguments[names.index("flash_pack_seq")] == []
    k, v = torch.randn(1, 2, 3, 4), torch.randn(1, 2, 3, 4, requires_grad=True)
    arguments = stack_arguments(self_attn_additional_kv=[(k, v)], detach_additional_kv=True,
                                route_additional_kv_to_top=False)
    flat = arguments[names.index("self_attn_additional_kv")]
    assert flat[0] is k and torch.equal(flat[1], v) and not flat[1].requires_grad
    assert arguments[names.index("route_additional_kv_to_top")] is False
    table, ids = torch.randn(5, 3, 4), torch.tensor([[0, 4], [2, 2]])
    scales = stack_arguments(deep_embeds_and_ids=(table, ids))[names.index("ff_output_scales")]
    assert len(scales) == 3 and all(torch.equal(s, table[ids][:, :, i]) for i, s in enumerate(scales))


def _parameters(fn):
    import inspect
    return [p for p in inspect.signature(fn).parameters if p not in ("self", "kwargs", "args")]


@pytest.mark.parametrize("pair", ["AttentionLayers", "TransformerWrapper", "ContinuousTransformerWrapper"])
def test_every_x_transformers_forward_argument_is_taken_or_refused_by_name(pair):
    # Against the pinned signatures: each argument of x-transformers' forward is a parameter of ours, passes on to
    # the stack (the wrappers), or is accepted at its default and refused by name when set; none is ignored.
    import x_transformers
    import x_transformers_cpp
    theirs = getattr(x_transformers, pair) if hasattr(x_transformers, pair) else None
    theirs = theirs or getattr(x_transformers.x_transformers, pair)
    ours = getattr(x_transformers_cpp, pair)
    # The stack's inputs and this call's layer order are taken out of **kwargs (by the wrappers too).
    handled = set(_parameters(ours.forward)) | set(ours._FORWARD_DEFAULTS) | set(STACK_KWARGS) | set(ORDER_KWARGS)
    missing = [name for name in _parameters(theirs.forward) if name not in handled]
    assert not missing, f"{pair}.forward: x-transformers arguments neither taken nor refused: {missing}"
