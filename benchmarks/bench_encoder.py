"""Encoder speed on the CPU: x_transformers_cpp against its peers, in one run, in fp32 and under bf16 autocast.

Peers: x-transformers' Encoder with attn_flash=False and attn_flash=True (same weights), torch's
nn.TransformerEncoder (same width, depth, heads, GELU, pre-norm, batch_first; eval mode so its fused fast path can
run; on the padded batches also a post-norm one with nested tensors on, torch's own unpadding, which it refuses
for pre-norm); ours also with unpad=True on the padded batches (the variable-length targets); at op level torch's
scaled_dot_product_attention against xtc::flash_attention with the same mask, in fp32 and in bf16. Every encoder
case runs in fp32 and under torch.autocast("cpu", dtype=torch.bfloat16), each peer in the same precision. The
machine's fp32 and bf16 GEMM rates are measured in the same run, a 1024^3 matmul timed interleaved with each case's
implementations, and each case (the attention op included) is reported as a fraction of the FLOP roofline of its
precision at that case's rate (JSON: gemm_gflops); the bf16 summary sets them against the bf16 targets.

Each case runs every implementation interleaved (A B C A B C ...) after a warm-up, and reports medians and ratios
(peer time / our time, so > 1 means we are faster). Long-sequence cases run each implementation in a fresh
subprocess for a clean peak-memory figure (ru_maxrss). Results go to JSON (and a PNG plot with --plot).

    python benchmarks/bench_encoder.py                  # seed shape + padded batch + op level
    python benchmarks/bench_encoder.py --long           # also n in {2k, 8k, 32k}, depth 2, dim 256, heads 4
    python benchmarks/bench_encoder.py --only-long      # just those
    python benchmarks/bench_encoder.py --quick --op --precisions bf16   # the CPU bf16 roofline cases alone
"""
import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

import torch

from x_transformers_cpp import Encoder

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


# ---------------------------------------------------------------------------------------------------- machine

def machine():
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "threads": torch.get_num_threads(), "torch": torch.__version__,
            "python": platform.python_version()}


def gemm_gflops(n=1024, repeats=10, dtype=torch.float32):
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    torch.mm(a, b)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b)
        times.append(time.perf_counter() - start)
    return 2 * n ** 3 / statistics.median(times) / 1e9


def encoder_flops(batch, seq, dim, depth, heads, dim_head=64, visible_fraction=1.0, backward=False):
    """Matmul FLOPs of the default encoder; attention credited on visible keys only."""
    inner = heads * dim_head
    projections = 2 * batch * seq * dim * (3 * inner + inner)        # q, k, v, out
    ff = 2 * batch * seq * dim * (4 * dim) * 2
    attention = 4 * batch * heads * seq * seq * dim_head * visible_fraction
    forward = depth * (projections + ff + attention)
    return forward * 3 if backward else forward                      # backward ~ 2x forward


# ---------------------------------------------------------------------------------------------------- models

def build_models(dim, depth, heads, which, train=False):
    from x_transformers import Encoder as XEncoder
    torch.manual_seed(0)
    ours = Encoder(dim=dim, depth=depth, heads=heads)
    models = {"xtc": ours}
    if "xtc_unpad" in which:
        models["xtc unpad"] = Encoder(dim=dim, depth=depth, heads=heads, unpad=True)
        models["xtc unpad"].load_state_dict(ours.state_dict())
    if "xt" in which:
        models["x-transformers"] = XEncoder(dim=dim, depth=depth, heads=heads, attn_flash=False)
    if "xt_flash" in which:
        models["x-transformers flash"] = XEncoder(dim=dim, depth=depth, heads=heads, attn_flash=True)
    for name in ("x-transformers", "x-transformers flash"):
        if name in models:
            models[name].load_state_dict(ours.state_dict())
    if "torch" in which and not train:
        layer = torch.nn.TransformerEncoderLayer(dim, heads, 4 * dim, dropout=0.0, activation="gelu",
                                                 batch_first=True, norm_first=True)
        models["torch TransformerEncoder"] = torch.nn.TransformerEncoder(
            layer, depth, norm=torch.nn.LayerNorm(dim), enable_nested_tensor=False)
    if "torch_nested" in which:
        # torch converts padded batches to nested tensors only for post-norm layers; the same FLOPs as ours.
        layer = torch.nn.TransformerEncoderLayer(dim, heads, 4 * dim, dropout=0.0, activation="gelu",
                                                 batch_first=True, norm_first=False)
        models["torch nested (post-norm)"] = torch.nn.TransformerEncoder(layer, depth, enable_nested_tensor=True)
    return models


