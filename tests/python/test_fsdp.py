"""FSDP2 (torch.distributed.fsdp.fully_shard on each layer's block and on the whole stack; gloo, 2 CPU processes,
half the batch each): one training step gives the same parameters as one SGD step on the whole batch in a single
process, for a model built normally and for one built on the meta device, sharded, then materialised."""
import os

import pytest
import torch
import torch.distributed as dist

from distributed_testing import WORLD_SIZE, free_port, spawn, train_step, training_batch
from x_transformers_cpp import Decoder, Encoder

TIME_LIMIT_S = 80
KW = dict(dim=32, depth=2, heads=4, attn_dim_head=8, rotary_pos_emb=True)
CLASSES = {"encoder": Encoder, "decoder": Decoder}


def _full(t):
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def _shard(model):
    from torch.distributed.fsdp import fully_shard
    for layer in model.layers:
        fully_shard(layer[1])  # each layer's attention or feed-forward block (a ModuleList has no forward to hook)
    fully_shard(model)


def _worker(rank, kind, init, port, data_path, out_path):
    torch.set_num_threads(1)
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD_SIZE)
    try:
        data = torch.load(data_path, weights_only=True)
        if init == "eager":
            model = CLASSES[kind](**KW)
            model.load_state_dict(data["state_dict"])
            _shard(model)
        else:
            with torch.device("meta"):
                model = CLASSES[kind](**KW)
            _shard(model)
            model.to_empty(device="cpu")
            torch.manual_seed(data["seed"])
            model.reset_parameters()  # each rank takes its shard of the seeded values
        shard = slice(rank * data["x"].shape[0] // WORLD_SIZE, (rank + 1) * data["x"].shape[0] // WORLD_SIZE)
        loss = train_step(model, data["x"][shard], data["mask"][shard], data["target"][shard], data["lr"])
        losses = [torch.zeros(()) for _ in range(WORLD_SIZE)]
        dist.all_gather(losses, loss)
        state = {k: _full(v).detach().clone() for k, v in model.state_dict().items()}
        grads = {k: _full(p.grad).clone() for k, p in model.named_parameters()}
        if rank == 0:
            torch.save({"state_dict": state, "grads": grads, "losses": torch.stack(losses)}, out_path)
    finally:
        dist.destroy_process_group()
    os._exit(0)  # as test_ddp: gloo's teardown at interpreter exit aborts now and then


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="needs torch.distributed gloo")
@pytest.mark.parametrize("init", ["eager", "meta"])
@pytest.mark.parametrize("kind", ["encoder", "decoder"])
def test_fsdp2_step_matches_single_process(kind, init, tmp_path):
    seed = 3
    torch.manual_seed(seed)
    reference = CLASSES[kind](**KW)  # the seeded construction, which the meta ranks' reset_parameters reproduces
    if init == "eager":
        with torch.no_grad():
            for p in reference.parameters():
                p.add_(torch.randn_like(p) * 0.1)  # gammas away from their init
    torch.manual_seed(11)
    data = training_batch(KW["dim"])
    x, mask, target, lr = data["x"], data["mask"], data["target"], data["lr"]
    initial = {k: v.clone() for k, v in reference.state_dict().items()}
    data_path, out_path = tmp_path / "data.pt", tmp_path / "rank0.pt"
    torch.save({"state_dict": initial, "seed": seed, **data}, data_path)

    spawn(_worker, (kind, init, free_port(), str(data_path), str(out_path)), TIME_LIMIT_S, "FSDP")
    result = torch.load(out_path, weights_only=True)

    loss = train_step(reference, x, mask, target, lr)
    torch.testing.assert_close(result["losses"].mean(), loss, atol=1e-6, rtol=0)
    expected = reference.state_dict()
    assert result["state_dict"].keys() == expected.keys()
    params = dict(reference.named_parameters())
    for name, value in expected.items():
        if name in params:
            assert not torch.equal(value, initial[name]), f"{name} did not change"
            torch.testing.assert_close(result["grads"][name], params[name].grad, atol=1e-5, rtol=0,
                                       msg=f"gradient of {name}")
        torch.testing.assert_close(result["state_dict"][name], value, atol=1e-5, rtol=0, msg=name)
