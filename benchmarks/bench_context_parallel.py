"""Context parallelism on this machine's CPU (gloo): per-rank peak memory and time of a Decoder training step on
one long sequence at world sizes 1, 2 and 4, the bytes each rank receives per layer, and a memory budget per
process that the whole sequence exceeds in one process and fits when sharded over 4.

    python benchmarks/bench_context_parallel.py [--seq 16384] [--budget-mib 0] [--out benchmarks/results/cp.json]

Each world size runs in fresh processes (torch.multiprocessing, spawn). Peak memory is the process's peak resident
set (ru_maxrss) less its resident set after building the model and input, so it counts the step's activations,
gathered keys and values, and gradients. The budget run caps each process's address space (RLIMIT_AS) at its size
after setup plus --budget-mib (default: halfway between the world-1 and world-4 peaks measured first): an
allocation past it fails with torch's out-of-memory error.
"""
import argparse
import datetime
import json
import os
import resource
import socket
import sys
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

sys.path.insert(0, os.path.dirname(__file__))
from bench_encoder import machine  # noqa: E402

KW = dict(dim=256, depth=2, heads=4, attn_dim_head=64, rotary_pos_emb=True)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rss_mib():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _address_space_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")


def _worker(rank, world, port, seq, budget_mib, out_path):
    from x_transformers_cpp import Decoder
    from x_transformers_cpp.distributed import context_parallel, shard_sequence
    torch.set_num_threads(max(1, 2 // world))
    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=datetime.timedelta(seconds=120))
    torch.manual_seed(0)
    model = Decoder(**KW)
    x = shard_sequence(torch.randn(1, seq, KW["dim"]), layout="zigzag", rank=rank, world_size=world)
    mask = torch.ones(1, x.shape[1], dtype=torch.bool)
    with context_parallel(layout="zigzag"):  # lazy initialisations (thread pools, kernels) before measuring
        model(x[:, :8], mask=mask[:, :8]).sum().backward()
    model.zero_grad(set_to_none=True)
    if budget_mib:
        limit = _address_space_bytes() + int(budget_mib * 2**20)
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    base = _rss_mib()
    dist.barrier()
    start = time.perf_counter()
    status, forward_peak = "ran", float("nan")
    try:
        with context_parallel(layout="zigzag"):
            out = model(x, mask=mask)
        forward_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - base
        out.pow(2).mean().backward()
    except RuntimeError as e:
        status = "out of memory" if "alloc" in str(e).lower() or "memory" in str(e).lower() else f"failed: {e}"
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - base
    result = {"rank": rank, "peak_mib": round(peak, 1), "forward_peak_mib": round(forward_peak, 1), "seconds": round(seconds, 2), "status": status}
    with open(f"{out_path}.{rank}", "w") as f:
        json.dump(result, f)
    if status == "ran":
        dist.barrier()
        dist.destroy_process_group()
    os._exit(0)


def run(world, seq, budget_mib, tmp):
    os.environ["MALLOC_ARENA_MAX"] = "1"  # one malloc arena: address space close to what is used
    out_path = os.path.join(tmp, f"w{world}_{budget_mib}")
    mp.start_processes(_worker, args=(world, _free_port(), seq, budget_mib, out_path), nprocs=world,
                       start_method="spawn", join=True)
    ranks = []
    for r in range(world):
        with open(f"{out_path}.{r}") as f:
            ranks.append(json.load(f))
    return ranks


def received_bytes_per_layer(world, seq):
    """The most any rank receives per self-attention layer, float32, causal zigzag: in the forward the keys and
    values of other ranks' tokens before the end of its last run (the keys its queries reach), in the backward
    their gradients from every rank whose queries reach its own tokens."""
    from x_transformers_cpp.distributed import shard_chunks
    runs = [shard_chunks(seq, r, world, "zigzag") for r in range(world)]
    reach_end = [max(stop for _, stop in rank_runs) for rank_runs in runs]
    row_bytes = KW["heads"] * KW["attn_dim_head"] * 2 * 4  # a token's key and value, all kv heads

    def rows_before(rank_runs, end):
        return sum(max(0, min(stop, end) - start) for start, stop in rank_runs)

    forward = max(sum(rows_before(runs[s], reach_end[r]) for s in range(world) if s != r) for r in range(world))
    backward = max(sum(rows_before(runs[r], reach_end[q]) for q in range(world) if q != r) for r in range(world))
    return forward * row_bytes, backward * row_bytes


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seq", type=int, default=16384)
    parser.add_argument("--budget-mib", type=float, default=0)
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "cp.json"))
    args = parser.parse_args()
    tmp = os.path.join(os.path.dirname(args.out), "cp_ranks")
    os.makedirs(tmp, exist_ok=True)
    rows = {}
    print(f"Decoder {KW}, one sequence of {args.seq} tokens, zigzag layout, fp32 training step; {machine()}")
    print(f"{'world':>5} {'peak MiB / rank (max)':>22} {'after forward':>14} {'step s':>7} "
          f"{'recv MiB / layer fwd+bwd':>25}")
    for world in (1, 2, 4):
        ranks = run(world, args.seq, 0, tmp)
        forward, backward = received_bytes_per_layer(world, args.seq)
        rows[world] = {"ranks": ranks, "received_bytes_per_layer": {"forward": forward, "backward": backward}}
        print(f"{world:>5} {max(r['peak_mib'] for r in ranks):>22.1f} "
              f"{max(r['forward_peak_mib'] for r in ranks):>14.1f} {max(r['seconds'] for r in ranks):>7.2f} "
              f"{(forward + backward) / 2**20:>25.1f}")
    budget = args.budget_mib or round((max(r["peak_mib"] for r in rows[1]["ranks"]) +
                                       max(r["peak_mib"] for r in rows[4]["ranks"])) / 2)
    budget_runs = {world: run(world, args.seq, budget, tmp) for world in (1, 4)}
    for world, ranks in budget_runs.items():
        print(f"budget {budget} MiB a process, world {world}: {', '.join(sorted({r['status'] for r in ranks}))}")
    with open(args.out, "w") as f:
        json.dump({"machine": machine(), "model": KW, "seq": args.seq, "layout": "zigzag", "worlds": rows,
                   "budget_mib": budget, "budget_runs": budget_runs}, f, indent=1)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
