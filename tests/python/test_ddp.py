"""One training step of an Encoder / Decoder under DistributedDataParallel (gloo, 2 CPU processes, half the batch
each) gives the same parameters as one SGD step on the whole batch in a single process."""
import os

import pytest
import torch
import torch.distributed as dist
from torch import nn

from distributed_testing import WORLD_SIZE, free_port, spawn, train_step, training_batch
from x_transformers_cpp import Decoder, Encoder

TIME_LIMIT_S = 50
KW = dict(dim=32, depth=2, heads=4, attn_dim_head=8)
CLASSES = {"encoder": Encoder, "decoder": Decoder}


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
        loss = train_step(model, data["x"][shard], data["mask"][shard], data["target"][shard], data["lr"])
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


@pytest.mark.timeout(60)
@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="needs torch.distributed gloo")
@pytest.mark.parametrize("kind", ["encoder", "decoder"])
def test_ddp_step_matches_single_process(kind, tmp_path):
    torch.manual_seed(0)
    reference = CLASSES[kind](**KW)
    with torch.no_grad():
        for p in reference.parameters():
            p.add_(torch.randn_like(p) * 0.1)  # gammas away from their zero init
    data = training_batch(KW["dim"])
    x, mask, target, lr = data["x"], data["mask"], data["target"], data["lr"]
    initial = {k: v.clone() for k, v in reference.state_dict().items()}
    data_path, out_path = tmp_path / "data.pt", tmp_path / "rank0.pt"
    torch.save({"state_dict": initial, **data}, data_path)

    spawn(_worker, (kind, free_port(), str(data_path), str(out_path)), TIME_LIMIT_S, "DDP")
    result = torch.load(out_path, weights_only=True)

    loss = train_step(reference, x, mask, target, lr)
    torch.testing.assert_close(result["losses"].mean(), loss, atol=1e-6, rtol=0)
    expected = reference.state_dict()
    assert result["state_dict"].keys() == expected.keys()
    for name, value in expected.items():
        assert not torch.equal(value, initial[name]), f"{name} did not change"
        torch.testing.assert_close(result["grads"][name], dict(reference.named_parameters())[name].grad,
                                   atol=1e-5, rtol=0, msg=f"gradient of {name}")
        torch.testing.assert_close(result["state_dict"][name], value, atol=1e-5, rtol=0, msg=name)
