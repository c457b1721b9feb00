"""A randomized search (hypothesis) over the stacks against x-transformers: random combinations of the supported
keyword arguments (those x-transformers itself accepts; the rest are rejected and redrawn), random batch, length
and masks (fully masked rows included); in float32 with the same weights, outputs within 1e-5 and gradients (input
and every parameter) within 1e-4 of x-transformers' (relative to the tensor's largest entry where that exceeds 1:
float32 cannot hold 1e-4 of a gradient of 100) - or, where x-transformers' own float32 error against its float64 run
is larger than that (ill-conditioned gradients), our error against float64 within twice its (Frobenius norms: the
max of one element is too noisy for a ratio).

Profiles as tests/python/test_randomized_attention.py: "ci" (fixed seed, 40 cases) and "long" (by hand:
XTC_HYPOTHESIS_PROFILE=long, XTC_HYPOTHESIS_EXAMPLES=N)."""
import os

import torch
from hypothesis import HealthCheck, given, reject, settings, strategies as st
from x_transformers import Decoder as XDecoder
from x_transformers import Encoder as XEncoder

from x_transformers_cpp import Decoder, Encoder
from xtc_testing import perturbed_state_dict

settings.register_profile("stacks-ci", max_examples=30, derandomize=True, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
settings.register_profile("stacks-long", max_examples=int(os.environ.get("XTC_HYPOTHESIS_EXAMPLES", 500)),
                          deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
PROFILE = "stacks-long" if os.environ.get("XTC_HYPOTHESIS_PROFILE") == "long" else "stacks-ci"

# Each entry: a keyword argument and the values drawn for it (the first is x-transformers' default, so leaving an
# option out is as likely as any value).
OPTION_VALUES = {
    "norm": [None, "use_rmsnorm", "use_scalenorm", "use_simple_rmsnorm", "use_derf"],
    "position": [None, "rotary_pos_emb", "alibi_pos_bias", "rel_pos_bias", "dynamic_pos_bias", "polar_pos_emb"],
    "pre_norm": [True, False],
    "sandwich_norm": [False, True],
    "residual_attn": [False, True],
    "gate_residual": [False, True],
    "residual_update": [None, "orthog_residual", "mv_split_residual"],  # (x-transformers refuses them beside gating)
    "scale_residual": [False, True],
    "residual_streams": [None, "hyper", "hyper_qkv", "gated", "lime", "aggregated"],  # (their rules below)
    "macaron": [False, True],
    "only_attn": [False, True],
    "use_layerscale": [False, True],
    "add_value_residual": [False, True],
    "shift_tokens": [0, 1],
    "softclamp_output": [False, True],
    "attn_qk_norm": [False, True],
    "attn_gate_values": [False, True],
    "attn_head_scale": [False, True],
    "attn_num_mem_kv": [0, 1, 3],
    "attn_add_zero_kv": [False, True],
    "attn_softclamp_logits": [False, True],
    "attn_max_attend_past": [None, 2, 5],
    "attn_talking_heads": [False, True],
    # (attn_hard is left out: its argmax would split on near-ties that float error can reorder)
    "attn_weighting": [None, "attn_sigmoid", "attn_cog_signed", "attn_l2_distance"],
    # (attn_gumbel_softmax is left out: its noise needs one seed per model, see test_attention_score_options.py)
    "attn_gate_variant": [None, "rank", "headwise_with_output_gate", "swiglu_output_gate"],
    "attn_gate_value_heads": [False, True],
    "attn_latent": [None, "q", "kv"],  # multi-latent attention
    "attn_laser": [False, True],
    "attn_use_rel_proj_pos_bias": [False, True],
    "attn_use_cope": [False, True],  # (decoders only, as x-transformers)
    "attn_orthog_projected_values": [False, True],
    "ff_glu": [False, True],
    "ff_swish": [False, True],
    "ff_relu_squared": [False, True],
    "ff_post_act_ln": [False, True],
    "ff_no_bias": [False, True],
    "ff_variant": [None, "solu", "softclamp", "glu_softclamp"],  # the activation variants (their rules below)
}
FLAGS = {"norm", "position", "attn_weighting", "residual_update"}  # their value is the name of a boolean keyword argument
# A feed-forward activation variant overrides what it excludes (SoLU and relu^2; a clamped non-GLU projection and
# GLU; the situ-GLU clamp needs GLU with GELU or swish); drawn after the ff_* flags.
FF_VARIANTS = {
    "solu": dict(ff_solu=True, ff_relu_squared=False),
    "softclamp": dict(ff_softclamp_value=0.6, ff_glu=False),
    "glu_softclamp": dict(ff_glu=True, ff_glu_softclamp=True, ff_relu_squared=False, ff_glu_gate_softclamp_value=0.7),
}

# Several residual streams and the layer integrators, each with what it needs.
STREAM_VARIANTS = {
    "hyper": dict(num_residual_streams=3, hyper_conn_sinkhorn_iters=3),
    "hyper_qkv": dict(num_residual_streams=2, qkv_receive_diff_residuals=True),
    "gated": dict(gated_multi_residual=True, num_residual_streams=2, residual_fn_kwargs=dict(read_gate_rank=4)),
    "lime": dict(integrate_layers=True),
    "aggregated": dict(attn_aggregated_residuals=True, attn_aggregated_residual_kwargs=dict(lora_rank=4)),
}

# The value / output gate variants (hybrid gated attention), each with the gates it needs.
GATE_VARIANTS = {
    "rank": dict(attn_gate_values=True, attn_gate_values_rank=3),
    "headwise_with_output_gate": dict(attn_gate_values=True, attn_gate_values_headwise=True, attn_output_gate=True),
    "swiglu_output_gate": dict(attn_output_gate=True, attn_output_gate_rank=4, attn_swiglu_values=True),
}


@st.composite
def stack_cases(draw):
    kind = draw(st.sampled_from(["encoder", "decoder"]))
    heads = draw(st.sampled_from([1, 2, 4]))
    kwargs = dict(dim=draw(st.sampled_from([16, 24])), depth=draw(st.integers(1, 3)), heads=heads,
                  attn_dim_head=draw(st.sampled_from([8, 12])),
                  attn_kv_heads=draw(st.sampled_from([k for k in (1, 2, 4) if heads % k == 0])))
    if heads == 1:
        kwargs["attn_dim_head"] = kwargs["dim"]  # x-transformers has no output projection for one head then
    for name, values in OPTION_VALUES.items():
        value = draw(st.sampled_from(values))
        if name in FLAGS:
            if value is not None:
                kwargs[value] = True
        elif name == "ff_variant":
            kwargs.update(FF_VARIANTS.get(value, {}))
        elif name == "attn_gate_variant":
            kwargs.update(GATE_VARIANTS.get(value, {}))
        elif name == "residual_streams":
            kwargs.update(STREAM_VARIANTS.get(value, {}))
        elif name == "attn_latent" and value is not None:
            kwargs.update({f"attn_use_latent_{value}": True, f"attn_dim_latent_{value}": 10})
        elif name == "attn_talking_heads":
            if value:
                kwargs["attn_pre_talking_heads"] = kwargs["attn_post_talking_heads"] = True
        elif value != values[0]:
            kwargs[name] = value
    b, n = draw(st.integers(1, 3)), draw(st.integers(1, 23))
    return dict(kind=kind, kwargs=kwargs, b=b, n=n, seed=draw(st.integers(0, 2**31 - 1)))


def _mask(case, g):
    b, n = case["b"], case["n"]
    mask = torch.rand(b, n, generator=g) > 0.3
    if case["kind"] == "decoder":
        # causal rows keep their first key (where x-transformers and we define the same output), but a row may
        # be masked entirely
        mask[:, 0] = True
    if b > 1:
        mask[-1] = False
    return mask


@settings(settings.get_profile(PROFILE))
@given(stack_cases())
def test_random_option_combinations_match_x_transformers(case):
    torch.manual_seed(case["seed"])
    theirs_cls, ours_cls = (XEncoder, Encoder) if case["kind"] == "encoder" else (XDecoder, Decoder)
    try:
        theirs = theirs_cls(**case["kwargs"])
        theirs(torch.randn(1, 2, case["kwargs"]["dim"]))
    except Exception:  # a combination x-transformers itself refuses (at construction or forward): draw another
        reject()
    try:
        ours = ours_cls(**case["kwargs"])  # whatever x-transformers runs, we accept...
    except ValueError as error:  # ...but for an option it would silently ignore, which we refuse by name
        if "x-transformers would ignore" not in str(error):
            raise
        reject()
    theirs.load_state_dict(perturbed_state_dict(theirs))
    ours.load_state_dict(theirs.state_dict(), strict=True)
    g = torch.Generator().manual_seed(case["seed"])
    x = torch.randn(case["b"], case["n"], case["kwargs"]["dim"], generator=g)
    mask = _mask(case, g)
    upstream = torch.randn(x.shape, generator=g)
    results = [_run(m.eval(), x, mask, upstream) for m in (ours, theirs)]
    exact = []  # x-transformers in float64, the fallback rule's reference: run only when a comparison needs it

    def reference(i):
        if not exact:
            # float64 as the default dtype too: x-transformers' DynamicPositionBias makes its positions in it
            default = torch.get_default_dtype()
            torch.set_default_dtype(torch.float64)
            try:
                model = theirs_cls(**case["kwargs"])
                model.load_state_dict({k: v.double() for k, v in theirs.state_dict().items()})
                exact.extend(_run(model.eval(), x, mask, upstream))
            finally:
                torch.set_default_dtype(default)
        return exact[i]

    names = ["output", "gradient of x"] + [f"gradient of {name}" for name, _ in ours.named_parameters()]
    for i, (name, got, want) in enumerate(zip(names, *results)):
        if want is None:
            assert got is None or not got.any(), f"{name}: x-transformers leaves it unused"
            continue
        assert got is not None, f"{name}: missing"
        tol = (1e-5 if name == "output" else 1e-4) * max(1.0, want.abs().max().item())
        err = (got - want).abs().max().item()
        if err > tol:
            ref = reference(i)
            ours_err, theirs_err = ((t.double() - ref).norm().item() for t in (got, want))
            assert ours_err <= 2 * theirs_err, (f"{name}: {err:.2e} (max) from x-transformers; from float64 (norm): "
                                                f"ours {ours_err:.2e}, x-transformers' own {theirs_err:.2e}")


def _run(module, x, mask, upstream):
    """The output, then the gradients of the input and of every parameter, in the module's dtype."""
    dtype = next(module.parameters()).dtype
    x = x.to(dtype).requires_grad_()
    out = module(x, mask=mask)
    grads = torch.autograd.grad(out, [x, *module.parameters()], upstream.to(dtype), allow_unused=True)
    return [out.detach(), *grads]
