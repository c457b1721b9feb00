"""The encoder end to end on a CUDA GPU against its peers, in one run: x-transformers with attn_flash off and on
(the same weights) and torch's TransformerEncoder, in fp32 at matmul precision 'highest' and 'high', under bf16
autocast, and as a bf16 module. Cases: the seed shape (1, 1024, 512) depth 6 heads 8; the padded batch
(8, 512, 512) with lengths U[128, 512]; a long batch (2, 16384, 512) depth 2 with 25 % padding. Forward (eval,
no_grad) and a training step (forward, mean square, backward). Ours by default, with unpad on padded batches,
with the cuda_sdpa_fp32 route and the cuda_fp32_tensor_cores forward in fp32, and (--precisions fp32-medium)
with the cuda_fp32_as_bf16 route at 'medium'. Medians of interleaved calls (CUDA events), peak memory per call,
ratios against the faster x-transformers mode, the targets (>= 1.0x; >= 1.3x on padded batches, unpad allowed)
checked, JSON naming the GPU. benchmarks/gpu_check.sh runs it.

    python benchmarks/bench_encoder_cuda.py [--repeats 10] [--cases seed,padded,long] [--out results/encoder_cuda.json]
    python benchmarks/bench_encoder_cuda.py --dry-run      # the plumbing on the CPU, tiny shapes
"""
import argparse
import json
import os
import statistics
import time
from contextlib import nullcontext

import torch

PRECISIONS = ("fp32-highest", "fp32-high", "bf16-autocast", "bf16-module")
# Also timed on request (--precisions): fp32 at matmul precision 'medium', where ours may take the bf16 kernels.
EXTRA_PRECISIONS = ("fp32-medium",)
# The opt-in routes, each timed as its own row of ours.
ROUTES = {"xtc sdpa-fp32": "CUDA_SDPA_FP32", "xtc fp32-tensor-cores": "CUDA_FP32_TENSOR_CORES",
          "xtc fp32-as-bf16": "CUDA_FP32_AS_BF16"}
PADDED = ("padded", "long")


def case_shapes(dry_run):
    """name -> (batch, seq, dim, depth, heads, lengths or None)."""
    g = torch.Generator().manual_seed(4)
    if dry_run:
        return {"seed": (1, 48, 32, 2, 4, None),
                "padded": (3, 40, 32, 2, 4, torch.randint(10, 41, (3,), generator=g)),
                "long": (2, 96, 32, 1, 4, torch.tensor([72, 72]))}
    return {"seed": (1, 1024, 512, 6, 8, None),
            "padded": (8, 512, 512, 6, 8, torch.randint(128, 513, (8,), generator=g)),
            "long": (2, 16384, 512, 2, 8, torch.tensor([12288, 12288]))}


def torch_encoder(dim, depth, heads):
    layer = torch.nn.TransformerEncoderLayer(dim, heads, 4 * dim, dropout=0.0, activation="gelu",
                                             batch_first=True, norm_first=True)
    return torch.nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)


def models(dim, depth, heads, padded):
    """Our encoders (default, unpad) and the peers, the x-transformers ones with our weights."""
    from x_transformers import Encoder as XEncoder
    from x_transformers_cpp import Encoder
    torch.manual_seed(0)
    kwargs = dict(dim=dim, depth=depth, heads=heads)
    ours = Encoder(**kwargs)
    built = {"xtc": ours}
    if padded:
        built["xtc unpad"] = Encoder(**kwargs, unpad=True)
    built["x-transformers"] = XEncoder(**kwargs)
    built["x-transformers flash"] = XEncoder(**kwargs, attn_flash=True)
    for name, model in built.items():
        if name != "xtc":
            model.load_state_dict(ours.state_dict())
    built["torch TransformerEncoder"] = torch_encoder(dim, depth, heads)
    return built


def call(model, x, mask, name):
    if name.startswith("torch"):
        return model(x, src_key_padding_mask=None if mask is None else ~mask)
    return model(x, mask=mask)


def elapsed_ms(fn, device):
    """One call's time: CUDA events on the GPU, the host clock on the CPU (dry run)."""
    if device != "cuda":
        t0 = time.perf_counter()
        fn()
        return (time.perf_counter() - t0) * 1e3
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end)


def first_call(fn, device):
    """Runs fn once (warm-up); its peak memory in MiB above the allocation before it (None off CUDA)."""
    if device != "cuda":
        fn()
        return None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - before) / 2**20


def timed(fns, repeats, device):
    """Median ms of each fn, interleaved; its peak memory; and the error of each fn that failed its first call
    (out of memory, say), left out of the timing."""
    peaks, failed = {}, {}
    for name, fn in list(fns.items()):
        try:
            peaks[name] = first_call(fn, device)
        except RuntimeError as e:  # torch.cuda.OutOfMemoryError is one
            failed[name] = str(e).splitlines()[0][:120]
            del fns[name]
            if device == "cuda":
                torch.cuda.empty_cache()
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            times[name].append(elapsed_ms(fn, device))
    return {name: statistics.median(t) for name, t in times.items()}, peaks, failed


