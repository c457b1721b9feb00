"""Packed sequences on a CUDA GPU, in one run: the varlen op against our unmasked dense kernel at the same total
tokens (TFLOP/s credited on visible keys), per sequence (the default) and in one launch (the
cuda_varlen_one_launch backend), and the padded encoder batch end to end with and without unpad (fp32
with TF32, and bf16 autocast), beside x-transformers with attn_flash. Medians of interleaved runs, CUDA events;
prints a table and writes JSON. benchmarks/gpu_check.sh runs it with the cuda_varlen backend enabled (without it,
packed layers on CUDA attend in the padded frame).

    python benchmarks/bench_packed_cuda.py --backends \
        cuda_hopper_forward,cuda_hopper_backward,cuda_mma_sync,cuda_simple,varlen,cuda_varlen,math --out results/packed_cuda.json
"""
import argparse
import json
import os
import statistics

import torch

from x_transformers_cpp.backends import (Backend, add_backend_arguments, attention_backend, backend_setting,
                                         enabled_backends)


def cuda_median_ms(fns, repeats):
    for fn in fns.values():
        fn()
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times[name].append(start.elapsed_time(end))
    return {name: statistics.median(t) for name, t in times.items()}


def op_case(lengths, heads, dim_head, repeats, dtype=torch.bfloat16):
    total = sum(lengths)
    q, k, v = (torch.randn(total, heads, dim_head, device="cuda", dtype=dtype) for _ in range(3))
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32, device="cuda")
    dense = [t.unsqueeze(0) for t in (q, k, v)]  # one sequence of `total` tokens, unmasked
    others = [b for b in enabled_backends() if b != Backend.CUDA_VARLEN_ONE_LAUNCH]

    def varlen(one_launch):
        def fn():
            with attention_backend(others + [Backend.CUDA_VARLEN_ONE_LAUNCH] * one_launch):
                torch.ops.xtc.flash_attention_varlen(q, k, v, cu, cu, max(lengths), max(lengths))
        return fn
    fns = {
        "varlen": varlen(False),
        "varlen one launch": varlen(True),
        "dense unmasked": lambda: torch.ops.xtc.flash_attention(*dense, None),
    }
    ms = cuda_median_ms(fns, repeats)
    varlen_flops = sum(4 * heads * n * n * dim_head for n in lengths)
    flops = {"varlen": varlen_flops, "varlen one launch": varlen_flops,
             "dense unmasked": 4 * heads * total * total * dim_head}
    return [{"case": f"op {len(lengths)} seqs, {total} tokens, h{heads} d{dim_head}", "impl": name,
             "median_ms": t, "tflops": flops[name] / t / 1e9} for name, t in ms.items()]


def encoder_case(precision, repeats):
    from x_transformers import Encoder as XEncoder
    from x_transformers_cpp import Encoder
    torch.manual_seed(0)
    kwargs = dict(dim=512, depth=6, heads=8)
    ours = Encoder(**kwargs).cuda().eval()
    unpad = Encoder(**kwargs, unpad=True).cuda().eval()
    unpad.load_state_dict(ours.state_dict())
    theirs = XEncoder(**kwargs, attn_flash=True).cuda().eval()
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(8, 512, 512, device="cuda")
    lengths = torch.randint(128, 513, (8,), generator=torch.Generator().manual_seed(4)).cuda()
    mask = torch.arange(512, device="cuda")[None] < lengths[:, None]

    def run(model):
        def fn():
            with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=precision == "bf16"):
                model(x, mask=mask)
        return fn
    torch.backends.cuda.matmul.allow_tf32 = precision == "tf32"
    ms = cuda_median_ms({"xtc": run(ours), "xtc unpad": run(unpad), "x-transformers flash": run(theirs)}, repeats)
    return [{"case": f"padded (8,512,512) d6 h8 forward {precision}", "impl": name, "median_ms": t,
             "ratio_vs_unpad": t / ms["xtc unpad"]} for name, t in ms.items()]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "packed_cuda.json"))
    add_backend_arguments(parser)
    args = parser.parse_args()
    with backend_setting(args):
        run(args)


def run(args):
    import x_transformers_cpp  # noqa: F401
    rows = []
    g = torch.Generator().manual_seed(0)
    for count, low, high in ((8, 128, 512), (64, 64, 1024), (4, 2048, 8192)):
        lengths = torch.randint(low, high + 1, (count,), generator=g).tolist()
        for d in (64, 128):
            rows += op_case(lengths, 8, d, args.repeats)
    for precision in ("tf32", "bf16"):
        rows += encoder_case(precision, args.repeats)
    device = torch.cuda.get_device_name()
    print(f"device: {device}, backends: {','.join(b.value for b in enabled_backends())}")
    print(f"{'case':48} {'impl':22} {'median ms':>10} {'TFLOP/s':>8} {'vs unpad':>9}")
    for r in rows:
        tf = f"{r['tflops']:.1f}" if "tflops" in r else "-"
        ratio = f"{r['ratio_vs_unpad']:.2f}" if "ratio_vs_unpad" in r else "-"
        print(f"{r['case'][:48]:48} {r['impl']:22} {r['median_ms']:>10.3f} {tf:>8} {ratio:>9}")
    for case in sorted({r["case"] for r in rows if r["case"].startswith("op")}):
        t = {r["impl"]: r["tflops"] for r in rows if r["case"] == case}
        for impl in ("varlen", "varlen one launch"):
            print(f"target {impl} >= 0.9x dense TFLOP/s: {case}: {t[impl] / t['dense unmasked']:.2f}x")
    for case in sorted({r["case"] for r in rows if r["case"].startswith("padded")}):
        t = {r["impl"]: r["median_ms"] for r in rows if r["case"] == case}
        print(f"target unpad >= 1.3x padded: {case}: {t['xtc'] / t['xtc unpad']:.2f}x")
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump({"device": device, "rows": rows}, f, indent=1)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
