"""Helpers shared by the multi-process tests (DDP, FSDP2): gloo on 2 CPU processes of this machine."""
import socket
import time

import pytest
import torch
import torch.multiprocessing as mp

WORLD_SIZE = 2


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train_step(model, x, mask, target, lr):
    """One SGD step on a mean squared error. A mean over all elements: with equal shards the average of the ranks'
    losses is the whole batch's loss, so gradient averaging across ranks reproduces the single-process gradient."""
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    optimizer.zero_grad()
    loss = ((model(x, mask=mask) - target) ** 2).mean()
    loss.backward()
    optimizer.step()
    return loss.detach()


def spawn(worker, args, time_limit_s, what, nprocs=WORLD_SIZE):
    """Runs worker(rank, *args) on nprocs spawned processes; fails the test past time_limit_s."""
    context = mp.start_processes(worker, args=args, nprocs=nprocs, join=False, start_method="spawn")
    deadline = time.monotonic() + time_limit_s
    try:
        while not context.join(timeout=1):
            if time.monotonic() > deadline:
                pytest.fail(f"{what} workers did not finish within {time_limit_s} s")
    finally:
        for process in context.processes:
            if process.is_alive():
                process.terminate()
                process.join(5)


def training_batch(dim, batch=4, seq=9):
    """x, mask and target for one step: equal shards of 2 rows per rank, a fully masked row in rank 1's."""
    x = torch.randn(batch, seq, dim)
    mask = torch.rand(batch, seq) > 0.3
    mask[0] = True
    mask[3] = False
    return dict(x=x, mask=mask, target=torch.randn(batch, seq, dim), lr=0.5)