def step_fn(model, name, x, mask, mode, precision, device):
    from x_transformers_cpp.backends import Backend, attention_backend, enabled_backends
    route = getattr(Backend, ROUTES[name]) if name in ROUTES else None
    dtype = torch.bfloat16 if precision == "bf16-module" else torch.float32
    inputs = x.to(dtype)

    def fn():
        setting = attention_backend([*enabled_backends(), route]) if route else nullcontext()
        with torch.autocast(device, dtype=torch.bfloat16, enabled=precision == "bf16-autocast"), setting:
            if mode == "forward":
                with torch.no_grad():
                    call(model, inputs, mask, name)
            else:
                call(model, inputs, mask, name).float().pow(2).mean().backward()
    return fn


def run_case(case, shape, mode, precision, repeats, device):
    batch, seq, dim, depth, heads, lengths = shape
    x = torch.randn(batch, seq, dim, device=device)
    mask = None if lengths is None else torch.arange(seq, device=device)[None] < lengths.to(device)[:, None]
    matmul_precision = precision[len("fp32-"):] if precision.startswith("fp32") else "highest"
    torch.set_float32_matmul_precision(matmul_precision)
    built = models(dim, depth, heads, case in PADDED)
    if precision.startswith("fp32"):
        built["xtc sdpa-fp32"] = built["xtc"]
        built["xtc fp32-tensor-cores"] = built["xtc"]
    if precision == "fp32-medium":
        built["xtc fp32-as-bf16"] = built["xtc"]
    fns = {}
    for name, model in built.items():
        model = model.to(device).to(torch.bfloat16 if precision == "bf16-module" else torch.float32)
        model.train(mode == "train")
        fns[name] = step_fn(model, name, x, mask, mode, precision, device)
    ms, peaks, failed = timed(fns, repeats, device)
    key = {"case": case, "mode": mode, "precision": precision}
    rows = [{**key, "impl": name, "error": error} for name, error in failed.items()]
    peers = [ms[n] for n in ("x-transformers", "x-transformers flash") if n in ms]
    best_xt = min(peers) if peers else float("nan")
    for name, t in ms.items():
        rows.append({**key, "impl": name, "median_ms": t, "peak_mib": peaks.get(name),
                     "speedup_vs_best_xt": best_xt / t})
    ours = [t for name, t in ms.items() if name.startswith("xtc")]
    if ours and peers:
        target, speedup = 1.3 if case in PADDED else 1.0, best_xt / min(ours)
        rows.append({**key, "impl": "target", "speedup_vs_best_xt": speedup, "target": target,
                     "met": speedup >= target})
    return rows


def print_table(device_name, rows):
    print(f"device: {device_name}")
    print(f"{'case':7} {'mode':8} {'precision':14} {'impl':24} {'median ms':>10} {'peak MiB':>9} {'vs best xt':>10}")
    for r in rows:
        head = f"{r['case']:7} {r['mode']:8} {r['precision']:14} {r['impl']:24}"
        if "error" in r:
            print(f"{head} failed: {r['error'][:60]}")
        elif r["impl"] != "target":
            peak = "-" if r["peak_mib"] is None else f"{r['peak_mib']:.0f}"
            print(f"{head} {r['median_ms']:>10.2f} {peak:>9} {r['speedup_vs_best_xt']:>9.2f}x")
    print("Summary: ours (the fastest of default / unpad / the opt-in routes) against the faster x-transformers mode")
    for r in rows:
        if r["impl"] == "target":
            print(f"  {r['case']:7} {r['mode']:8} {r['precision']:14} {r['speedup_vs_best_xt']:6.2f}x "
                  f"(target {r['target']}x: {'met' if r['met'] else 'NOT MET'})")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--cases", default="seed,padded,long")
    parser.add_argument("--modes", default="forward,train")
    parser.add_argument("--precisions", default=",".join(PRECISIONS),
                        help=f"comma list of {', '.join(PRECISIONS + EXTRA_PRECISIONS)}")
    parser.add_argument("--dry-run", action="store_true", help="tiny shapes on the CPU: checks the plumbing only")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "encoder_cuda.json"))
    args = parser.parse_args()
    device = "cpu" if args.dry_run else "cuda"
    shapes = case_shapes(args.dry_run)
    rows = []
    for case in args.cases.split(","):
        for mode in args.modes.split(","):
            for precision in args.precisions.split(","):
                rows += run_case(case, shapes[case], mode, precision, 2 if args.dry_run else args.repeats, device)
    name = torch.cuda.get_device_name() if device == "cuda" else "CPU (dry run: plumbing only, not a measurement)"
    print_table(name, rows)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump({"device": name, "torch": torch.__version__, "rows": rows}, f, indent=1)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
