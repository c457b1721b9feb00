"""Meta-device and deferred initialisation: under torch.device("meta") the modules hold meta tensors and allocate
nothing; to_empty(device=...) then reset_parameters() (or load_state_dict(assign=True)) gives a working model with
construction's values; constructing on the CPU holds one copy of the parameters, not two."""
import subprocess
import sys
import textwrap

import pytest
import torch

from x_transformers_cpp import (ContinuousTransformerWrapper, CrossAttender, Decoder, Encoder, TransformerWrapper)
from xtc_testing import random_mask

KW = dict(dim=32, depth=2, heads=4, attn_dim_head=8)
STACKS = {
    "encoder": lambda: Encoder(**KW, rotary_pos_emb=True, rotary_xpos=False, attn_num_mem_kv=2),
    "decoder": lambda: Decoder(**KW, rel_pos_bias=True, ff_glu=True, use_rmsnorm=True),
    "cross_attender": lambda: CrossAttender(**KW),
}
WRAPPERS = {
    "transformer_wrapper": lambda: TransformerWrapper(
        num_tokens=40, max_seq_len=24, num_memory_tokens=2, post_emb_norm=True,
        attn_layers=Decoder(**KW, rotary_pos_emb=True)),
    "continuous_wrapper": lambda: ContinuousTransformerWrapper(
        dim_in=12, dim_out=5, max_seq_len=24, attn_layers=Encoder(**KW)),
}


def _inputs(name):
    torch.manual_seed(1)
    if name == "transformer_wrapper":
        return (torch.randint(0, 40, (3, 9)),), {"mask": random_mask(3, 9)}
    if name == "continuous_wrapper":
        return (torch.randn(3, 9, 12),), {"mask": random_mask(3, 9)}
    kwargs = {"mask": random_mask(3, 9)}
    if name == "cross_attender":
        kwargs = {"context": torch.randn(3, 5, KW["dim"]), "context_mask": random_mask(3, 5)}
    return (torch.randn(3, 9, KW["dim"]),), kwargs


def _reset(model):
    """The deferred-init recipe: every module's reset_parameters. Here children before parents, construction's order
    (the stack is built before the wrapper around it), so that the seeded values are construction's exactly."""
    for module in reversed(list(model.modules())):
        if hasattr(module, "reset_parameters"):
            module.reset_parameters()


def _assert_same_state(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


@pytest.mark.parametrize("name", list(STACKS) + list(WRAPPERS))
def test_meta_construction_then_to_empty_and_reset(name):
    make = {**STACKS, **WRAPPERS}[name]
    torch.manual_seed(0)
    eager = make().eval()
    with torch.device("meta"):
        deferred = make().eval()
    tensors = list(deferred.parameters()) + list(deferred.buffers())
    assert tensors and all(t.is_meta for t in tensors)
    assert [n for n, _ in deferred.named_parameters()] == [n for n, _ in eager.named_parameters()]

    deferred.to_empty(device="cpu")
    torch.manual_seed(0)
    _reset(deferred)
    _assert_same_state(deferred, eager)
    args, kwargs = _inputs(name)
    with torch.no_grad():
        torch.testing.assert_close(deferred(*args, **kwargs), eager(*args, **kwargs), atol=0, rtol=0)


@pytest.mark.parametrize("name", list(STACKS) + list(WRAPPERS))
def test_meta_model_loads_state_dict_with_assign(name):
    make = {**STACKS, **WRAPPERS}[name]
    torch.manual_seed(0)
    trained = make().eval()
    with torch.no_grad():
        for p in trained.parameters():
            p.add_(torch.randn_like(p) * 0.1)  # values construction would not give
    with torch.device("meta"):
        model = make().eval()
    model.load_state_dict(trained.state_dict(), assign=True)
    assert not any(t.is_meta for t in list(model.parameters()) + list(model.buffers()))
    args, kwargs = _inputs(name)
    with torch.no_grad():
        torch.testing.assert_close(model(*args, **kwargs), trained(*args, **kwargs), atol=0, rtol=0)


def test_reset_parameters_reinitialises_in_place():
    torch.manual_seed(0)
    encoder = Encoder(**KW)
    fresh = {k: v.clone() for k, v in encoder.state_dict().items()}
    ids = [id(p) for p in encoder.parameters()]
    with torch.no_grad():
        for p in encoder.parameters():
            p.fill_(3.0)
    torch.manual_seed(0)
    encoder.reset_parameters()
    assert [id(p) for p in encoder.parameters()] == ids  # the same tensors, so optimizers keep working
    for key, value in encoder.state_dict().items():
        assert torch.equal(value, fresh[key]), key


# About 1 B parameters (4 GB in float32): construction's peak RSS rise is measured in a fresh process.
_RSS_SCRIPT = textwrap.dedent("""
    import resource, sys, torch
    from x_transformers_cpp import Encoder
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    if sys.argv[1] == "meta":
        with torch.device("meta"):
            encoder = Encoder(dim=2048, depth=24, heads=16)
    else:
        encoder = Encoder(dim=2048, depth=24, heads=16)
    rise = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before
    print(sum(p.numel() * p.element_size() for p in encoder.parameters()), rise)
""")


@pytest.mark.parametrize("device", ["cpu", "meta"])
def test_large_construction_peaks_at_one_copy(device):
    result = subprocess.run([sys.executable, "-c", _RSS_SCRIPT, device], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    param_bytes, rise = map(int, result.stdout.split())
    assert param_bytes > 3.9e9  # about 1 B float32 parameters
    if device == "cpu":
        assert rise < 1.15 * param_bytes, f"peak RSS rose {rise / param_bytes:.2f}x the parameters"
    else:
        assert rise < 0.02 * param_bytes, f"meta construction allocated {rise / 2**20:.0f} MiB"
