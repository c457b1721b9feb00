"""Prints the README's table of x-transformers keyword arguments and whether x_transformers_cpp supports each.

Rows come from the signatures of the installed x-transformers (AttentionLayers, Attention as attn_* / cross_attn_*,
FeedForward as ff_*); "supported" comes from the native option keys, so the table cannot claim what the code does
not do. tests/python/test_readme_table.py checks that README.md holds exactly this table.

    python scripts/kwargs_table.py            # the keyword arguments
    python scripts/kwargs_table.py --forward  # the forward arguments (the stack inputs' one list)
"""
import inspect

import torch

from x_transformers.x_transformers import Attention, AttentionLayers, FeedForward

from x_transformers_cpp import _C

# How an attention option runs is not written here: a small stack with the option set (PROBES, else the value
# opposite to x-transformers' default for a flag, else that default) runs once in eval and once in training under
# x_transformers_cpp.backends.record_choices, and the path column reports the kernel each attention layer took with
# the reasons of the kernels it passed over, the very checks the forward makes.
PROBES = {
    "attn_sparse_topk": dict(attn_sparse_topk=2), "attn_sparse_topk_straight_through": dict(attn_sparse_topk=2),
    "attn_num_mem_kv": dict(attn_num_mem_kv=2), "cross_attn_num_mem_kv": dict(cross_attn_num_mem_kv=2),
    "attn_dropout": dict(attn_dropout=0.1), "cross_attn_dropout": dict(cross_attn_dropout=0.1),
    "attn_max_attend_past": dict(attn_max_attend_past=4),
    "cross_attn_sparse_topk": dict(cross_attn_sparse_topk=2),
    "attn_qk_norm_dim_scale": dict(attn_qk_norm=True), "attn_qk_norm_groups": dict(attn_qk_norm=True),
    "attn_qk_norm_scale": dict(attn_qk_norm=True), "cross_attn_qk_norm_dim_scale": dict(cross_attn_qk_norm=True),
    "cross_attn_qk_norm_groups": dict(cross_attn_qk_norm=True),
    "cross_attn_qk_norm_scale": dict(cross_attn_qk_norm=True),
    "attn_logit_softclamp_value": dict(attn_softclamp_logits=True),
    "cross_attn_logit_softclamp_value": dict(cross_attn_softclamp_logits=True),
    "attn_kv_heads": dict(attn_kv_heads=1), "cross_attn_kv_heads": dict(cross_attn_kv_heads=1),
    "attn_value_dim_head": dict(attn_value_dim_head=16), "cross_attn_value_dim_head": dict(cross_attn_value_dim_head=16),
    "attn_window_size": dict(attn_window_size=4), "rotary_xpos": dict(rotary_pos_emb=True, causal=True),
    "rotary_xpos_scale_base": dict(rotary_xpos=True, causal=True), "rotate_num_heads": dict(rotary_pos_emb=True),
    "attn_flash_pack_seq": None, "cross_attn_flash_pack_seq": None,  # need packed inputs: see NOTES
}
# Options that need another beside them, probed with it, for self- and cross-attention alike.
_NEEDS = {
    "gate_values_rank": dict(gate_values=True, gate_values_rank=4),
    "gate_values_headwise": dict(gate_values=True, gate_values_headwise=True),
    "output_gate_rank": dict(output_gate=True, output_gate_rank=4),
    "output_gate_headwise": dict(output_gate=True, output_gate_headwise=True),
    "low_rank_silu_gates": dict(gate_values=True, gate_values_rank=4, low_rank_silu_gates=False),
    "swiglu_values": dict(gate_values=True, swiglu_values=True),
    "laser_softclamp_value": dict(laser=True, laser_softclamp_value=5.0),
    "sublayer_dropout": dict(sublayer_dropout=0.1),
    "use_latent_q": dict(use_latent_q=True, dim_latent_q=8), "dim_latent_q": dict(use_latent_q=True, dim_latent_q=8),
    "use_latent_kv": dict(use_latent_kv=True, dim_latent_kv=8),
    "dim_latent_kv": dict(use_latent_kv=True, dim_latent_kv=8),
    "latent_rope_subheads": dict(use_latent_kv=True, dim_latent_kv=8, latent_rope_subheads=1),
    "gumbel_softmax_temp": dict(gumbel_softmax=True, gumbel_softmax_temp=2.0),
    "gumbel_softmax_hard": dict(gumbel_softmax=True, gumbel_softmax_hard=False),
    # A GRU over the probe's width (16) giving its 2 heads x 8 features, as the spec the Python modules map to.
    "hybrid_fold_axial_dim": dict(hybrid_module="gru:16:16:1:1:1:0.0:0:0:torch", hybrid_fold_axial_dim=2),
    "hybrid_learned_mix": dict(hybrid_module="gru:16:16:1:1:1:0.0:0:0:torch", hybrid_fold_axial_dim=1,
                               hybrid_learned_mix=True),
}
PROBES.update({prefix + name: {prefix + k: v for k, v in kwargs.items()}
               for name, kwargs in _NEEDS.items() for prefix in ("attn_", "cross_attn_")})
