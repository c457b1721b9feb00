"""Context parallelism (x_transformers_cpp.distributed) with gloo on 2 and 4 CPU processes: each rank runs its shard
of the sequence, and its outputs, input gradients and summed parameter gradients equal one process on the whole
sequence (float64); a training step under DDP and under FSDP2 over the context-parallel group equals the single
process's; bad shards raise the same error on every rank, never a hang."""
import datetime
import os

import pytest
import torch
import torch.distributed as dist

from distributed_testing import free_port, spawn
from x_transformers_cpp import ContinuousTransformerWrapper, Decoder, Encoder, TransformerWrapper, XTransformer
from x_transformers_cpp.backends import record_choices
from x_transformers_cpp.distributed import context_parallel, shard_sequence, unshard_sequence

TIME_LIMIT_S = 240
DIM = 24
KW = dict(dim=DIM, depth=2, heads=4, attn_dim_head=8)

# name: (build, layout, chunk): the sequence is chunk * world tokens (contiguous) or 2 * chunk * world (zigzag).
CASES = {
    "encoder_rotary": (lambda: Encoder(**KW, rotary_pos_emb=True), "contiguous", 5),
    "encoder_alibi": (lambda: Encoder(**KW, alibi_pos_bias=True), "contiguous", 5),
    "encoder_window": (lambda: Encoder(**KW, attn_window_size=4), "contiguous", 5),
    "encoder_alibi_softcap": (lambda: Encoder(**KW, alibi_pos_bias=True, attn_softclamp_logits=True,
                                              attn_logit_softclamp_value=3.0), "zigzag", 3),
    "encoder_max_attend_past": (lambda: Encoder(**KW, attn_max_attend_past=6, rotary_pos_emb=True),
                                "contiguous", 5),
    "encoder_t5": (lambda: Encoder(**KW, rel_pos_bias=True), "contiguous", 5),
    "decoder_dynamic_zigzag": (lambda: Decoder(**KW, dynamic_pos_bias=True), "zigzag", 3),
    "encoder_unpad": (lambda: Encoder(**KW, rotary_pos_emb=True, unpad=True), "contiguous", 5),
    "decoder_unpad_zigzag": (lambda: Decoder(**KW, alibi_pos_bias=True, unpad=True), "zigzag", 3),
    "decoder_polar_zigzag": (lambda: Decoder(**KW, polar_pos_emb=True), "zigzag", 3),
    "decoder_hyper_connections": (lambda: Decoder(**KW, num_residual_streams=2, rotary_pos_emb=True), "zigzag", 3),
    "encoder_mem_kv_talking_heads": (lambda: Encoder(**KW, attn_num_mem_kv=3, attn_pre_talking_heads=True,
                                                     attn_post_talking_heads=True), "contiguous", 5),
    "decoder_latent_value_residual": (lambda: Decoder(**KW, attn_use_latent_q=True, attn_use_latent_kv=True,
                                                      attn_dim_latent_q=DIM, attn_dim_latent_kv=16,
                                                      add_value_residual=True, rotary_pos_emb=True), "zigzag", 3),
    "decoder_xpos": (lambda: Decoder(**KW, rotary_xpos=True), "contiguous", 5),
    "decoder_rotary_gqa": (lambda: Decoder(**KW, rotary_pos_emb=True, attn_kv_heads=2), "zigzag", 3),
    "decoder_alibi": (lambda: Decoder(**KW, alibi_pos_bias=True), "contiguous", 5),
    "decoder_window_zigzag": (lambda: Decoder(**KW, attn_window_size=5, rotary_pos_emb=True), "zigzag", 3),
    "decoder_gqa_contiguous": (lambda: Decoder(**KW, attn_kv_heads=1, attn_qk_norm=True), "contiguous", 5),
    "encoder_cross_attend": (lambda: Encoder(**KW, cross_attend=True, rotary_pos_emb=True), "contiguous", 5),
    "wrapper_abs_pos": (lambda: ContinuousTransformerWrapper(dim_in=DIM, dim_out=7, max_seq_len=64,
                                                             attn_layers=Decoder(**KW)), "zigzag", 3),
}


# PoPE works in float32 (as x-transformers' does): its bias's gradient, summed over ranks rather than in one go,
# agrees to float32's precision.
TOLERANCE = {"decoder_polar_zigzag": 1e-6}


