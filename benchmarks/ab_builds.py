"""A/B of two builds of x_transformers_cpp on the seed encoder, in one run: Encoder(dim=512, depth=6, heads=8) over
(1, 1024, 512) with a padding mask, forward (eval, no_grad) in fp32 and under bf16 autocast. Two builds cannot share
a process (each registers the xtc ops), so each round runs one short process per build, in ABBA order, and the
medians are over every timed call of every round; the ratio B / A says whether a change slowed the forward.

    python benchmarks/ab_builds.py --a /path/to/site-packages-or-folder-of-A --b /path/to/B --out results/ab.json

--a / --b name folders that hold an `x_transformers_cpp` package (site-packages of a venv, or a copy of one).
"""
import argparse
import json
import os
import platform
import statistics
import subprocess
import sys

CHILD = r"""
import json, sys, time, torch
import x_transformers_cpp
from x_transformers_cpp import Encoder
torch.manual_seed(0)
precision, calls = sys.argv[1], int(sys.argv[2])
encoder = Encoder(dim=512, depth=6, heads=8).eval()
x = torch.randn(1, 1024, 512)
mask = torch.ones(1, 1024, dtype=torch.bool)
mask[:, 900:] = False
autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16-autocast")
times = []
with torch.no_grad(), autocast:
    for i in range(calls + 2):
        start = time.perf_counter()
        encoder(x, mask=mask)
        if i >= 2:  # two warm-up calls
            times.append((time.perf_counter() - start) * 1e3)
print(json.dumps({"file": x_transformers_cpp.__file__, "times_ms": times}))
"""


def run(path, precision, calls):
    env = dict(os.environ, PYTHONPATH=path)
    out = subprocess.run([sys.executable, "-c", CHILD, precision, str(calls)], env=env, check=True,
                         capture_output=True, text=True, cwd="/")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--a", required=True, help="folder holding build A's x_transformers_cpp (the baseline)")
    parser.add_argument("--b", required=True, help="folder holding build B's x_transformers_cpp")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--calls", type=int, default=5, help="timed calls per process")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "ab_builds.json"))
    args = parser.parse_args()
    import torch

    machine = f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}"
    results = {}
    for precision in ("fp32", "bf16-autocast"):
        times = {"A": [], "B": []}
        files = {}
        for round_index in range(args.rounds):
            order = (("A", args.a), ("B", args.b))
            for name, path in order if round_index % 2 == 0 else order[::-1]:  # ABBA: neither always runs first
                got = run(path, precision, args.calls)
                times[name] += got["times_ms"]
                files[name] = got["file"]
        medians = {name: statistics.median(t) for name, t in times.items()}
        results[precision] = {"median_ms": medians, "ratio_b_over_a": medians["B"] / medians["A"], "files": files,
                              "times_ms": times}
    print(f"machine: {machine}; seed encoder (1, 1024, 512), depth 6, heads 8, forward; "
          f"{args.rounds} alternating rounds x {args.calls} calls")
    print(f"{'precision':16} {'A median ms':>12} {'B median ms':>12} {'B / A':>7}")
    for precision, r in results.items():
        print(f"{precision:16} {r['median_ms']['A']:12.1f} {r['median_ms']['B']:12.1f} {r['ratio_b_over_a']:7.3f}")
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump({"machine": machine, "a": args.a, "b": args.b, "results": results}, f, indent=1)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
