"""Prints the README's table of x-transformers keyword arguments and whether x_transformers_cpp supports each.

Rows come from the signatures of the installed x-transformers (AttentionLayers, Attention as attn_* / cross_attn_*,
FeedForward as ff_*); "supported" comes from the native option keys, so the table cannot claim what the code does
not do. tests/python/test_readme_table.py checks that README.md holds exactly this table.

    python scripts/kwargs_table.py
"""
import inspect

from x_transformers.x_transformers import Attention, AttentionLayers, FeedForward

from x_transformers_cpp import _C

# How a supported option runs; everything not listed runs in the flash kernel path.
PATHS = {
    "attn_dropout": "materialised scores while training (dropout on the probabilities); flash kernel otherwise",
    "cross_attn_dropout": "as attn_dropout",
    "attn_num_mem_kv": "flash kernel; materialised scores together with alibi_pos_bias or attn_max_attend_past",
    "attn_add_zero_kv": "flash kernel; materialised scores together with alibi_pos_bias or attn_max_attend_past",
    "cross_attn_add_zero_kv": "flash kernel (a zero key and value in front)",
    "attn_flash": "accepted and ignored: our kernels always run",
    "cross_attn_flash": "accepted and ignored: our kernels always run",
    "alibi_pos_bias": "flash kernel (slopes computed in-kernel)",
    "attn_softclamp_logits": "flash kernel (soft-cap in-kernel)",
    "attn_max_attend_past": "flash kernel (left window, in-kernel)",
    "causal": "set by Decoder; Encoder rejects it",
    "rel_pos_bias": "materialised scores (a dense learned (head, query, key) bias)",
    "dynamic_pos_bias": "materialised scores (a dense learned (head, query, key) bias)",
    "attn_pre_talking_heads": "materialised scores (talking heads mix every head)",
    "attn_post_talking_heads": "materialised scores (talking heads mix every head)",
    "attn_pre_scale_post_talking_heads": "materialised scores (talking heads mix every head)",
    "attn_sparse_topk": "materialised scores (top-k of each row)",
    "attn_sparse_topk_straight_through": "materialised scores (top-k of each row)",
    "residual_attn": "materialised scores (each layer hands its pre-softmax scores on)",
    "cross_residual_attn": "materialised scores (each layer hands its pre-softmax scores on)",
    "rotary_pos_emb": "rotation of q and k before the flash kernel (self-attention only, as x-transformers)",
    "rotary_xpos": "rotation and xPos scaling of q and k before the flash kernel (Decoder only, as x-transformers)",
    "rotary_xpos_scale_base": "as rotary_xpos",
    "rotate_num_heads": "rotation of the last heads' q and k before the flash kernel (self-attention only)",
    "disable_abs_pos_emb": "read by the wrappers: their absolute position embedding is left out",
    "attn_head_learned_sink": "materialised scores (a learned per-head logit column before the softmax)",
    "cross_attn_head_learned_sink": "materialised scores (a learned per-head logit column before the softmax)",
    "attn_dim_context": "dim only: self-attention reads x (cross_attn_dim_context sets another width)",
    "cross_attn_dim_context": "keys and values projected from a context of that width",
    "use_adaptive_layernorm": "forward's `condition` scales each LayerNorm (1 + W condition), as DiT",
    "use_adaptive_rmsnorm": "forward's `condition` scales each RMSNorm (1 + W condition)",
    "use_adaptive_layerscale": "each branch output times sigmoid(W condition + b) (adaLN-zero)",
    "unet_skips": "second-half blocks join their mirror block's input through a (2 dim -> dim) projection",
    "reinject_input": "each branch reads x + W x_in",
    "pre_and_post_norm": "a norm after each residual too, no final norm",
    "attn_flash_pack_seq": "packed sequences (forward's flash_pack_seq_kwargs) attend per sequence in the varlen "
                           "kernel, on any device, rotary or not; needs attn_flash, as x-transformers",
    "cross_attn_flash_pack_seq": "as attn_flash_pack_seq, with flash_pack_seq_context_kwargs",
}
# Why a rejected keyword is rejected: the first matching rule (by the option's name without its attn_ / cross_attn_
# / ff_ prefix), else a research option not implemented yet. Each rejection raises a TypeError naming it.
_CALLABLE = "takes a Python callable or module, which the C++ stack cannot run"
WHY_REJECTED = [
    (("custom_attn_fn", "hybrid_module", "custom_activation"), _CALLABLE),
    (("hybrid_mask_kwarg", "hybrid_fold_axial_dim", "hybrid_learned_mix"),
     "an option of hybrid_module, a Python module, which the C++ stack cannot run"),
    (("rel_pos_kwargs", "residual_fn_kwargs", "data_dependent_alibi_kwargs", "aggregated_residual_kwargs",
      "attend_sdp_kwargs"), "a dict of keyword arguments for a module not implemented here"),
    (("verbose",), "logging only; nothing here to log"),
    (("onnxable",), "an ONNX-export variant of x-transformers' Python attention; ours exports through torch.export"),
    (("num_residual_streams", "hyper_conn_sinkhorn_iters", "qkv_receive_diff_residuals", "integrate_layers",
      "layer_integrate_use_softmax"), "hyper-connections / layer integration (several residual streams): not yet"),
    (("cross_attn_tokens_dropout",), "a training-time regulariser of XTransformer's, not of the stack: not yet"),
]
RESEARCH = "a research option not implemented yet"