def _mask(batch, n):
    """Random padding, a fully masked row, and a row whose first quarter (the first rank's shard, or part of it)
    is all padding."""
    mask = torch.rand(batch, n) > 0.3
    mask[1] = False
    mask[2, : n // 4] = False
    return mask


def _parity(rank, world, name):
    build, layout, chunk = CASES[name]
    torch.manual_seed(7)
    model = build().double()
    n = chunk * world * (2 if layout == "zigzag" else 1)
    x = torch.randn(3, n, DIM, dtype=torch.double, requires_grad=True)
    mask = _mask(3, n)
    # Cross-attention's context is not sharded: every rank passes all of it.
    extra = dict(context=torch.randn(3, 6, DIM, dtype=torch.double)) if "cross" in name else {}
    ref = model(x, mask=mask, **extra)
    grad = torch.randn_like(ref)
    (ref * grad).sum().backward()
    ref_dx, ref_dp = x.grad, {k: p.grad.clone() for k, p in model.named_parameters()}
    model.zero_grad()

    shard = shard_sequence(x.detach(), layout=layout).requires_grad_()
    with context_parallel(layout=layout), record_choices() as choices:
        out = model(shard, mask=shard_sequence(mask, layout=layout), **extra)
    (out * shard_sequence(grad, layout=layout)).sum().backward()
    for p in model.parameters():
        dist.all_reduce(p.grad)
    gathered = [torch.empty_like(out) for _ in range(world)]
    dist.all_gather(gathered, out.detach().contiguous())
    return {"out": (out - shard_sequence(ref, layout=layout)).abs().max().item(),
            "whole": (unshard_sequence(gathered, layout=layout) - ref).abs().max().item(),
            "dx": (shard.grad - shard_sequence(ref_dx, layout=layout)).abs().max().item(),
            "dparams": max((p.grad - ref_dp[k]).abs().max().item() for k, p in model.named_parameters()),
            "paths": sorted({c.chosen.value for c in choices if "layer" in c.site})}


def _uneven(rank, world):
    """Contiguous shards of different lengths, given by shard_lengths."""
    torch.manual_seed(8)
    model = Decoder(**KW, rotary_pos_emb=True).double()
    lengths = [3 + 2 * r for r in range(world)]
    x = torch.randn(3, sum(lengths), DIM, dtype=torch.double)
    mask = _mask(3, sum(lengths))
    ref = model(x, mask=mask)
    start = sum(lengths[:rank])
    with context_parallel(shard_lengths=lengths):
        out = model(x[:, start:start + lengths[rank]], mask=mask[:, start:start + lengths[rank]])
    return {"out": (out - ref[:, start:start + lengths[rank]]).abs().max().item()}


def _token_wrapper(rank, world):
    """TransformerWrapper on token ids: learned absolute positions at the global positions, logits and the
    summed parameter gradients."""
    torch.manual_seed(11)
    model = TransformerWrapper(num_tokens=50, max_seq_len=64, attn_layers=Decoder(**KW)).double()
    tokens = torch.randint(0, 50, (3, 6 * world))
    mask = _mask(3, 6 * world)
    ref = model(tokens, mask=mask)
    grad = torch.randn_like(ref)
    (ref * grad).sum().backward()
    ref_dp = {k: p.grad.clone() for k, p in model.named_parameters()}
    model.zero_grad()
    with context_parallel(layout="zigzag"):
        out = model(shard_sequence(tokens, layout="zigzag"), mask=shard_sequence(mask, layout="zigzag"))
    (out * shard_sequence(grad, layout="zigzag")).sum().backward()
    for p in model.parameters():
        dist.all_reduce(p.grad)
    return {"out": (out - shard_sequence(ref, layout="zigzag")).abs().max().item(),
            "dparams": max((p.grad - ref_dp[k]).abs().max().item() for k, p in model.named_parameters())}


def _training_step(rank, world, kind):
    """One SGD step of a Decoder under DDP or FSDP2 over the group. Each rank's loss is world times its share of
    the whole sequence's mean, so that the averaged gradients are the whole sequence's."""
    torch.manual_seed(9)
    model = Decoder(**KW, rotary_pos_emb=True)
    x, target = torch.randn(3, 8 * world, DIM), torch.randn(3, 8 * world, DIM)
    mask = _mask(3, 8 * world)
    reference = Decoder(**KW, rotary_pos_emb=True)
    reference.load_state_dict(model.state_dict())
    torch.optim.SGD(reference.parameters(), lr=0.5).zero_grad()
    ((reference(x, mask=mask) - target) ** 2).mean().backward()
    torch.optim.SGD(reference.parameters(), lr=0.5).step()

    if kind == "ddp":
        from torch.nn.parallel import DistributedDataParallel
        wrapped = DistributedDataParallel(model)
    else:
        from torch.distributed.fsdp import fully_shard
        for layer in model.layers:
            fully_shard(layer[1])
        wrapped = fully_shard(model)
    optimizer = torch.optim.SGD(wrapped.parameters(), lr=0.5)
    layout = "zigzag"
    with context_parallel(layout=layout):
        out = wrapped(shard_sequence(x, layout=layout), mask=shard_sequence(mask, layout=layout))
    loss = ((out - shard_sequence(target, layout=layout)) ** 2).sum() / target.numel() * world
    loss.backward()
    optimizer.step()
    state = model.state_dict()
    full = {k: v.full_tensor() if hasattr(v, "full_tensor") else v for k, v in state.items()}
    return {"params": max((full[k] - v).abs().max().item() for k, v in reference.state_dict().items())}


def _error_of(fn):
    try:
        fn()
    except (ValueError, TypeError, RuntimeError) as e:
        return f"{type(e).__name__}: {e}"
    return None


def _bad_inputs(rank, world):
    """Each a mistake on one rank (or a refused option): the message every rank raised."""
    torch.manual_seed(10)
    model = Encoder(**KW)
    x = torch.randn(2, 6, DIM)
    errors = {}
    with context_parallel():
        errors["uneven"] = _error_of(lambda: model(x if rank else torch.randn(2, 7, DIM)))
        errors["mask_length"] = _error_of(
            lambda: model(x, mask=torch.ones(2, 6 if rank != world - 1 else 5, dtype=torch.bool)))
        errors["attn_mask"] = _error_of(
            lambda: model(x, attn_mask=torch.ones(6, 6, dtype=torch.bool) if rank == 1 else None))
        errors["option"] = _error_of(lambda: Encoder(**KW, shift_tokens=1)(x))
        errors["maps"] = _error_of(lambda: model(x, return_hiddens=True))
        xtransformer = XTransformer(dim=DIM, enc_num_tokens=10, enc_depth=1, enc_heads=2, enc_max_seq_len=32,
                                    dec_num_tokens=10, dec_depth=1, dec_heads=2, dec_max_seq_len=32)
        tokens = torch.randint(0, 10, (2, 6))
        errors["xtransformer"] = _error_of(lambda: xtransformer(tokens, tokens))
        inverted = Encoder(**KW, cross_attend=True, cross_attn_inverted_attention=True)
        errors["cross_option"] = _error_of(lambda: inverted(x, context=torch.randn(2, 4, DIM)))
        # A wrapper's max_seq_len holds for the whole sequence: over it (contiguous: only the last rank's
        # positions pass it), or an uneven shard, raises on every rank before the stack's exchange.
        wrapper = TransformerWrapper(num_tokens=10, max_seq_len=6 * world - 1, attn_layers=Encoder(**KW))
        errors["too_long"] = _error_of(lambda: wrapper(torch.randint(0, 10, (2, 6))))
        errors["wrapper_uneven"] = _error_of(lambda: wrapper(torch.randint(0, 10, (2, 5 if rank else 4))))
        errors["after"] = _error_of(lambda: model(x))  # the group still works after the errors
    with context_parallel(layout="zigzag"):
        errors["odd_zigzag"] = _error_of(lambda: model(torch.randn(2, 5, DIM)))
    return errors


def _worker(rank, world, port, out_dir):
    torch.set_num_threads(1)
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=datetime.timedelta(seconds=60))
    try:
        results = {name: _parity(rank, world, name) for name in CASES}
        results["uneven"] = _uneven(rank, world)
        results["token_wrapper"] = _token_wrapper(rank, world)
        results["ddp"] = _training_step(rank, world, "ddp")
        results["fsdp2"] = _training_step(rank, world, "fsdp2")
        results["errors"] = _bad_inputs(rank, world)
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()
    os._exit(0)  # as test_ddp: gloo's teardown at interpreter exit aborts now and then