# The projection aligns each query with its own position's values, so the probe's context (shorter than x, and
# reached by attn_* too, as x-transformers routes them) cannot carry it: described in NOTES.
for _name in ("attn_orthog_projected_values", "attn_orthog_projected_values_per_head",
              "cross_attn_orthog_projected_values", "cross_attn_orthog_projected_values_per_head"):
    PROBES[_name] = None
# Selective attention is causal self-attention's alone (attn_* reaches cross-attention too, so it is turned off
# there); cross-attention is never causal, so cross_attn_selective is accepted only as False.
PROBES["attn_selective"] = dict(attn_selective=True, cross_attn_selective=False, causal=True)
PROBES["cross_attn_selective"] = None
# Data-dependent ALiBi likewise gates the queries' own positions: self-attention only.
_DDA = dict(attn_data_dependent_alibi=True, cross_attn_data_dependent_alibi=False)
PROBES.update({
    "attn_data_dependent_alibi": _DDA,
    "attn_data_dependent_alibi_per_row": dict(_DDA, attn_data_dependent_alibi_per_row=True, causal=True),
    "attn_data_dependent_alibi_per_row_dim_head": dict(_DDA, attn_data_dependent_alibi_per_row=True, causal=True),
    "cross_attn_data_dependent_alibi": None, "cross_attn_data_dependent_alibi_per_row": None,
    "cross_attn_data_dependent_alibi_per_row_dim_head": None,
})
# CoPE is causal self-attention's alone, like selective attention.
_COPE = dict(attn_use_cope=True, cross_attn_use_cope=False, causal=True)
PROBES.update({"attn_use_cope": _COPE, "attn_cope_max_pos": dict(_COPE, attn_cope_max_pos=4),
               "attn_cope_soft_onehot_pos": dict(_COPE, attn_cope_soft_onehot_pos=True),
               "attn_cope_talking_heads": dict(_COPE, attn_cope_talking_heads=True)})
PROBES.update({"cross_attn_" + name: None for name in ("use_cope", "cope_max_pos", "cope_soft_onehot_pos",
                                                        "cope_talking_heads")})
for _prefix in ("attn_", "cross_attn_"):
    for _name in ("rel_proj_num_distance_basis", "rel_proj_max_dist"):
        PROBES[_prefix + _name] = {_prefix + "use_rel_proj_pos_bias": True}
# Inverted attention is cross-attention's alone: x-transformers drops it from attn_kwargs.
PROBES["attn_inverted_attention"] = None
# Stack options that change how attention runs, probed like the attn_* ones.
STACK_PROBED = {"polar_pos_emb", "alibi_pos_bias", "rel_pos_bias", "dynamic_pos_bias", "residual_attn", "cross_residual_attn",
                "rotary_pos_emb", "rotary_xpos", "rotary_xpos_scale_base", "rotate_num_heads"}