def call(name, model, x, mask):
    if name.startswith("torch"):
        return model(x, src_key_padding_mask=~mask)  # torch: True = pad
    return model(x, mask=mask)


def fast_path_ran(model, x, mask, precision):
    """Whether nn.TransformerEncoder takes its fused inference path (torch._transformer_encoder_layer_fwd)."""
    with torch.no_grad(), torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        in_precision(lambda: call("torch", model, x, mask), precision)()  # as timed: eval mode, no grad
    return any("_transformer_encoder_layer_fwd" in e.name for e in prof.events())


GEMM = "GEMM 1024^3"  # the roofline's yardstick, timed among each case's implementations


def gemm_fn(precision):
    """One 1024^3 matmul in the precision's dtype; timed interleaved with a case's implementations, so that the
    case's roofline uses the rate the machine gave in the same rounds (this VM's speed drifts by 20 % and more)."""
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    a, b = torch.randn(1024, 1024, dtype=dtype), torch.randn(1024, 1024, dtype=dtype)
    return lambda: torch.mm(a, b)


def gemm_rate(medians):
    """GFLOP/s of the interleaved GEMM, taken out of a case's medians."""
    return 2 * 1024 ** 3 / medians.pop(GEMM) / 1e9


def time_interleaved(fns, repeats, warmup=1):
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def in_precision(fn, precision):
    """fn as the user runs it in `precision`: fp32 as is, or under CPU bf16 autocast."""
    if precision == "fp32":
        return fn

    def run():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            fn()
    return run


def encoder_case(label, batch, seq, dim, depth, heads, lengths, repeats, train, precision="fp32",
                 varlen=False, peers=("xt", "xt_flash", "torch")):
    """One case; varlen adds ours with unpad=True and (forward) torch's nested-tensor encoder. The roofline counts
    the padded batch's FLOPs, attention on visible keys."""
    label = f"{label} {precision}"
    torch.manual_seed(1)
    x = torch.randn(batch, seq, dim)
    mask = torch.arange(seq)[None, :] < lengths[:, None]
    visible = (mask.float().sum(1) ** 2).sum().item() / (batch * seq * seq)
    which = peers + (("xtc_unpad",) + (() if train else ("torch_nested",)) if varlen else ())
    models = build_models(dim, depth, heads, which, train)
    rows = []
    if train:
        grad = torch.randn(batch, seq, dim)
        xs = {name: x.clone().requires_grad_() for name in models}

        def step(name, model):
            def run():
                model.zero_grad(set_to_none=True)
                call(name, model, xs[name], mask).backward(grad)
            return run

        for model in models.values():
            model.train()
        medians = time_interleaved({**{n: in_precision(step(n, m), precision) for n, m in models.items()},
                                    GEMM: gemm_fn(precision)}, repeats)
    else:
        for model in models.values():
            model.eval()

        def forward(name, model):
            def run():
                with torch.no_grad():
                    call(name, model, x, mask)
            return run

        fns = {n: in_precision(forward(n, m), precision) for n, m in models.items()}
        failed = {}
        for name in [n for n in fns if n != "xtc"]:
            try:
                fns[name]()
            except RuntimeError as e:  # e.g. torch's nested fast path under CPU bf16 autocast
                failed[name] = str(e).splitlines()[0][:120]
                del fns[name]
        medians = time_interleaved({**fns, GEMM: gemm_fn(precision)}, repeats)
        rows += [{"case": label, "impl": name, "precision": precision, "failed": why} for name, why in failed.items()]
    gflops = gemm_rate(medians)
    flops = encoder_flops(batch, seq, dim, depth, heads, visible_fraction=visible, backward=train)
    extra = {}
    if "torch TransformerEncoder" in medians:
        extra["torch fast path ran"] = fast_path_ran(models["torch TransformerEncoder"], x, mask, precision)
    for name, seconds in medians.items():
        rows.append({"case": label, "impl": name, "precision": precision, "median_ms": seconds * 1e3,
                     "ratio_vs_xtc": seconds / medians["xtc"], "kept_fraction": mask.float().mean().item(),
                     "roofline_fraction": flops / seconds / 1e9 / gflops, "gemm_gflops": gflops, **extra})
    for r in rows:  # as it goes, so that a long run killed later still reports
        print({k: (round(v, 3) if isinstance(v, float) else v) for k, v in r.items()}, flush=True)
    return rows