def why_rejected(kwarg):
    name = next((kwarg[len(p):] for p in ("cross_attn_", "attn_", "ff_") if kwarg.startswith(p)), kwarg)
    for names, why in WHY_REJECTED:
        if name in names or kwarg in names:
            return why
    return RESEARCH


# Handled by the constructors themselves rather than as options.
IMPLIED = {"dim": "required", "depth": "required (unless custom_layers)", "heads": "default 8"}
# Not keyword arguments users pass to AttentionLayers.
INTERNAL = {"self", "kwargs", "heads", "causal", "dim_out", "dim", "output_proj_depth",
            "qkv_receive_diff_residuals", "learned_value_residual_mix", "rotate_num_heads", "inverted_attention"}


# Our own options, beyond x-transformers' signatures.
EXTENSIONS = {
    "attn_window_size": "xtc extension: sliding-window (local) attention in the flash kernel, O(n * window)",
    "attn_linear": "xtc extension: linear attention (elu + 1 feature map), O(n) time and memory, causal in chunks",
    "unpad": "xtc extension: with a mask, every layer runs on the kept tokens alone (packed at the entry, scattered "
             "back, zeros at masked positions)",
}


def rows():
    known = set(_C.option_keys())
    own = [p for p in inspect.signature(AttentionLayers.__init__).parameters if p not in ("self", "kwargs")]
    attn = [p for p in inspect.signature(Attention.__init__).parameters if p not in INTERNAL]
    ff = [p for p in inspect.signature(FeedForward.__init__).parameters if p not in INTERNAL]
    table = []
    for name in own:
        key = name
        table.append((name, key))
    table += [("attn_" + p, "attn." + p) for p in attn]
    table += [("cross_attn_" + p, "cross_attn." + p) for p in attn]
    table += [("ff_" + p, "ff." + p) for p in ff]
    table += [(k, k.replace("attn_", "attn.", 1)) for k in EXTENSIONS]
    out = []
    for kwarg, key in table:
        if kwarg in IMPLIED:
            status = "supported"
            path = IMPLIED[kwarg]
        elif key in known:
            status = "supported"
            path = EXTENSIONS.get(kwarg) or PATHS.get(
                kwarg, "flash kernel" if key.startswith(("attn.", "cross_attn.")) else "native")
        else:
            status = "rejected (TypeError)"
            path = why_rejected(kwarg)
        out.append((kwarg, status, path))
    return out


def markdown():
    lines = ["| kwarg | status | path (or why rejected) |", "|---|---|---|"]
    lines += [f"| `{k}` | {s} | {p} |" for k, s, p in rows()]
    return "\n".join(lines)


if __name__ == "__main__":
    print(markdown())