# What the kernel column alone does not say.
NOTES = {
    "alibi_pos_bias": "slopes computed in-kernel",
    "attn_softclamp_logits": "soft-cap in-kernel",
    "attn_max_attend_past": "left window, in-kernel",
    "attn_num_mem_kv": "materialised scores together with alibi_pos_bias or attn_max_attend_past",
    "attn_add_zero_kv": "materialised scores together with alibi_pos_bias or attn_max_attend_past",
    "cross_attn_add_zero_kv": "a zero key and value in front",
    "polar_pos_emb": "q and k as magnitudes at their positions' angles, 2 dim_head features (self-attention only)",
    "rotary_pos_emb": "q and k rotated before it (self-attention only, as x-transformers)",
    "rotary_xpos": "q and k rotated and xPos-scaled before it (Decoder only, as x-transformers)",
    "rotary_xpos_scale_base": "as rotary_xpos",
    "rotate_num_heads": "the last heads' q and k rotated before it (self-attention only)",
    "attn_window_size": "xtc extension: sliding-window (local) attention in-kernel, O(n * window)",
    "attn_flash_pack_seq": "packed sequences (forward's flash_pack_seq_kwargs) attend per sequence in the varlen "
                           "op (backend varlen), on any device, rotary or not; needs attn_flash, as x-transformers",
    "cross_attn_flash_pack_seq": "as attn_flash_pack_seq, with flash_pack_seq_context_kwargs",
    "attn_orthog_projected_values": "flash kernel; materialised scores when causal (the projection reads the "
                                    "padded queries, where x-transformers' softmax averages every value); needs as "
                                    "many keys as queries (reached by attn_*, cross-attention too)",
    "attn_orthog_projected_values_per_head": "as attn_orthog_projected_values",
    "cross_attn_orthog_projected_values": "as attn_orthog_projected_values, for a context as long as x (each "
                                          "query's own position's values)",
    "cross_attn_orthog_projected_values_per_head": "as cross_attn_orthog_projected_values",
    "cross_attn_data_dependent_alibi": "accepted as False only: the gates bias keys at the queries' own positions, "
                                       "which a context does not have",
    "cross_attn_data_dependent_alibi_per_row": "as cross_attn_data_dependent_alibi",
    "cross_attn_data_dependent_alibi_per_row_dim_head": "as cross_attn_data_dependent_alibi",
    "attn_data_dependent_alibi": "the forget gates' bias replaces the stack's position biases (refused beside them); "
                                 "a per-token decay the kernels could add, but they take ALiBi slopes only, so it "
                                 "materialises",
    "cross_attn_use_cope": "accepted as False only: cross-attention is never causal, and x-transformers refuses CoPE "
                           "that is not",
    "cross_attn_cope_max_pos": "as cross_attn_use_cope", "cross_attn_cope_soft_onehot_pos": "as cross_attn_use_cope",
    "cross_attn_cope_talking_heads": "as cross_attn_use_cope",
    "attn_cope_soft_onehot_pos": "x-transformers 2.31.10 fails here (an einx rank error); ours follows its formula",
    "cross_attn_selective": "accepted as False only: cross-attention is never causal, and x-transformers refuses "
                            "selective attention that is not",
    "attn_use_latent_kv": "the decoding cache holds the latent, (b, 1, N, dim_latent_kv) per layer",
    "cross_attn_use_latent_kv": "the decoding cache holds the latent, (b, 1, N, dim_latent_kv) per layer",
    "attn_latent_rope_subheads": "these key heads come from the input, not the latent; only they (and the queries' "
                                 "last as many) rotate; the cache holds them beside the latent",
    "attn_inverted_attention": "accepted as False only: inverted attention is cross-attention's "
                               "(cross_attn_inverted_attention); x-transformers drops it from attn_kwargs",
    "cross_attn_inverted_attention": "each key's weights a softmax over the queries, then each query's L1-normalised "
                                     "over the kept keys",
    "attn_l2_distance": "q and k take two more features whose dot product is -|q - k|^2",
    "cross_attn_l2_distance": "q and k take two more features whose dot product is -|q - k|^2",
    "attn_laser": "exp of the soft-clamped values in, log of the output out: any kernel",
    "cross_attn_laser": "exp of the soft-clamped values in, log of the output out: any kernel",
}
# Options whose row is a description rather than a kernel path.
DESCRIBED = {
    "polar_bias_uniform_init": "the keys' angle shift drawn uniform in [-2 pi, 0] (x-transformers 2.31.10 builds "
                               "this only under torch.no_grad)",
    "ff_custom_activation": "a torch.nn activation with a libtorch twin (ReLU, GELU with its approximation, SiLU, "
                            "Sigmoid, Tanh, Mish, ELU, LeakyReLU, Softplus, Hardtanh, ...; x-transformers' "
                            "ReluSquared), mapped by name; any other module or callable raises a TypeError naming it",
    "attn_hybrid_module": "a torch.nn.GRU or LSTM (any layers, bidirectional, batch_first, proj_size), copied into "
                          "every layer and run by the stack's own GRU / LSTM beside attention (the GRU's state in "
                          "the decoding cache); any other module raises a TypeError naming it",
    "cross_attn_hybrid_module": "as attn_hybrid_module, for cross-attention",
    "attn_flash": "accepted and ignored: our kernels always run",
    "cross_attn_flash": "accepted and ignored: our kernels always run",
    "causal": "set by Decoder; Encoder rejects it",
    "disable_abs_pos_emb": "read by the wrappers: their absolute position embedding is left out",
    "attn_dim_context": "dim only: self-attention reads x (cross_attn_dim_context sets another width)",
    "cross_attn_dim_context": "keys and values projected from a context of that width",
    "use_adaptive_layernorm": "forward's `condition` scales each LayerNorm (1 + W condition), as DiT",
    "use_adaptive_rmsnorm": "forward's `condition` scales each RMSNorm (1 + W condition)",
    "use_adaptive_layerscale": "each branch output times sigmoid(W condition + b) (adaLN-zero)",
    "unet_skips": "second-half blocks join their mirror block's input through a (2 dim -> dim) projection",
    "reinject_input": "each branch reads x + W x_in",
    "pre_and_post_norm": "a norm after each residual too, no final norm",
    "attn_linear": "xtc extension: linear attention (elu + 1 feature map), O(n) time and memory, causal in chunks",
    "scale_residual": "a learned per-feature residual scale; as a number, also every branch output times it",
    "depth_scale_residual": "True: output projections initialised N(0, 1 / (2 fan_in depth)); a number: every "
                            "branch output times it",
    "unpad": "xtc extension: with a mask, every layer runs on the kept tokens alone (packed at the entry, scattered "
             "back, zeros at masked positions)",
}


