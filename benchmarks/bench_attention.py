"""CUDA attention benchmark: torch.ops.xtc.flash_attention against torch SDPA and each backend it can use.

Shape legend: b batch, h heads, n queries = m keys, d head dim.

FLOPs (FlashAttention's convention): forward 4 * h * d * (visible query/key pairs), which is 4*b*h*n*m*d without a
mask and about half of it when causal; backward 2.5x forward. Masked cases are credited on visible keys only.
Timings are medians of CUDA-event-timed repetitions after warm-up; peak memory is torch's allocator peak above
the inputs during one forward+backward. The SDPA math backend is skipped for n >= 8192 (its n x n fp32 scores
exceed the memory budget). SDPA gets the masks it can take: a (b, 1, 1, m) bool mask for padding, a dense bool
(n, m) mask for causal+padding and the window, a dense float bias for ALiBi.

    python benchmarks/bench_attention.py [--quick] [--out benchmarks/results/attention_cuda.json]
"""
from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

import x_transformers_cpp  # noqa: F401  (registers torch.ops.xtc.*)
from x_transformers_cpp.backends import add_backend_arguments, backend_setting

CASES = ["none", "padding", "causal+padding", "alibi", "window256"]
SDPA_BACKENDS = {"sdpa-flash": SDPBackend.FLASH_ATTENTION, "sdpa-cudnn": SDPBackend.CUDNN_ATTENTION,
                 "sdpa-efficient": SDPBackend.EFFICIENT_ATTENTION, "sdpa-math": SDPBackend.MATH}


def time_ms(fn, warmup, reps):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def make_case(case, b, h, n, d, generator):
    dev, dtype = "cuda", torch.bfloat16
    q, k, v, dout = (torch.randn(b, n, h, d, generator=generator).to(dev, dtype) for _ in range(4))
    i = torch.arange(n, device=dev)[:, None]
    j = torch.arange(n, device=dev)[None, :]
    ours = dict(key_padding_mask=None, causal=False, alibi_slopes=None, window_left=-1, window_right=-1)
    sdpa = dict(attn_mask=None, is_causal=False)
    band = torch.ones(n, n, dtype=torch.bool, device=dev)
    keep = torch.ones(b, n, dtype=torch.bool, device=dev)
    if case in ("padding", "causal+padding"):
        lengths = torch.randint(n // 2, n + 1, (b,), generator=generator).to(dev)
        keep = j.expand(b, n) < lengths[:, None]
        ours["key_padding_mask"] = keep
        sdpa["attn_mask"] = keep[:, None, None, :]
    if case == "causal+padding":
        ours["causal"] = True
        band = j <= i
        sdpa["attn_mask"] = band[None, None] & keep[:, None, None, :]
    if case == "alibi":
        slopes = torch.tensor([2.0 ** (-8.0 * (x + 1) / h) for x in range(h)], device=dev)
        ours["alibi_slopes"] = slopes
        sdpa["attn_mask"] = (-slopes[:, None, None] * (i - j).abs()).to(dtype)[None]
    if case == "window256":
        ours["window_left"] = ours["window_right"] = 256
        band = (j >= i - 256) & (j <= i + 256)
        sdpa["attn_mask"] = band[None, None]
    visible_pairs = (band[None] & keep[:, None, :]).sum().item()
    return (q, k, v, dout), ours, sdpa, visible_pairs


def bench_ours(tensors, kw, warmup, reps):
    q, k, v, dout = tensors
    op, op_bwd = torch.ops.xtc.flash_attention, torch.ops.xtc.flash_attention_backward
    args = (kw["key_padding_mask"], kw["causal"], None, kw["alibi_slopes"], kw["window_left"], kw["window_right"], 0.0)

    def fwd():
        return op(q, k, v, key_padding_mask=args[0], causal=args[1], alibi_slopes=args[3], window_left=args[4],
                  window_right=args[5])

    out, lse = fwd()

    def bwd():
        return op_bwd(dout, q, k, v, out, lse, *args)

    def fwd_bwd():
        o, l = fwd()
        return op_bwd(dout, q, k, v, o, l, *args)

    return time_ms(fwd, warmup, reps), time_ms(bwd, warmup, reps), time_ms(fwd_bwd, warmup, reps), fwd_bwd


def bench_sdpa(tensors, kw, backend, warmup, reps):
    q, k, v, dout = (t.transpose(1, 2).contiguous() for t in tensors)  # SDPA wants (b, h, n, d)
    q, k, v = (t.requires_grad_() for t in (q, k, v))
    with sdpa_kernel(backend):
        def fwd():
            return F.scaled_dot_product_attention(q, k, v, **kw)

        def fwd_bwd():
            torch.autograd.grad(fwd(), (q, k, v), dout)

        fwd_bwd()  # raises here when the backend cannot take this case
        t_fwd = time_ms(fwd, warmup, reps)
        out = fwd()
        t_bwd = time_ms(lambda: torch.autograd.grad(out, (q, k, v), dout, retain_graph=True), warmup, reps)
        t_all = time_ms(fwd_bwd, warmup, reps)
    return t_fwd, t_bwd, t_all, fwd_bwd


def peak_mib(fn):
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="d=128, n in {2048, 8192} only")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/attention_cuda.json"))
    parser.add_argument("--reps", type=int, default=None)
    parser.add_argument("--head-dims", type=int, nargs="+", help="override the head dims of the grid")
    parser.add_argument("--lengths", type=int, nargs="+", help="override the sequence lengths of the grid")
    parser.add_argument("--cases", nargs="+", choices=CASES, help="override the mask cases")
    parser.add_argument("--ours-only", action="store_true", help="skip the SDPA peers (A/B runs of our kernels)")
    add_backend_arguments(parser)
    args = parser.parse_args()
    with backend_setting(args):
        run(args)


