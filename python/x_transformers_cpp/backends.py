"""Which attention kernels may run, and why a call took the one it took.

Every place that picks a kernel lists its candidate families with the reasons each cannot take the call, and takes
the first that is enabled and has none, in the style of torch.nn.attention.sdpa_kernel:

    from x_transformers_cpp.backends import Backend, attention_backend, record_choices

    with attention_backend([Backend.MATH]):          # only the materialising path may run
        out = encoder(x, mask=mask)

    with record_choices() as choices:
        encoder(x, mask=mask)
    for choice in choices:                           # one per layer (and per op call that had a choice)
        print(choice.site, choice.chosen, choice.rejected)

A forced family that cannot run a call raises a RuntimeError listing every candidate's reasons. The setting is
process-wide, as torch's own SDPA flags are (backward passes run on autograd's threads and must see it); the C++
twin is xtc::BackendGuard in <xtc/backends.h>.
"""
import contextlib
import dataclasses
import enum
from typing import Dict, Iterator, List

from . import _C


class Backend(enum.Enum):
    """Attention kernel families (values as the C++ names)."""

    CPU_FLASH = "cpu_flash"
    """Our blocked online-softmax CPU kernel (bf16 / fp16 widened to float32 unless CPU_BF16_MATMUL runs)."""
    CPU_BF16_MATMUL = "cpu_bf16_matmul"
    """bf16 block products on the CPU's AVX512-BF16 units, inside the CPU kernel."""
    CUDA_HOPPER_FORWARD = "cuda_hopper_forward"
    """sm_90a warpgroup-MMA forward kernel (fp16 / bf16, head dim 64 or 128)."""
    CUDA_HOPPER_BACKWARD = "cuda_hopper_backward"
    """sm_90a warpgroup-MMA backward kernel (fp16 / bf16, head dim 64 or 128)."""
    CUDA_MMA_SYNC = "cuda_mma_sync"
    """mma.sync tensor-core kernels (fp16 / bf16, head dim 32, 64 or 128)."""
    CUDA_SIMPLE = "cuda_simple"
    """Warp-per-row kernels (float32 / float64)."""
    VARLEN = "varlen"
    """Packed sequences (attn_flash_pack_seq, unpad) attend in the varlen op, else in the padded frame."""
    CUDA_VARLEN = "cuda_varlen"
    """The varlen op for packed layers on CUDA: no GPU has run it yet, so it is off by default."""
    CUDA_SDPA_FP32 = "cuda_sdpa_fp32"
    """fp32 calls on CUDA that need none of our rules, in torch's SDPA kernels by the matmul precision
    (memory-efficient at 'highest', cuBLAS TF32 at 'high' / 'medium'): no GPU has run it yet, so it is off."""
    CUDA_VARLEN_ONE_LAUNCH = "cuda_varlen_one_launch"
    """The CUDA varlen op in one launch over (query tiles of the longest sequence, heads, sequences), the offsets
    read on the device (no host sync, CUDA-graph capturable); else one launch per sequence. No GPU has run it yet,
    so it is off."""
    CUDA_FP32_AS_BF16 = "cuda_fp32_as_bf16"
    """float32 CUDA calls at torch's matmul precision 'medium' (which allows bfloat16 products) in the bfloat16
    tensor-core kernels, inputs cast in and the output back, any rule. No GPU has run it yet, so it is off."""
    CUDA_FP32_TENSOR_CORES = "cuda_fp32_tensor_cores"
    """The float32 forward on CUDA in tensor-core kernels (TF32 products, 3xTF32 at matmul precision 'highest'),
    any rule, head dims 32 / 64 / 128; the backward stays warp-per-row. No GPU has run it yet, so it is off."""
    MATH = "math"
    """The scores materialised by aten ops: any rule, any device, torch.func transforms."""


assert [b.value for b in Backend] == _C.backend_names(), "Backend out of step with xtc::Backend"


@dataclasses.dataclass(frozen=True)
class BackendChoice:
    """One choice: where it was made, the family taken, and each family passed over with its reasons."""

    site: str
    chosen: Backend
    rejected: Dict[Backend, List[str]]


def enabled_backends() -> List[Backend]:
    """The families that may run now (default: all but the five that no GPU has run yet: CUDA_VARLEN,
    CUDA_SDPA_FP32, CUDA_VARLEN_ONE_LAUNCH, CUDA_FP32_AS_BF16, CUDA_FP32_TENSOR_CORES)."""
    return [Backend(name) for name in _C.enabled_backends()]


def backend_priority() -> List[Backend]:
    """The order set with set_priority=True, empty when the built-in preferences apply."""
    return [Backend(name) for name in _C.backend_priority()]


@contextlib.contextmanager
def attention_backend(backends, set_priority: bool = False) -> Iterator[None]:
    """Within the block, only `backends` (a Backend, a list of them, or their values comma-separated) may run. With `set_priority`, their order
    also overrides the built-in preferences (say, the Hopper kernels' size rule): the first listed family that can
    run a call takes it; the order then ranks every choice, so list varlen before the flash families to keep packed
    sequences in the varlen op. The previous setting comes back on exit."""
    if isinstance(backends, (Backend, str)):
        backends = [backends] if isinstance(backends, Backend) else [b for b in backends.split(",") if b]
    names = [b.value if isinstance(b, Backend) else str(b) for b in backends]  # C++ refuses unknown names
    saved, saved_priority = _C.enabled_backends(), _C.backend_priority()
    _C.set_enabled_backends(names, set_priority)
    try:
        yield
    finally:
        if saved_priority:
            _C.set_enabled_backends(saved_priority, True)
        else:
            _C.set_enabled_backends(saved, False)


@contextlib.contextmanager
def record_choices() -> Iterator[List[BackendChoice]]:
    """Collects every kernel choice made on this thread within the block (forward passes; on CUDA, backward passes
    run on autograd's own threads and are not collected)."""
    choices: List[BackendChoice] = []
    _C.start_recording()
    try:
        yield choices
    finally:
        for site, chosen, rejected in _C.stop_recording():
            choices.append(BackendChoice(site, Backend(chosen), {Backend(b): list(r) for b, r in rejected}))


__all__ = ["Backend", "BackendChoice", "attention_backend", "backend_priority", "enabled_backends",
           "record_choices"]


def add_backend_arguments(parser) -> None:
    """--backends and --backend-priority for a script's argparse parser (the benchmarks' A/B runs);
    backend_setting(args) applies what was parsed."""
    parser.add_argument("--backends", help="x_transformers_cpp.backends families that may run, comma-separated "
                        "(default: the library's own setting)")
    parser.add_argument("--backend-priority", action="store_true", help="the order of --backends ranks every choice")


def backend_setting(args):
    """The attention_backend setting parsed --backends asks for (add_backend_arguments), or a no-op without it."""
    if not args.backends:
        return contextlib.nullcontext()
    return attention_backend(args.backends, args.backend_priority)