def probe_kwargs(kwarg):
    """The stack keyword arguments that exercise `kwarg`, or None where a probe cannot show it."""
    if kwarg in PROBES and PROBES[kwarg] is None:
        return None
    kwargs = dict(PROBES.get(kwarg, {}))
    if kwarg not in kwargs:
        name = next((kwarg[len(p):] for p in ("cross_attn_", "attn_") if kwarg.startswith(p)), kwarg)
        owner = AttentionLayers if name == kwarg else Attention
        parameter = inspect.signature(owner.__init__).parameters.get(name)
        if parameter is not None and isinstance(parameter.default, bool):
            kwargs[kwarg] = not parameter.default
    return kwargs


def probed_path(kwarg):
    """The kernel the attention layers take with `kwarg` set, and why the ones before it could not run."""
    from x_transformers_cpp import Decoder, Encoder
    from x_transformers_cpp.backends import Backend, record_choices

    kwargs = probe_kwargs(kwarg)
    if kwargs is None:
        return None
    causal = kwargs.pop("causal", False)
    torch.manual_seed(0)
    stack = (Decoder if causal else Encoder)(dim=16, depth=2, heads=2, attn_dim_head=8, cross_attend=True, **kwargs)
    x, context = torch.randn(2, 7, 16), torch.randn(2, 5, 16)
    paths = {}
    for training in (False, True):
        with record_choices() as choices:
            stack.train(training)(x, context=context)
        paths[training] = [c for c in choices if c.site.endswith("layer")]
    math = {training: [c for c in chosen if c.chosen == Backend.MATH] for training, chosen in paths.items()}
    reasons = lambda cs: "; ".join(dict.fromkeys(r for c in cs for rs in c.rejected.values() for r in rs))
    if not paths[False]:
        return "no softmax kernel"
    if math[False]:
        return f"materialised scores ({reasons(math[False])})"
    if math[True]:
        return f"flash kernel; materialised scores while training ({reasons(math[True])})"
    return "flash kernel"


def attention_path(kwarg):
    path = probed_path(kwarg)
    note = NOTES.get(kwarg)
    if path is None:
        return note
    return f"{path}; {note}" if note else path


# Why a rejected keyword is rejected: the first matching rule (by the option's name without its attn_ / cross_attn_
# / ff_ prefix), else a research option not implemented yet. Each rejection raises a TypeError naming it.
_CALLABLE = "takes a Python callable or module, which the C++ stack cannot run"
WHY_REJECTED = [
    (("custom_attn_fn",), _CALLABLE + " (the weightings here: sigmoid, hard, cog_signed, gumbel_softmax, sparse_topk)"),
    (("attend_sdp_kwargs",), "torch SDPA's backend switches of x-transformers' flash path; ours are chosen with "
                             "x_transformers_cpp.backends"),
    (("verbose",), "logging only; nothing here to log"),
    (("onnxable",), "an ONNX-export variant of x-transformers' Python attention; ours exports to ONNX as it is "
                    "(torch.onnx.export with x_transformers_cpp.onnx.translation_table())"),
]
RESEARCH = "a research option not implemented yet"


