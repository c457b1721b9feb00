"""ONNX Runtime (CPU) against our eager CPU forward, in one run: the seed encoder, Encoder(dim=512, depth=6,
heads=8), over (1, 1024, 512) and a padded batch (4, 256, 512), with a padding mask, fp32, eval, no_grad. The
ONNX model is torch.onnx.export(..., dynamo=True) with x_transformers_cpp.onnx.translation_table() (dynamic batch
and length), run by onnxruntime's CPU provider with as many threads as torch. Prints the medians and the ratio
ONNX Runtime / ours (> 1: ours is faster) and writes JSON naming the machine.

    python benchmarks/bench_onnx.py [--repeats 7] [--out benchmarks/results/onnx.json]
"""
import argparse
import json
import os
import statistics
import tempfile
import time

import onnxruntime as ort
import torch
from torch.export import Dim

import x_transformers_cpp.onnx
from bench_encoder import machine
from x_transformers_cpp import Encoder

CASES = [(1, 1024), (4, 256)]


def export(model, path):
    batch, seq = Dim("batch"), Dim("seq")
    x, mask = torch.randn(2, 64, 512), torch.ones(2, 64, dtype=torch.bool)
    program = torch.onnx.export(model, (x,), kwargs={"mask": mask}, dynamo=True,
                                dynamic_shapes={"x": {0: batch, 1: seq}, "mask": {0: batch, 1: seq}},
                                custom_translation_table=x_transformers_cpp.onnx.translation_table())
    program.save(path)
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def median_ms(fn, repeats):
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "onnx.json"))
    args = parser.parse_args()
    torch.manual_seed(0)
    model = Encoder(dim=512, depth=6, heads=8).eval()
    with tempfile.TemporaryDirectory() as tmp:
        session = export(model, os.path.join(tmp, "encoder.onnx"))
        names = [i.name for i in session.get_inputs()]
        rows = []
        for batch, seq in CASES:
            x = torch.randn(batch, seq, 512)
            mask = torch.ones(batch, seq, dtype=torch.bool)
            mask[:, seq * 7 // 8:] = False  # padding at the end of every sequence
            with torch.no_grad():
                ours = median_ms(lambda: model(x, mask=mask), args.repeats)
            feeds = dict(zip(names, [x.numpy(), mask.numpy()]))
            onnx = median_ms(lambda: session.run(None, feeds), args.repeats)
            rows.append(dict(batch=batch, seq=seq, xtc_ms=ours, onnxruntime_ms=onnx, ratio=onnx / ours))
    print(f"machine: {machine()}; onnxruntime {ort.__version__}")
    print(f"{'case':<16}{'xtc eager ms':>14}{'onnxruntime ms':>16}{'ort / xtc':>11}")
    for r in rows:
        case = f"({r['batch']}, {r['seq']}, 512)"
        print(f"{case:<16}{r['xtc_ms']:>14.1f}{r['onnxruntime_ms']:>16.1f}{r['ratio']:>11.2f}")
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(dict(machine=machine(), onnxruntime=ort.__version__, rows=rows), f, indent=2)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
