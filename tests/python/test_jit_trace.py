"""torch.jit.trace of Encoder / Decoder: the layer stack is recorded as one xtc::attention_layers node, so the trace
saves, loads and runs at other batch sizes and sequence lengths (CONVENTIONS: sizes must not be frozen)."""
import warnings

import pytest
import torch
from torch import nn

from x_transformers_cpp import Encoder
from xtc_testing import make_pair, random_mask

KW = dict(dim=48, depth=2, heads=3, attn_dim_head=16)


def _trace(module, *inputs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        # a TracerWarning means a Python value was frozen into the trace: fail instead
        warnings.simplefilter("error", torch.jit.TracerWarning)
        return torch.jit.trace(module, inputs)


def _load(path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return torch.jit.load(str(path))


@pytest.mark.parametrize("kind", ["encoder", "decoder"])
def test_trace_save_load_dynamic_shapes(kind, tmp_path):
    torch.manual_seed(0)
    module, _ = make_pair(kind, **KW)
    module.eval()
    embed = torch.randn(3, 11, KW["dim"])
    mask = random_mask(3, 11)

    traced = _trace(module, embed, mask)
    graph = str(traced.inlined_graph)
    assert "xtc::attention_layers" in graph
    assert graph.count("xtc::attention_layers") == 1

    path = tmp_path / f"{kind}.pt"
    traced.save(str(path))
    loaded = _load(path)
    assert "xtc::attention_layers" in str(loaded.inlined_graph)

    with torch.no_grad():
        expected = module(embed, mask=mask)
        torch.testing.assert_close(traced(embed, mask), expected, atol=1e-5, rtol=0)
        torch.testing.assert_close(loaded(embed, mask), expected, atol=1e-5, rtol=0)

        # other batch sizes and sequence lengths, with masks (fully masked rows included)
        for batch, seq in [(2, 11), (5, 11), (3, 4), (2, 23), (4, 1), (1, 37)]:
            x = torch.randn(batch, seq, KW["dim"])
            m = random_mask(batch, seq)
            out = loaded(x, m)
            assert out.shape == (batch, seq, KW["dim"])
            torch.testing.assert_close(out, module(x, mask=m), atol=1e-5, rtol=0)


def test_trace_without_mask(tmp_path):
    torch.manual_seed(1)
    module, _ = make_pair("decoder", **KW)
    module.eval()
    traced = _trace(module, torch.randn(2, 9, KW["dim"]))
    path = tmp_path / "nomask.pt"
    traced.save(str(path))
    loaded = _load(path)
    with torch.no_grad():
        for batch, seq in [(2, 9), (3, 17), (1, 2)]:
            x = torch.randn(batch, seq, KW["dim"])
            torch.testing.assert_close(loaded(x), module(x), atol=1e-5, rtol=0)


def test_traced_weights_are_the_module_parameters(tmp_path):
    """The trace stores the weights: a later change to the eager module does not alter the saved file."""
    torch.manual_seed(2)
    module, _ = make_pair("encoder", **KW)
    module.eval()
    x = torch.randn(2, 7, KW["dim"])
    mask = random_mask(2, 7)
    traced = _trace(module, x, mask)
    path = tmp_path / "frozen.pt"
    traced.save(str(path))
    with torch.no_grad():
        before = module(x, mask=mask)
        for p in module.parameters():
            p.mul_(0.5)
        torch.testing.assert_close(_load(path)(x, mask), before, atol=1e-5, rtol=0)
        assert not torch.allclose(module(x, mask=mask), before)


class _Wrapped(nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(7, KW["dim"])
        self.enc = Encoder(**KW)
        self.head = nn.Linear(KW["dim"], 3)

    def forward(self, x, mask):
        return self.head(self.enc(self.proj(x), mask=mask))


def test_trace_nested_in_user_module(tmp_path):
    torch.manual_seed(3)
    model = _Wrapped().eval()
    x, mask = torch.randn(2, 5, 7), random_mask(2, 5)
    traced = _trace(model, x, mask)
    assert "xtc::attention_layers" in str(traced.inlined_graph)
    path = tmp_path / "wrapped.pt"
    traced.save(str(path))
    loaded = _load(path)
    with torch.no_grad():
        x2, mask2 = torch.randn(4, 13, 7), random_mask(4, 13)
        torch.testing.assert_close(loaded(x2, mask2), model(x2, mask=mask2), atol=1e-5, rtol=0)


def test_traced_module_backward():
    """A trace of a module in training mode still differentiates through the op (Autograd kernel in C++)."""
    torch.manual_seed(4)
    module, _ = make_pair("decoder", **KW)
    x, mask = torch.randn(2, 6, KW["dim"]), random_mask(2, 6)
    traced = _trace(module, x, mask)
    x2 = torch.randn(3, 10, KW["dim"], requires_grad=True)
    m2 = random_mask(3, 10)
    g = torch.randn(3, 10, KW["dim"])
    (gx,) = torch.autograd.grad(traced(x2, m2), x2, g)
    (ref,) = torch.autograd.grad(module(x2, mask=m2), x2, g)
    torch.testing.assert_close(gx, ref, atol=1e-4, rtol=0)


# Research options, each where x-transformers runs it: the trace keeps one stack op and runs at other shapes.
RESEARCH = {
    "hyper_connections": ("decoder", dict(num_residual_streams=2)),
    "lime": ("encoder", dict(integrate_layers=True)),
    "cope": ("decoder", dict(attn_use_cope=True)),
    "polar": ("encoder", dict(polar_pos_emb=True)),
    "data_dependent_alibi": ("decoder", dict(attn_data_dependent_alibi=True)),
    "latent_kv": ("decoder", dict(attn_use_latent_kv=True, attn_dim_latent_kv=16)),
    "selective": ("decoder", dict(attn_selective=True)),
    "inverted_cross": ("encoder", dict(cross_attend=True, cross_attn_inverted_attention=True)),
}


@pytest.mark.parametrize("kind,options", RESEARCH.values(), ids=RESEARCH.keys())
def test_trace_of_research_options_runs_at_other_shapes(kind, options):
    torch.manual_seed(0)
    ours, theirs = make_pair(kind, **KW, **options)
    ours.eval(), theirs.eval()
    context = options.get("cross_attend")

    def inputs(b, n):
        x, mask = torch.randn(b, n, KW["dim"]), random_mask(b, n)
        return (x, mask, torch.randn(b, 5, KW["dim"])) if context else (x, mask)

    if context:
        ours = _ContextCall(ours)
    traced = _trace(ours, *inputs(3, 11))
    assert str(traced.inlined_graph).count("xtc::attention_layers") == 1
    with torch.no_grad():
        for b, n in [(2, 7), (4, 13)]:
            args = inputs(b, n)
            expected = theirs(args[0], mask=args[1], context=args[2] if context else None)
            torch.testing.assert_close(traced(*args), expected, atol=1e-5, rtol=0)


class _ContextCall(nn.Module):
    """Positional (x, mask, context) for the trace."""

    def __init__(self, stack):
        super().__init__()
        self.stack = stack

    def forward(self, x, mask, context):
        return self.stack(x, mask=mask, context=context)
