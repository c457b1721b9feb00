"""Helpers shared by the Python tests: building matching pairs of x-transformers and x_transformers_cpp modules."""
import contextlib

import pytest
import torch
from x_transformers import Decoder as XDecoder
from x_transformers import Encoder as XEncoder

from x_transformers_cpp import Decoder, Encoder
from x_transformers_cpp.backends import attention_backend, enabled_backends

PAIRS = {"encoder": (Encoder, XEncoder), "decoder": (Decoder, XDecoder)}


def perturbed_state_dict(module, scale=0.1):
    """The module's state_dict plus randn * scale: norms' gammas leave their zero init, so every parameter matters."""
    return {k: v + torch.randn_like(v) * scale for k, v in module.state_dict().items()}


def same_weights(make_ours, make_theirs):
    """(ours, theirs): x-transformers' module with perturbed weights, and ours holding the same state_dict (the same
    keys in the same order, loaded strictly). The one pair builder of the parity tests."""
    theirs = make_theirs()
    theirs.load_state_dict(perturbed_state_dict(theirs))
    ours = make_ours()
    assert list(ours.state_dict()) == list(theirs.state_dict())
    ours.load_state_dict(theirs.state_dict(), strict=True)
    return ours, theirs


def make_pair(kind, dtype=torch.float32, **kwargs):
    """(ours, theirs) stacks of `kind` ("encoder", "decoder") with identical, perturbed weights."""
    ours_cls, theirs_cls = PAIRS[kind]
    return same_weights(lambda: ours_cls(**kwargs).to(dtype), lambda: theirs_cls(**kwargs).to(dtype))


def assert_stack_matches_x_transformers(kind, options, prepare=None, seed=0):
    """One option set of the parity tests: a stack of `kind` and x-transformers' with the same perturbed weights
    (`prepare(ours, theirs)` may adjust both), x of odd length with a padding mask holding a fully masked row, and,
    when cross-attending, a context with its own; outputs within 1e-5 and every gradient within 1e-4. Each forward
    starts from one seed, so options that draw (Gumbel noise) draw alike."""
    torch.manual_seed(seed)
    ours, theirs = make_pair(kind, **options)
    if prepare is not None:
        prepare(ours, theirs)
    dim = options["dim"]
    x = torch.randn(3, 11, dim)
    kwargs = dict(mask=random_mask(3, 11))
    if options.get("cross_attend"):
        kwargs.update(context=torch.randn(3, 7, dim), context_mask=random_mask(3, 7))
    torch.manual_seed(seed + 1)
    out = ours(x, **kwargs)
    torch.manual_seed(seed + 1)
    expected = theirs(x, **kwargs)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)
    assert_parameter_grads_close(ours, theirs, out, expected)


def assert_constructs_as_x_transformers(kind, options, seed=0, theirs_context=contextlib.nullcontext):
    """Seeded construction of ours and x-transformers' stack gives the same state_dict: names, order and the value
    of every draw. `theirs_context`: what x-transformers' construction needs around it (torch.no_grad)."""
    ours_cls, theirs_cls = PAIRS[kind]
    torch.manual_seed(seed)
    ours = ours_cls(**options)
    torch.manual_seed(seed)
    with theirs_context():
        theirs = theirs_cls(**options)
    assert list(ours.state_dict()) == list(theirs.state_dict())
    for name, value in theirs.state_dict().items():
        torch.testing.assert_close(ours.state_dict()[name], value, atol=0, rtol=0, msg=name)
    return ours


def chosen_attention_paths(module, *args, **kwargs):
    """The attention layers' backend choices (x_transformers_cpp.backends.record_choices) of one forward."""
    from x_transformers_cpp.backends import record_choices

    with record_choices() as choices:
        module(*args, **kwargs)
    return [c for c in choices if c.site.endswith("layer")]


def rejection_reasons(choices):
    """Every reason the recorded choices give for the kernels they passed over."""
    return [r for c in choices for why in c.rejected.values() for r in why]


def random_mask(batch, seq, generator=None):
    """A (batch, seq) bool mask, True = keep: row 0 full, row 1 fully masked (when batch > 1), the rest random."""
    mask = torch.rand(batch, seq, generator=generator) > 0.3
    mask[0] = True
    if batch > 1:
        mask[1] = False
    return mask


def assert_parameter_grads_close(ours, theirs, out, expected, tol=1e-4):
    """The gradients of both modules' parameters for one random upstream gradient agree within tol (scaled by
    the gradient's size); a parameter x-transformers leaves unused must get no or a zero gradient."""
    grad = torch.randn_like(out)
    got = torch.autograd.grad(out, list(ours.parameters()), grad, allow_unused=True)
    want = torch.autograd.grad(expected, list(theirs.parameters()), grad, allow_unused=True)
    for (name, _), g, w in zip(ours.named_parameters(), got, want):
        if w is None:
            assert g is None or not g.any(), name
            continue
        torch.testing.assert_close(g, w, atol=tol * max(1.0, w.abs().max().item()), rtol=0, msg=name)


def without_backend(backend):
    """The current backend setting less `backend` (None: unchanged), for the duration of a with block."""
    if backend is None:
        return contextlib.nullcontext()
    return attention_backend([b for b in enabled_backends() if b != backend])


def raises_clearly(fn, *needles, types=(RuntimeError, ValueError)):
    """Calls fn, which must raise one of types; every needle (plain text) must appear in the message, which must be
    one readable line (no C++ backtrace). Returns the message."""
    with pytest.raises(types) as info:
        fn()
    message = str(info.value)
    for needle in needles:
        assert needle in message, f"{needle!r} not in message {message!r}"
    assert "Exception raised from" not in message and "frame #" not in message, f"C++ backtrace in {message!r}"
    assert len(message.splitlines()) <= 2, f"multi-line message {message!r}"
    return message


def shape_text(shape):
    """A shape as the error messages print it."""
    return str(list(shape))
