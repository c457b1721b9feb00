"""ONNX export (torch.onnx.export(..., dynamo=True) with x_transformers_cpp.onnx.translation_table()) of the stacks and
wrappers with dynamic batch and length, run in ONNX Runtime (CPU) at shapes other than the example's: within 1e-4
of our eager forward in float32, padding masks with a fully masked row included."""
import pytest
import torch
from torch.export import Dim

import x_transformers_cpp.onnx
from x_transformers_cpp import ContinuousTransformerWrapper, Decoder, Encoder, TransformerWrapper
from xtc_testing import random_mask

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

KW = dict(dim=32, depth=2, heads=4, attn_dim_head=8)
STACKS = {
    "encoder": (Encoder, {}),
    "decoder_rotary_gqa": (Decoder, dict(rotary_pos_emb=True, attn_kv_heads=2)),
    "encoder_alibi": (Encoder, dict(alibi_pos_bias=True)),
    "decoder_window_softcap": (Decoder, dict(attn_max_attend_past=3, attn_softclamp_logits=True)),
    "encoder_rmsnorm_glu_qknorm": (Encoder, dict(use_rmsnorm=True, ff_glu=True, attn_qk_norm=True)),
    "decoder_alibi_gqa_mem_kv": (Decoder, dict(alibi_pos_bias=True, attn_kv_heads=1, attn_num_mem_kv=2)),
}


def _run_onnx(model, args, kwargs, dynamic_shapes, tmp_path):
    program = torch.onnx.export(model, args, kwargs=kwargs, dynamo=True, dynamic_shapes=dynamic_shapes,
                                custom_translation_table=x_transformers_cpp.onnx.translation_table())
    path = tmp_path / "model.onnx"
    program.save(str(path))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    return lambda *inputs: torch.from_numpy(session.run(None, dict(zip(names, [t.numpy() for t in inputs])))[0])


@pytest.mark.parametrize("model_class,options", STACKS.values(), ids=STACKS.keys())
def test_stack_runs_in_onnx_runtime(tmp_path, model_class, options):
    torch.manual_seed(0)
    model = model_class(**KW, **options).eval()
    batch, seq = Dim("batch"), Dim("seq")
    run = _run_onnx(model, (torch.randn(2, 7, 32),), {"mask": random_mask(2, 7)},
                    {"x": {0: batch, 1: seq}, "mask": {0: batch, 1: seq}}, tmp_path)
    for b, n in [(3, 12), (1, 5)]:
        x, mask = torch.randn(b, n, 32), random_mask(b, n)
        with torch.no_grad():
            torch.testing.assert_close(run(x, mask), model(x, mask=mask), atol=1e-4, rtol=0)


def test_wrappers_run_in_onnx_runtime(tmp_path):
    torch.manual_seed(1)
    lm = TransformerWrapper(num_tokens=40, max_seq_len=32,
                            attn_layers=Decoder(**KW, rotary_pos_emb=True, attn_kv_heads=2)).eval()
    batch, seq = Dim("batch"), Dim("seq", max=32)
    run = _run_onnx(lm, (torch.randint(0, 40, (2, 7)),), {}, {"x": {0: batch, 1: seq}}, tmp_path)
    for b, n in [(3, 12), (1, 5)]:
        tokens = torch.randint(0, 40, (b, n))
        with torch.no_grad():
            torch.testing.assert_close(run(tokens), lm(tokens), atol=1e-4, rtol=0)
    continuous = ContinuousTransformerWrapper(dim_in=5, dim_out=3, max_seq_len=32,
                                              attn_layers=Encoder(**KW, alibi_pos_bias=True)).eval()
    run = _run_onnx(continuous, (torch.randn(2, 7, 5),), {"mask": random_mask(2, 7)},
                    {"x": {0: batch, 1: seq}, "mask": {0: batch, 1: seq}}, tmp_path)
    x, mask = torch.randn(3, 12, 5), random_mask(3, 12)
    with torch.no_grad():
        torch.testing.assert_close(run(x, mask), continuous(x, mask=mask), atol=1e-4, rtol=0)