def attention_op_case(seq, heads, dim_head, repeats, padded, dtype=torch.float32):
    """xtc::flash_attention vs torch SDPA on (1, seq, heads, dim_head) with a key padding mask, in `dtype`; the
    roofline fraction against the GEMM rate in that dtype, timed interleaved with them."""
    torch.manual_seed(2)
    q, k, v = (torch.randn(1, seq, heads, dim_head, dtype=dtype) for _ in range(3))
    mask = torch.ones(1, seq, dtype=torch.bool)
    if padded:
        mask[:, int(seq * 0.75):] = False
    sdpa_mask = mask[:, None, None, :]
    qt, kt, vt = (t.transpose(1, 2).contiguous() for t in (q, k, v))
    fns = {
        "xtc": lambda: torch.ops.xtc.flash_attention(q, k, v, mask if padded else None),
        "torch sdpa": lambda: torch.nn.functional.scaled_dot_product_attention(
            qt, kt, vt, attn_mask=sdpa_mask if padded else None),
    }
    precision = "bf16" if dtype == torch.bfloat16 else "fp32"
    with torch.no_grad():
        medians = time_interleaved({**fns, GEMM: gemm_fn(precision)}, repeats)
    rate = gemm_rate(medians)
    label = f"attention op n={seq} {'25% padded' if padded else 'no mask'} {precision}"
    visible = mask.float().mean().item()
    tflops = 4 * heads * seq * seq * dim_head * visible / 1e9
    return [{"case": label, "impl": name, "precision": precision, "median_ms": s * 1e3,
             "ratio_vs_xtc": s / medians["xtc"], "gflops": tflops / s, "roofline_fraction": tflops / s / rate,
             "gemm_gflops": rate}
            for name, s in medians.items()]


# ---------------------------------------------------------------------------------------------------- long sequences

