"""Context parallelism: a sequence longer than one device holds, sharded across the ranks of a process group.

    import torch.distributed as dist
    from x_transformers_cpp import Decoder
    from x_transformers_cpp.distributed import context_parallel, shard_sequence

    dist.init_process_group("gloo")                 # NCCL on GPUs; torchrun sets the rank and world size
    x_shard = shard_sequence(x, layout="zigzag")    # this rank's tokens, (b, n / world, dim)
    mask_shard = shard_sequence(mask, layout="zigzag")
    with context_parallel(layout="zigzag"):
        out_shard = decoder(x_shard, mask=mask_shard)   # this rank's rows of the whole sequence's output
    out_shard.pow(2).mean().backward()                  # gradients as the whole sequence gives them, per rank

Inside the context, every stack (and wrapper) forward on this thread takes its input as this rank's shard of the
sequence. Projections, feed-forwards and norms run on the shard alone. Each self-attention layer receives the keys
and values its queries reach from the ranks that hold them (only the kv heads travel; causal: those before the end
of its queries; windows: those inside) and attends its own queries to them at their global positions, with the key
padding mask gathered once a forward. The backward returns the keys' and values' gradients to their ranks the
same way. Parameter gradients are this rank's share: summed over the ranks (all-reduce, DDP or FSDP2 over the
group) they are the whole sequence's.

Layouts: "contiguous" (rank r holds one run of tokens, in rank order; uneven runs need `shard_lengths`, each
rank's length) and "zigzag" (the sequence cut into 2 * world chunks, rank r holding chunks r and 2 * world - 1 - r:
causal attention's work balanced across ranks). Rotary and xPos, ALiBi, windows, T5 and dynamic position biases,
and the wrappers' absolute position embeddings take the global positions; GQA, key padding masks (a whole shard may
be padding) and unpad work as without sharding. Inputs and options that need the whole sequence in one place
(attn_mask, mems, a decoding cache, shift_tokens, hybrid_module, memory tokens, ...) are refused on every rank with
the reason. Every rank first exchanges its input shapes, so that a bad shard (an uneven one without shard_lengths,
a mask of the wrong length) raises the same error on every rank rather than leaving the others waiting in a
collective.

Eager mode only: torch.compile and torch.export do not see the setting.
"""
import contextlib
from typing import Iterator, Optional, Sequence

import torch
import torch.distributed as dist

from . import _C

LAYOUTS = ("contiguous", "zigzag")


def _group_rank_world(group):
    group = group if group is not None else dist.group.WORLD
    return group, dist.get_rank(group), dist.get_world_size(group)


@contextlib.contextmanager
def context_parallel(group: Optional[dist.ProcessGroup] = None, *, layout: str = "contiguous",
                     shard_lengths: Optional[Sequence[int]] = None) -> Iterator[None]:
    """Runs the stacks and wrappers called inside on this rank's shard of the sequence (see the module's text).
    group: the process group the sequence is sharded over (default: the world). layout: "contiguous" or
    "zigzag". shard_lengths: contiguous shards of different lengths, each rank's in rank order."""
    if torch.compiler.is_compiling():
        raise RuntimeError("context_parallel runs in eager mode: torch.compile does not see its setting")
    group, rank, world = _group_rank_world(group)
    _C.enter_context_parallel(group.group_name, rank, world, layout, [int(n) for n in shard_lengths or ()])
    try:
        yield
    finally:
        _C.exit_context_parallel()


def is_active() -> bool:
    """Whether this thread runs inside context_parallel (or a C++ ContextParallelGuard)."""
    return _C.context_parallel_active()


def shard_chunks(length: int, rank: int, world_size: int, layout: str = "contiguous"):
    """The (start, stop) runs of a sequence of `length` tokens that `rank` holds, in shard order (the layout
    the stacks read, computed by the same code)."""
    if layout not in LAYOUTS:
        raise ValueError(f"shard_chunks: expected layout in {LAYOUTS}, got {layout!r}")
    parts = world_size if layout == "contiguous" else 2 * world_size
    if length % parts != 0:
        raise ValueError(f"shard_chunks: a {layout} layout over {world_size} ranks cuts the sequence into {parts} "
                         f"equal chunks, so its length must be a multiple of {parts}, got {length}")
    return [(start, start + size) for start, size in _C.shard_runs(rank, world_size, layout, length // world_size)]


def shard_sequence(t: torch.Tensor, group: Optional[dist.ProcessGroup] = None, *, layout: str = "contiguous",
                   dim: int = 1, rank: Optional[int] = None, world_size: Optional[int] = None) -> torch.Tensor:
    """This rank's shard of the whole sequence `t` along `dim` (x (b, n, dim), a mask (b, n), ...) in `layout`.
    rank / world_size default to the group's."""
    if rank is None or world_size is None:
        _, rank, world_size = _group_rank_world(group)
    runs = [t.narrow(dim, start, stop - start) for start, stop in shard_chunks(t.shape[dim], rank, world_size,
                                                                              layout)]
    return runs[0] if len(runs) == 1 else torch.cat(runs, dim)


def unshard_sequence(shards: Sequence[torch.Tensor], *, layout: str = "contiguous", dim: int = 1) -> torch.Tensor:
    """The whole sequence from every rank's shard (in rank order, equal shards), the inverse of shard_sequence."""
    if layout == "contiguous":
        return torch.cat(list(shards), dim)
    halves = [s.chunk(2, dim) for s in shards]
    return torch.cat([h[0] for h in halves] + [h[1] for h in reversed(halves)], dim)