def why_rejected(kwarg):
    name = next((kwarg[len(p):] for p in ("cross_attn_", "attn_", "ff_") if kwarg.startswith(p)), kwarg)
    for names, why in WHY_REJECTED:
        if name in names or kwarg in names:
            return why
    return RESEARCH


# Handled by the constructors themselves rather than as options.
IMPLIED = {"dim": "required", "depth": "required (unless custom_layers)", "heads": "default 8",
           "attn_data_dependent_alibi_kwargs": "bias_init and post_log_scale; other keys raise a TypeError naming them",
           "cross_attn_data_dependent_alibi_kwargs": "as attn_data_dependent_alibi_kwargs",
           "rel_pos_kwargs": "slopes: custom ALiBi slopes, one per ALiBi head (alibi_slopes); other keys raise a "
                             "TypeError naming them",
           "residual_fn_kwargs": "the residual update's options: learned, init_alpha, init_beta (mv_split_residual), "
                                 "read_gate_rank (gated_multi_residual); other keys raise a TypeError naming them",
           "attn_hybrid_mask_kwarg": "None only: nn.GRU and nn.LSTM take no mask keyword (x-transformers would "
                                     "pass one and fail); a name raises a TypeError saying so",
           "cross_attn_hybrid_mask_kwarg": "as attn_hybrid_mask_kwarg",
           "attn_aggregated_residual_kwargs": "lora_rank, and lora_activation as a torch.nn activation with a "
                                              "libtorch twin; other keys raise a TypeError naming them"}
# Not keyword arguments users pass to AttentionLayers.
INTERNAL = {"self", "kwargs", "heads", "causal", "dim_out", "dim", "output_proj_depth",
            "qkv_receive_diff_residuals", "learned_value_residual_mix", "rotate_num_heads"}


# Our own options, beyond x-transformers' signatures.
EXTENSIONS = ["attn_window_size", "attn_linear", "unpad"]


def rows():
    known = set(_C.option_keys())
    own = [p for p in inspect.signature(AttentionLayers.__init__).parameters if p not in ("self", "kwargs")]
    attn = [p for p in inspect.signature(Attention.__init__).parameters if p not in INTERNAL]
    ff = [p for p in inspect.signature(FeedForward.__init__).parameters if p not in INTERNAL]
    # (kwarg, whether it reaches an attention): the option keys are x-transformers' kwarg names.
    table = [(name, False) for name in own]
    table += [("attn_" + p, True) for p in attn]
    table += [("cross_attn_" + p, True) for p in attn]
    table += [("ff_" + p, False) for p in ff]
    table += [(k, k.startswith("attn_")) for k in EXTENSIONS]
    out = []
    for kwarg, attention in table:
        if kwarg in IMPLIED:
            status = "supported"
            path = IMPLIED[kwarg]
        elif kwarg in known:
            status = "supported"
            if kwarg in DESCRIBED:
                path = DESCRIBED[kwarg]
            elif attention or kwarg in STACK_PROBED:
                path = attention_path(kwarg)
            else:
                path = "native"
        else:
            status = "rejected (TypeError)"
            path = why_rejected(kwarg)
        out.append((kwarg, status, path))
    return out


def markdown():
    lines = ["| kwarg | status | path (or why rejected) |", "|---|---|---|"]
    lines += [f"| `{k}` | {s} | {p} |" for k, s, p in rows()]
    return "\n".join(lines)


def forward_markdown():
    """The README's table of the stack's forward inputs: the one list's docs (XTC_STACK_INPUTS), as Python takes
    them."""
    from x_transformers_cpp.attention_layers import stack_input_docs
    lines = ["| forward argument | shape and meaning |", "|---|---|"]
    lines += [f"| `{name}` | {doc.replace('|', chr(92) + '|')} |" for name, doc in stack_input_docs()]
    return "\n".join(lines)


if __name__ == "__main__":
    import sys
    print(forward_markdown() if "--forward" in sys.argv else markdown())