@pytest.fixture(scope="module", params=[2, 4], ids=lambda w: f"world{w}")
def results(request, tmp_path_factory):
    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("needs torch.distributed gloo")
    world = request.param
    out_dir = tmp_path_factory.mktemp(f"cp{world}")
    spawn(_worker, (world, free_port(), str(out_dir)), TIME_LIMIT_S, "context-parallel", nprocs=world)
    return [torch.load(out_dir / f"rank{r}.pt", weights_only=False) for r in range(world)]


@pytest.mark.parametrize("name", [*CASES, "uneven", "token_wrapper"])
def test_sharded_forward_and_backward_match_whole_sequence(results, name):
    for rank, result in enumerate(results):
        for what, error in result[name].items():
            if what != "paths":
                assert error < TOLERANCE.get(name, 1e-10), f"rank {rank}: {name} {what} differs by {error}"
        # The kernel runs every sharded layer (bidirectional ALiBi and windows too), but where the scores are
        # materialised as without sharding: the dense T5 / dynamic biases, talking heads.
        if name in CASES:
            dense = name in ("encoder_t5", "decoder_dynamic_zigzag", "encoder_mem_kv_talking_heads")
            paths = result[name]["paths"]
            assert paths == (["math"] if dense else ["cpu_flash"]), f"{name}: {paths}"


@pytest.mark.parametrize("kind", ["ddp", "fsdp2"])
def test_training_step_over_the_group_matches_single_process(results, kind):
    for rank, result in enumerate(results):
        assert result[kind]["params"] < 1e-5, f"rank {rank}: {kind} parameters differ by {result[kind]['params']}"


@pytest.mark.parametrize("case, expected", [
    ("uneven", "uneven shards"),
    ("mask_length", "mask as bool"),
    ("attn_mask", "cannot be sharded"),
    ("option", "shift_tokens"),
    ("odd_zigzag", "even shard"),
    ("maps", "attention maps"),
    ("cross_option", "inverted_attention"),
    ("xtransformer", "cross-attend to this rank's shard"),
    ("too_long", "max_seq_len"),
    ("wrapper_uneven", "uneven shards"),
])
def test_bad_shards_raise_on_every_rank(results, case, expected):
    messages = [result["errors"][case] for result in results]
    for rank, message in enumerate(messages):
        assert message is not None and expected in message, f"rank {rank}: {message}"
    assert all(result["errors"]["after"] is None for result in results)