def run(args):
    head_dims = args.head_dims or ([128] if args.quick else [64, 128])
    lengths = args.lengths or ([2048, 8192] if args.quick else [512, 2048, 8192, 16384])
    cases = args.cases or CASES
    reps = args.reps or (5 if args.quick else 20)
    warmup = 2 if args.quick else 5
    heads = 16
    gpu = torch.cuda.get_device_name()
    print(f"GPU: {gpu}, torch {torch.__version__}, bf16, {heads} heads, b = 16384 // n, median of {reps} reps")

    rows = []
    generator = torch.Generator().manual_seed(0)
    for d in head_dims:
        for n in lengths:
            b = 16384 // n
            for case in cases:
                tensors, ours_kw, sdpa_kw, pairs = make_case(case, b, heads, n, d, generator)
                flops_fwd = 4.0 * heads * d * pairs
                impls = {"xtc": lambda: bench_ours(tensors, ours_kw, warmup, reps)}
                for name, backend in ({} if args.ours_only else SDPA_BACKENDS).items():
                    impls[name] = (lambda backend=backend: bench_sdpa(tensors, sdpa_kw, backend, warmup, reps))
                for name, run in impls.items():
                    row = dict(case=case, d=d, n=n, b=b, h=heads, impl=name)
                    if name == "sdpa-math" and n >= 8192:
                        row["status"] = "skipped (memory)"
                    else:
                        try:
                            t_fwd, t_bwd, t_all, fwd_bwd = run()
                            row.update(status="ok", fwd_ms=t_fwd, bwd_ms=t_bwd, fwd_bwd_ms=t_all,
                                       fwd_tflops=flops_fwd / t_fwd / 1e9, bwd_tflops=2.5 * flops_fwd / t_bwd / 1e9,
                                       fwd_bwd_tflops=3.5 * flops_fwd / t_all / 1e9, peak_mib=peak_mib(fwd_bwd))
                        except (RuntimeError, torch.OutOfMemoryError) as err:
                            row["status"] = "unsupported: " + str(err).splitlines()[0][:80]
                        torch.cuda.empty_cache()
                    rows.append(row)
                    print(json.dumps(row), flush=True)
                del tensors
                torch.cuda.empty_cache()

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(dict(gpu=gpu, torch=torch.__version__, dtype="bf16", rows=rows), indent=1))
    header = f"{'case':<15} {'d':>4} {'n':>6} {'impl':<15} {'fwd TF/s':>9} {'bwd TF/s':>9} {'f+b TF/s':>9} " \
             f"{'f+b ms':>8} {'peak MiB':>9}  speed vs xtc"
    print(f"\n{gpu}\n{header}\n{'-' * len(header)}")
    ours = {(r["case"], r["d"], r["n"]): r for r in rows if r["impl"] == "xtc" and r["status"] == "ok"}
    for r in rows:
        key = f"{r['case']:<15} {r['d']:>4} {r['n']:>6} {r['impl']:<15}"
        if r["status"] != "ok":
            print(f"{key} {r['status']}")
            continue
        base = ours.get((r["case"], r["d"], r["n"]))
        ratio = f"{base['fwd_bwd_ms'] / r['fwd_bwd_ms']:.2f}x" if base else "-"
        print(f"{key} {r['fwd_tflops']:>9.1f} {r['bwd_tflops']:>9.1f} {r['fwd_bwd_tflops']:>9.1f} "
              f"{r['fwd_bwd_ms']:>8.2f} {r['peak_mib']:>9.0f}  {ratio}")
    print(f"\nSummary: ours against the fastest SDPA backend that takes the case (forward+backward time)")
    print(f"{'case':<15} {'d':>4} {'n':>6} {'ours fwd/bwd/f+b TF/s':>22} {'fastest SDPA':>15} {'its f+b':>8} "
          f"{'ratio':>6} {'MiB ours/SDPA':>14}")
    for (case, d, n), base in ours.items():
        peers = [r for r in rows if (r["case"], r["d"], r["n"]) == (case, d, n) and r["impl"] != "xtc"
                 and r["status"] == "ok"]
        tf = f"{base['fwd_tflops']:.0f}/{base['bwd_tflops']:.0f}/{base['fwd_bwd_tflops']:.0f}"
        if not peers:
            print(f"{case:<15} {d:>4} {n:>6} {tf:>22} {'-':>15}")
            continue
        best = min(peers, key=lambda r: r["fwd_bwd_ms"])
        print(f"{case:<15} {d:>4} {n:>6} {tf:>22} {best['impl']:>15} {best['fwd_bwd_tflops']:>8.0f} "
              f"{best['fwd_bwd_ms'] / base['fwd_bwd_ms']:>5.2f}x {base['peak_mib']:>6.0f}/{best['peak_mib']:<7.0f}")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
