"""One training step of an Encoder / Decoder under DistributedDataParallel (gloo, 2 CPU processes, half the batch
each) gives the same parameters as one SGD step on the whole batch in a single process."""
import os
import socket
import time

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from x_transformers_cpp import Decoder, Encoder

WORLD_SIZE = 2
TIME_LIMIT_S = 50
KW = dict(dim=32, depth=2, heads=4, attn_dim_head=8)
CLASSES = {"encoder": Encoder, "decoder": Decoder}


def _free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _train_step(model, x, mask, target, lr):
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    optimizer.zero_grad()
    # a mean over all elements: with equal shards the average of the ranks' losses is the whole batch's loss,
    # so DDP's gradient averaging reproduces the single-process gradient
    loss = ((model(x, mask=mask) - target) ** 2).mean()
    loss.backward()
    optimizer.step()
    return loss.detach()


def _worker(rank, kind, port, data_path, out_path):
    torch.set_num_threads(1)
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD_SIZE)
    try:
        data = torch.load(data_path, weights_only=True)
        module = CLASSES[kind](**KW)
        if rank == 0:
            module.load_state_dict(data["state_dict"])
        # ranks other than 0 start from their own random weights: DDP must broadcast rank 0's
        model = nn.parallel.DistributedDataParallel(module)
        shard = slice(rank * data["x"].shape[0] // WORLD_SIZE, (rank + 1) * data["x"].shape[0] // WORLD_SIZE)
        loss = _train_step(model, data["x"][shard], data["mask"][shard], data["target"][shard], data["lr"])
        losses = [torch.zeros(()) for _ in range(WORLD_SIZE)]
        dist.all_gather(losses, loss)
        state = {k: v.clone() for k, v in model.module.state_dict().items()}
        states = [None] * WORLD_SIZE
        dist.all_gather_object(states, state)
        if rank == 0:
            for k in state:  # every rank ends with the same weights
                assert torch.equal(states[0][k], states[1][k]), f"ranks disagree on {k}"
            grads = {k: p.grad.clone() for k, p in model.module.named_parameters()}
            torch.save({"state_dict": state, "grads": grads, "losses": torch.stack(losses)}, out_path)
    finally:
        dist.destroy_process_group()
    # Leave without running C++ static destructors: gloo's teardown at interpreter exit aborts now and then on this
    # machine ("terminate called without an active exception"), with x-transformers' modules as with ours. The
    # results are on disk and every rank has passed the collectives above.
    os._exit(0)


def _spawn(kind, port, data_path, out_path):
    context = mp.start_processes(_worker, args=(kind, port, str(data_path), str(out_path)), nprocs=WORLD_SIZE,
                                 join=False, start_method="spawn")
    deadline = time.monotonic() + TIME_LIMIT_S
    try:
        while not context.join(timeout=1):
            if time.monotonic() > deadline:
                pytest.fail(f"DDP workers did not finish within {TIME_LIMIT_S} s")
    finally:
        for process in context.processes:
            if process.is_alive():
                process.terminate()
                process.join(5)


@pytest.mark.timeout(60)
@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="needs torch.distributed gloo")
@pytest.mark.parametrize("kind", ["encoder", "decoder"])
def test_ddp_step_matches_single_process(kind, tmp_path):
    torch.manual_seed(0)
    reference = CLASSES[kind](**KW)
    with torch.no_grad():
        for p in reference.parameters():
            p.add_(torch.randn_like(p) * 0.1)  # gammas away from their zero init
    batch, seq = 4, 9
    x = torch.randn(batch, seq, KW["dim"])
    mask = torch.rand(batch, seq) > 0.3
    mask[0] = True
    mask[3] = False  # a fully masked row in rank 1's shard
    target = torch.randn(batch, seq, KW["dim"])
    lr = 0.5
    initial = {k: v.clone() for k, v in reference.state_dict().items()}
    data_path, out_path = tmp_path / "data.pt", tmp_path / "rank0.pt"
    torch.save({"state_dict": initial, "x": x, "mask": mask, "target": target, "lr": lr}, data_path)

    _spawn(kind, _free_port(), data_path, out_path)
    result = torch.load(out_path, weights_only=True)

    loss = _train_step(reference, x, mask, target, lr)
    torch.testing.assert_close(result["losses"].mean(), loss, atol=1e-6, rtol=0)
    expected = reference.state_dict()
    assert result["state_dict"].keys() == expected.keys()
    for name, value in expected.items():
        assert not torch.equal(value, initial[name]), f"{name} did not change"
        torch.testing.assert_close(result["grads"][name], dict(reference.named_parameters())[name].grad,
                                   atol=1e-5, rtol=0, msg=f"gradient of {name}")
        torch.testing.assert_close(result["state_dict"][name], value, atol=1e-5, rtol=0, msg=name)