def peak_rss_mib():
    """This process's peak resident set (VmHWM). Unlike ru_maxrss it is not inherited across fork + exec."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM")) / 1024


def long_case_child(impl, seq):
    """Runs in a fresh process: one masked forward, prints seconds and peak RSS (MiB)."""
    dim, depth, heads = 256, 2, 4
    torch.manual_seed(3)
    x = torch.randn(1, seq, dim)
    mask = torch.ones(1, seq, dtype=torch.bool)
    mask[:, int(seq * 0.75):] = False
    model = build_models(dim, depth, heads, {"xtc": (), "x-transformers": ("xt",),
                                             "x-transformers flash": ("xt_flash",)}[impl])[impl].eval()
    before = peak_rss_mib()
    with torch.no_grad():
        start = time.perf_counter()
        model(x, mask=mask)
        seconds = time.perf_counter() - start
    print(json.dumps({"seconds": seconds, "peak_mib": peak_rss_mib(), "baseline_mib": before}))


def long_cases(lengths, timeout):
    rows = []
    for seq in lengths:
        for impl in ("xtc", "x-transformers", "x-transformers flash"):
            cmd = [sys.executable, __file__, "--child", impl, str(seq), "--threads", str(torch.get_num_threads())]
            try:
                done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
                result = json.loads(done.stdout.strip().splitlines()[-1]) if done.returncode == 0 else {
                    "failed": (done.stderr.strip().splitlines() or ["exit %d" % done.returncode])[-1][:200]}
            except subprocess.TimeoutExpired:
                result = {"failed": f"timed out after {timeout} s"}
            rows.append({"case": f"long n={seq} (depth 2, dim 256, 25% padded)", "impl": impl, "seq": seq, **result})
            print(rows[-1], flush=True)
    return rows


# ---------------------------------------------------------------------------------------------------- report

def print_table(rows):
    for r in rows:
        if "torch fast path ran" in r and r["impl"].startswith("torch"):
            print(f"{r['case']}: torch TransformerEncoder fast path ran: {r['torch fast path ran']}")
    print(f"\n{'case':54} {'impl':26} {'median ms':>10} {'peer/xtc':>9} {'roofline':>9} {'peak MiB':>9}")
    for r in rows:
        ms = f"{r['median_ms']:.1f}" if "median_ms" in r else (f"{r['seconds'] * 1e3:.0f}" if "seconds" in r else "-")
        ratio = f"{r['ratio_vs_xtc']:.2f}" if "ratio_vs_xtc" in r else "-"
        roof = f"{r['roofline_fraction']:.0%}" if "roofline_fraction" in r else "-"
        peak = f"{r['peak_mib']:.0f}" if "peak_mib" in r else (r.get("failed", "-")[:9])
        print(f"{r['case'][:54]:54} {r['impl'][:26]:26} {ms:>10} {ratio:>9} {roof:>9} {peak:>9}")


# The variable-length targets (the padded batches): unpad against our padded path and the faster x-transformers
# mode, in the same precision.
VARLEN_TARGETS = {"forward": (1.4, 1.8), "train step": (1.3, None)}
LONG_TARGET = 1.3


def print_varlen_summary(rows):
    lines = []
    for case in sorted({r["case"] for r in rows if r["impl"] == "xtc unpad"}):
        t = {r["impl"]: r["median_ms"] for r in rows if r["case"] == case and "median_ms" in r}
        kind = "train step" if "train" in case else "forward"
        vs_padded = t["xtc"] / t["xtc unpad"]
        own, peer = VARLEN_TARGETS[kind]
        if case.startswith("long"):
            own = LONG_TARGET
        parts = [f"unpad vs our padded {vs_padded:.2f}x (target {own}x)"]
        peers = [t[n] for n in ("x-transformers", "x-transformers flash") if n in t]
        if peers:
            parts.append(f"vs faster x-transformers mode {min(peers) / t['xtc unpad']:.2f}x"
                         + (f" (target {peer}x)" if peer and not case.startswith("long") else ""))
        if "torch nested (post-norm)" in t:
            parts.append(f"vs torch nested {t['torch nested (post-norm)'] / t['xtc unpad']:.2f}x")
        failed = [r["impl"] for r in rows if r["case"] == case and "failed" in r]
        if failed:
            parts.append(f"failed: {', '.join(failed)}")
        kept = next(r["kept_fraction"] for r in rows if r["case"] == case and "kept_fraction" in r)
        lines.append(f"{case} ({kept:.0%} of tokens kept): " + ", ".join(parts))
    if lines:
        print("\nvariable-length summary:\n  " + "\n  ".join(lines))


# bf16 on this CPU: fractions of the bf16 GEMM rate (1024^3 matmul) timed interleaved with the case.
BF16_ROOFLINE_TARGETS = {"forward": 0.80, "train": 0.70, "op": 0.70}


def print_bf16_summary(rows):
    """bf16 autocast against our own fp32 and against the faster x-transformers mode in bf16: the CPU targets."""
    def ms(case, impl):
        return next((r["median_ms"] for r in rows if r["case"] == case and r["impl"] == impl), None)
    lines = []
    for case in sorted({r["case"].rsplit(" ", 1)[0] for r in rows if r.get("precision") == "bf16"}):
        ours_bf16, ours_fp32 = ms(f"{case} bf16", "xtc"), ms(f"{case} fp32", "xtc")
        peers = [t for t in (ms(f"{case} bf16", "x-transformers"), ms(f"{case} bf16", "x-transformers flash"))
                 if t is not None]
        sdpa = ms(f"{case} bf16", "torch sdpa")
        parts = []
        if ours_fp32:
            parts.append(f"bf16 vs our fp32 {ours_fp32 / ours_bf16:.2f}x")
        if peers:
            parts.append(f"vs faster x-transformers mode in bf16 {min(peers) / ours_bf16:.2f}x")
        if sdpa:
            parts.append(f"vs SDPA in bf16 {sdpa / ours_bf16:.2f}x")
        roof = next((r["roofline_fraction"] for r in rows if r["case"] == f"{case} bf16" and r["impl"] == "xtc"
                     and "roofline_fraction" in r), None)
        if roof is not None:
            target = BF16_ROOFLINE_TARGETS["forward" if "forward" in case else "train" if "train" in case else "op"]
            parts.append(f"{roof:.0%} of the bf16 GEMM roofline (target {target:.0%})")
        lines.append(f"{case}: " + ", ".join(parts))
    if lines:
        print("\nbf16 autocast summary:\n  " + "\n  ".join(lines))


def plot(rows, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    long_rows = [r for r in rows if "seq" in r]
    if not long_rows:
        return
    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(11, 4))
    for impl in sorted({r["impl"] for r in long_rows}):
        pts = [r for r in long_rows if r["impl"] == impl and "seconds" in r]
        ax_t.plot([r["seq"] for r in pts], [r["seconds"] for r in pts], "o-", label=impl)
        ax_m.plot([r["seq"] for r in pts], [r["peak_mib"] for r in pts], "o-", label=impl)
    for ax, label in ((ax_t, "forward seconds"), (ax_m, "peak RSS (MiB)")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("sequence length")
        ax.set_ylabel(label)
        ax.legend()
    fig.suptitle("Encoder depth 2, dim 256, heads 4, 25% padded, CPU")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--long", action="store_true", help="also the long-sequence memory cases")
    parser.add_argument("--long-lengths", default="2048,8192,32768")
    parser.add_argument("--long-timeout", type=int, default=600)
    parser.add_argument("--quick", action="store_true", help="seed shape only")
    parser.add_argument("--op", action="store_true", help="with --quick: the attention op cases too")
    parser.add_argument("--varlen-long", action="store_true",
                        help="also the long variable-length batch (4, 8192, 256), lengths in [2048, 8192]")
    parser.add_argument("--only-long", action="store_true", help="only the long-sequence memory cases")
    parser.add_argument("--precisions", default="fp32,bf16", help="fp32 and/or bf16 (CPU autocast), comma-separated")
    parser.add_argument("--out", default=os.path.join(RESULTS, "encoder_cpu.json"))
    parser.add_argument("--plot", default=os.path.join(RESULTS, "encoder_cpu.png"))
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.child:
        return long_case_child(args.child[0], int(args.child[1]))

    info = machine()
    info["gemm_gflops"] = gemm_gflops()
    info["bf16_gemm_gflops"] = gemm_gflops(dtype=torch.bfloat16)
    info["cpu_has_avx512_bf16"] = "avx512_bf16" in open("/proc/cpuinfo").read()
    print(f"machine: {info}", flush=True)
    rows = []
    if args.only_long:
        args.long, args.quick = True, True
    seed_lengths = torch.tensor([1024])
    precisions = args.precisions.split(",")
    for precision in precisions if not args.only_long else ():
        rows += encoder_case("seed (1,1024,512) d6 h8 forward", 1, 1024, 512, 6, 8, seed_lengths, args.repeats,
                             train=False, precision=precision)
        rows += encoder_case("seed (1,1024,512) d6 h8 train step", 1, 1024, 512, 6, 8, seed_lengths, args.repeats,
                             train=True, precision=precision)
        if not args.quick:
            lengths = torch.randint(128, 513, (8,), generator=torch.Generator().manual_seed(4))
            rows += encoder_case("padded (8,512,512) d6 h8 forward", 8, 512, 512, 6, 8, lengths, args.repeats,
                                 train=False, precision=precision, varlen=True)
            rows += encoder_case("padded (8,512,512) d6 h8 train step", 8, 512, 512, 6, 8, lengths, args.repeats,
                                 train=True, precision=precision, varlen=True)
            # The same batch at the distribution's mean kept fraction (lengths evenly spaced over [128, 512], 62.5 %
            # kept), where the FLOP count bounds unpad's forward gain at about 1.6x.
            even = torch.linspace(128, 512, 8).round().long()
            for train in (False, True):
                rows += encoder_case(f"padded even (8,512,512) d6 h8 {'train step' if train else 'forward'}", 8,
                                     512, 512, 6, 8, even, args.repeats, train=train, precision=precision,
                                     varlen=True)
        if not args.quick or args.op:
            for padded in (False, True):
                rows += attention_op_case(4096, 8, 64, args.repeats, padded,
                                          torch.bfloat16 if precision == "bf16" else torch.float32)
    if args.varlen_long:
        # Lengths uniform in [2048, 8192]. Peers that materialise (4, 4, 8192, 8192) scores (x-transformers without
        # flash, torch's dense fast path) run out of this machine's 24 GiB: the flash mode and torch's nested
        # tensors (forward) remain.
        lengths = torch.randint(2048, 8193, (4,), generator=torch.Generator().manual_seed(5))
        for precision in precisions:
            for train in (False, True):
                rows += encoder_case(f"long (4,8192,256) d2 h4 {'train step' if train else 'forward'}", 4, 8192,
                                     256, 2, 4, lengths, max(3, args.repeats // 2), train=train,
                                     precision=precision, varlen=True, peers=("xt_flash",))
    if args.long:
        rows += long_cases([int(s) for s in args.long_lengths.split(",")], args.long_timeout)
    print_table(rows)
    print_bf16_summary(rows)
    print_varlen_summary(rows)
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump({"machine": info, "rows": rows}, f, indent=1)
    print(f"\nwrote {args.out}")
    if args.long and args.plot:
        plot(rows, args.plot)
        print(f"wrote {args.plot}")


if __name__ == "__main__":
    main()
