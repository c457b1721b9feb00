"""AttentionLayers, Encoder and Decoder as torch.nn.Modules over the C++ op torch.ops.xtc.attention_layers.

The Python modules own their parameters, under x-transformers' names and nesting (`layers.0.0.0.gamma`,
`layers.0.1.to_q.weight`, ...), and hand them to the op at every call; the names, shapes and initial values come
from the C++ module xtc::nn::AttentionLayers. No math happens here.
"""
from dataclasses import dataclass
from functools import reduce

import inspect
import json
import math
import re
import textwrap

import torch
from torch import nn

from . import _C
from .pretrained import PretrainedMixin


def _activation_spec(module, argument="ff_custom_activation"):
    """An activation module argument as our option: the name (and arguments) of a torch.nn activation with a
    libtorch twin; any other module or callable raises a TypeError naming the argument."""
    if isinstance(module, str):
        return module
    n = nn
    specs = {
        n.ReLU: lambda m: "relu", n.ReLU6: lambda m: "relu6", n.SiLU: lambda m: "silu", n.Sigmoid: lambda m: "sigmoid",
        n.Tanh: lambda m: "tanh", n.Mish: lambda m: "mish", n.Softsign: lambda m: "softsign", n.SELU: lambda m: "selu",
        n.Hardswish: lambda m: "hardswish", n.Hardsigmoid: lambda m: "hardsigmoid", n.Tanhshrink: lambda m: "tanhshrink",
        n.LogSigmoid: lambda m: "logsigmoid", n.Identity: lambda m: "identity",
        n.GELU: lambda m: "gelu" if m.approximate == "none" else "gelu_tanh",
        n.ELU: lambda m: f"elu:{m.alpha!r}", n.CELU: lambda m: f"celu:{m.alpha!r}",
        n.LeakyReLU: lambda m: f"leaky_relu:{m.negative_slope!r}",
        n.Hardtanh: lambda m: f"hardtanh:{m.min_val!r}:{m.max_val!r}",
        n.Softplus: lambda m: f"softplus:{m.beta!r}:{m.threshold!r}",
    }
    spec = specs.get(type(module))  # exact types: a subclass may compute something else
    if spec is None and type(module).__name__ == "ReluSquared" and type(module).__module__.startswith("x_transformers"):
        return "relu_squared"
    if spec is None:
        raise TypeError(f"{argument}: {module!r} has no libtorch twin here; pass one of torch.nn's "
                        f"{', '.join(sorted(t.__name__ for t in specs))} (or x-transformers' ReluSquared)")
    return spec(module)


def _recurrent_spec(module, argument):
    """attn_hybrid_module as our option: a torch.nn.GRU or LSTM's configuration (functional::RecurrentSpec), its
    weights given (copied in after construction, as x-transformers deep-copies the module into every layer); any
    other module raises a TypeError naming the argument."""
    if isinstance(module, str):
        return module
    if type(module) not in (nn.GRU, nn.LSTM):
        raise TypeError(f"{argument}: {type(module).__name__} has no libtorch twin here; pass a torch.nn.GRU or "
                        f"torch.nn.LSTM (any layers, bidirectional, batch_first, proj_size)")
    m = module
    fields = ["lstm" if isinstance(m, nn.LSTM) else "gru", m.input_size, m.hidden_size, m.num_layers, int(m.bias),
              int(m.batch_first), repr(float(m.dropout)), int(m.bidirectional), m.proj_size, "given"]
    return ":".join(str(f) for f in fields)


def _hybrid_weights(kwargs):
    """The hybrid modules' weights by option prefix ('attn_', 'cross_attn_'), copied now (x-transformers' deepcopy)."""
    return {prefix: {k: v.detach().clone() for k, v in kwargs[prefix + "hybrid_module"].state_dict().items()}
            for prefix in ("attn_", "cross_attn_") if isinstance(kwargs.get(prefix + "hybrid_module"), nn.Module)}


def _json_ready(name, value):
    """A keyword argument as the C++ translation reads it (JSON): tuples as lists, non-finite floats by name; a value
    JSON cannot hold raises naming the argument."""
    if isinstance(value, (tuple, list)):
        return [_json_ready(name, v) for v in value]
    if isinstance(value, dict):
        return {str(k): _json_ready(name, v) for k, v in value.items()}
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)  # 'inf', '-inf', 'nan'
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"{name}: expected a bool, int, float or None, got {type(value).__name__}: {value!r}")


def _python_forms(kwargs):
    """The module arguments as their spec strings (the libtorch twin's name and arguments): ff_custom_activation,
    attn_aggregated_residual_kwargs' lora_activation, and the hybrid modules."""
    kwargs = dict(kwargs)
    if kwargs.get("ff_custom_activation") is not None:
        kwargs["ff_custom_activation"] = _activation_spec(kwargs["ff_custom_activation"])
    aggregated = kwargs.get("attn_aggregated_residual_kwargs")
    if isinstance(aggregated, dict) and aggregated.get("lora_activation") is not None:
        kwargs["attn_aggregated_residual_kwargs"] = dict(aggregated, lora_activation=_activation_spec(
            aggregated["lora_activation"], "attn_aggregated_residual_kwargs lora_activation"))
    for name in ("attn_hybrid_module", "cross_attn_hybrid_module"):
        if kwargs.get(name) is not None:
            kwargs[name] = _recurrent_spec(kwargs[name], name)
    return {name: _json_ready(name, value) for name, value in kwargs.items()}


def _options_json(kwargs):
    """x-transformers kwargs as the JSON object the C++ options read (AttentionLayersOptions::parse, which
    routes them and raises TypeError naming unknown or unsupported ones): config.json's form."""
    return json.dumps(_python_forms(kwargs))


def differing_options(kwargs, options, defaults, required):
    """The keyword arguments a module was built with, as torch's modules show theirs in a repr: the `required`
    ones, then those whose canonical value in `options` differs from `defaults` (the same module built with only
    the required ones)."""
    canonical, default = json.loads(options), json.loads(defaults)
    shown = []
    for name, value in kwargs.items():
        if name in required or name not in canonical or canonical[name] != default.get(name):
            shown.append(f"{name}={value!r}")
    return ", ".join(shown)


def initializes_on_construction():
    """False under torch.device("meta"): there, as x-transformers' modules, ours allocate nothing and hold meta
    tensors, to be materialised with to_empty(device=...) and reset_parameters()."""
    return torch.get_default_device().type != "meta"


def _initial_tensor(shape, value):
    """A layout entry's tensor: the C++ module's freshly initialised one (kept as is on the CPU, so construction
    holds one copy of the parameters; moved under a torch.device context), or an uninitialised one on the default
    device (meta) when the layout carries no value."""
    if value is None:
        return torch.empty(shape)
    device = torch.get_default_device()
    return value.detach() if value.device == device else value.detach().to(device)


def _build_tree(layout, classes=None):
    """Nested modules holding nn.Parameters (and persistent buffers) at the layout's dotted names; numbered children
    form ModuleLists. layout: (name, shape, is_buffer, value or None) entries, as the C++ layouts give them.
    classes: {dotted name: nn.Module subclass} for nodes that also run (x-transformers' wrappers call some)."""
    classes = classes or {}
    tree = {}
    for name, shape, is_buffer, value in layout:
        *path, leaf = name.split(".")
        node = tree
        for part in path:
            node = node.setdefault(part, {})
        node[leaf] = (_initial_tensor(shape, value), is_buffer)

    def make(node, path=""):
        children = {k: v for k, v in node.items() if isinstance(v, dict)}
        if children and len(children) == len(node) and sorted(children) == [str(i) for i in range(len(children))]:
            return nn.ModuleList(make(children[str(i)], f"{path}{i}.") for i in range(len(children)))
        module = classes.get(path.rstrip("."), nn.Module)()
        for key, value in node.items():
            if isinstance(value, dict):
                module.add_module(key, make(value, f"{path}{key}."))
            elif value[1]:
                module.register_buffer(key, value[0])
            else:
                module.register_parameter(key, nn.Parameter(value[0]))
        return module

    return make(tree)


def fill_from_layout(module, layout):
    """Copies a freshly initialised layout's values into the module's tensors of those names (entries without a
    value are skipped): reset_parameters, on whatever device the module is. FSDP2-sharded parameters (DTensors)
    take their shard of the value."""
    with torch.no_grad():
        for name, _, _, value in layout:
            if value is None:
                continue
            target = reduce(getattr, name.split("."), module)
            if _is_dtensor(target):
                from torch.distributed.tensor import distribute_tensor
                value = distribute_tensor(value.to(target.device), target.device_mesh, target.placements)
            target.copy_(value)


def _is_dtensor(t):
    if not torch.distributed.is_available():
        return False
    from torch.distributed.tensor import DTensor
    return isinstance(t, DTensor)


def unshard_fsdp_groups(module):
    """FSDP2 groups inside `module` (fully_shard on each layer): the stack runs as one op, so their own forwards,
    where FSDP would gather them, never run. They are gathered here for the op; FSDP's root post-backward then
    reduce-scatters their gradients and reshards them."""
    if not torch.distributed.is_available():
        return
    from torch.distributed.fsdp import FSDPModule
    for child in module.modules():
        if child is not module and isinstance(child, FSDPModule):
            child.unshard()


@dataclass
class Intermediates:
    """The part of x-transformers' per-attention-layer Intermediates filled here: cached_kv, the layer's keys
    (batch, kv_heads, seq, dim_head) and values (batch, kv_heads, seq, value_dim_head), cached ones included, taken
    before rotary as x-transformers does; and the attention maps (batch, heads, seq, keys): qk_similarities,
    pre_softmax_attn, post_softmax_attn, None where x-transformers has none (attn_flash=True, and our attn_linear)."""

    cached_kv: tuple | None = None
    layer_type: str | None = None  # 'a' self-attention, 'c' cross-attention
    qk_similarities: torch.Tensor | None = None
    pre_softmax_attn: torch.Tensor | None = None
    post_softmax_attn: torch.Tensor | None = None
    hybrid_hidden: torch.Tensor | None = None  # the hybrid GRU's state (attn_hybrid_module), as x-transformers
    log_probs: torch.Tensor | None = None  # return_gumbel_log_probs: (b, h, n) log-probability of the argmax key


@dataclass
class LayerIntermediates:
    """The part of x-transformers' LayerIntermediates that return_hiddens fills here; it is also the cache of
    incremental decoding (pass it back as `cache=`)."""

    hiddens: list  # the residual stream entering each executed self-attention layer
    last_hidden: torch.Tensor  # the output, after the final norm
    layer_hiddens: list  # the stream entering each executed layer, then the stream before the final norm
    attn_intermediates: list | None = None  # one Intermediates per executed attention layer
    cache_length: int = 0  # positions decoded so far
    mems: list | None = None  # Transformer-XL: the next call's memories (TransformerWrapper's return_mems)
    attn_pooled_tokens: torch.Tensor | None = None  # TransformerWrapper's attn_pool
    logits: torch.Tensor | None = None  # TransformerWrapper's logits beside the pooled tokens (encoders)
    logit_entropies: torch.Tensor | None = None  # TransformerWrapper's return_logit_entropies: (batch, seq)
    attn_z_loss: torch.Tensor | None = None  # TransformerWrapper's return_attn_z_loss: the weighted scalar
    initial_embeds: torch.Tensor | None = None  # TransformerWrapper's embeddings before emb_dropout
    # TransformerWrapper(looped=True): each step's exit_gate logits and (looped_pred_all_logits) logits, the
    # last step's index per decoded call, and looped inference's per-step prompt keys and values.
    exit_logits: list | None = None
    all_pred_logits: list | None = None
    exit_indices: torch.Tensor | None = None
    looped_prompt_kv_cache: tuple | None = None


def _add_hard_attention_log_probs(intermediates):
    """x-transformers' return_gumbel_log_probs: each attention layer's log-softmax of its logits at the key its
    (hard) map picks, (b, h, n)."""
    for inter in intermediates.attn_intermediates:
        if inter.pre_softmax_attn is None:
            raise ValueError("return_gumbel_log_probs reads each attention layer's logits and map, which "
                             "attn_flash=True does not keep; construct the stack with attn_flash=False")
        picked = inter.post_softmax_attn.argmax(dim=-1, keepdim=True)
        inter.log_probs = inter.pre_softmax_attn.log_softmax(dim=-1).gather(-1, picked).squeeze(-1)


def _attention_types(plan):
    """Each executed attention layer's (kind, keeps a hybrid GRU state), what layer_intermediates reads."""
    return list(zip(plan.executed_attention_types, plan.executed_hybrid_states))


def flat_cache(cache):
    """The ops' cache_kv from a LayerIntermediates: k0, v0, k1, v1, ..., then the hybrid GRU states (empty without a
    cache)."""
    if cache is None:
        return []
    inters = cache.attn_intermediates
    return ([t for inter in inters for t in inter.cached_kv] +
            [inter.hybrid_hidden for inter in inters if inter.hybrid_hidden is not None])


def layer_intermediates(types, out, hiddens, layer_hiddens, kv, maps, cache_length):
    """LayerIntermediates from what the *_with_hiddens ops return: kv and maps flattened per attention layer in
    `types` order ((kind 'a' / 'c', keeps a hybrid GRU state) pairs, AttentionLayers._attention_types), the hybrid
    states after the (k, v) pairs, maps empty where the layer has none."""
    maps = [m if m.dim() == 4 else None for m in maps]
    states = iter(kv[2 * len(types):])
    attn_intermediates = [Intermediates(cached_kv=(kv[2 * i], kv[2 * i + 1]), layer_type=t,
                                        qk_similarities=maps[3 * i], pre_softmax_attn=maps[3 * i + 1],
                                        post_softmax_attn=maps[3 * i + 2],
                                        hybrid_hidden=next(states) if has_state else None)
                          for i, (t, has_state) in enumerate(types)]
    return LayerIntermediates(hiddens=list(hiddens), last_hidden=out, layer_hiddens=list(layer_hiddens),
                              attn_intermediates=attn_intermediates, cache_length=cache_length)


def _stack_input_schema():
    """The layer stack's forward inputs as the ops take them (XTC_STACK_INPUTS, the one
    list), read off the op's schema: (name, default) pairs between x and params."""
    arguments = torch.ops.xtc.attention_layers.default._schema.arguments
    names = [a.name for a in arguments]
    return [(a.name, [] if isinstance(a.type, torch.ListType) else None)
            for a in arguments[1:names.index("params")]]


_STACK_INPUTS = _stack_input_schema()

# x-transformers' names of the stack's forward inputs (AttentionLayers.forward, and what its wrappers pass on): the
# ops' (XTC_STACK_INPUTS, read off the schema), except the packed-sequence lists, which x-transformers passes
# as flash_pack_seq_kwargs dicts, and with detach_additional_kv; `mask` is a parameter of every forward.
STACK_KWARGS = tuple(name for name, _ in _STACK_INPUTS
                     if name not in ("mask", "ff_output_scales") and not name.startswith("flash_pack_seq"))
STACK_KWARGS += ("flash_pack_seq_kwargs", "flash_pack_seq_context_kwargs", "detach_additional_kv",
                 "deep_embeds_and_ids")

# x-transformers' forward arguments that choose this call's layer order (they change the options, not the inputs).
ORDER_KWARGS = ("layers_execute_order", "repeat_blocks")

# Where Python takes a stack input in another form than the op (stack_arguments converts them): the name
# x-transformers uses, and what precedes the list's doc.
_PYTHON_FORMS = {
    "mem_masks": ("mem_masks", "a list (None entries keep every key): "),
    "flash_pack_seq": ("flash_pack_seq_kwargs", "dict(cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k): "),
    "flash_pack_seq_context": ("flash_pack_seq_context_kwargs", "the same dict for cross-attention: "),
    "self_attn_additional_kv": ("self_attn_additional_kv", "a list of (k, v), or another stack's "
                                "LayerIntermediates (its cached_kv), detached with detach_additional_kv=True: "),
    "ff_output_scales": ("deep_embeds_and_ids", "(table (num_tokens, depth, dim), ids (b, n)), the scales being "
                         "the ids' rows of the table, layer by layer: "),
}


def stack_input_docs():
    """[(name, doc)] of the stack's forward inputs as Python takes them, from the one list (XTC_STACK_INPUTS): what
    the forward docstrings and the README's table of forward arguments show."""
    docs = []
    for name, _, doc in _C.stack_inputs():
        if name.startswith("flash_pack_seq") and name.endswith("_max"):
            continue  # part of the flash_pack_seq*_kwargs dict
        python_name, prefix = _PYTHON_FORMS.get(name, (name, ""))
        docs.append((python_name, prefix + doc))
    return docs


def with_stack_inputs(forward):
    """Documents `forward`, which takes the stack inputs through **kwargs, with each of them (stack_input_docs) and
    shows them in its signature, keyword-only, at their defaults (inspect.signature, help())."""
    signature = inspect.signature(forward)
    kept = [p for p in signature.parameters.values() if p.kind != p.VAR_KEYWORD]
    taken = {p.name for p in kept}
    defaults = dict(route_additional_kv_to_top=True, detach_additional_kv=False)  # x-transformers' (else None)
    added = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=defaults.get(name))
             for name in STACK_KWARGS if name not in taken]
    var = [p for p in signature.parameters.values() if p.kind == p.VAR_KEYWORD]
    forward.__signature__ = signature.replace(parameters=kept + added + var)
    lines = "\n".join(textwrap.fill(f"{name}: {doc}", 116, initial_indent=" " * 8, subsequent_indent=" " * 12)
                      for name, doc in stack_input_docs())
    forward.__doc__ = (forward.__doc__ or "") + f"\n        Stack inputs (x-transformers' names):\n{lines}\n"
    return forward


def _additional_kv_list(additional_kv, detach):
    """self_attn_additional_kv as the ops take it: [k0, v0, k1, v1, ...]. As x-transformers, a LayerIntermediates
    (another model's return_hiddens, ours or x-transformers') gives its layers' cached_kv."""
    if additional_kv is None:
        return []
    if hasattr(additional_kv, "attn_intermediates"):
        additional_kv = [inter.cached_kv for inter in additional_kv.attn_intermediates]
    flat = []
    for i, pair in enumerate(additional_kv):
        if not (isinstance(pair, (tuple, list)) and len(pair) == 2 and all(torch.is_tensor(t) for t in pair)):
            raise TypeError(f"self_attn_additional_kv: expected (k, v) tensor pairs or a LayerIntermediates, "
                            f"got {type(pair).__name__} at index {i}")
        flat += [t.detach() if detach and t.requires_grad else t for t in pair]
    return flat


def _deep_embed_scales(deep_embeds_and_ids):
    """x-transformers' deep_embeds_and_ids (table (num_tokens, depth, dim), token ids (b, n)) as the ops take
    them: each feed-forward's (b, n, dim) rows, in turn."""
    if deep_embeds_and_ids is None:
        return []
    table, ids = deep_embeds_and_ids
    if not (torch.is_tensor(table) and table.dim() == 3 and torch.is_tensor(ids) and ids.dim() == 2
            and not ids.is_floating_point()):
        raise TypeError("deep_embeds_and_ids: expected (a (num_tokens, depth, dim) table, (batch, seq) integer "
                        "ids)")
    return list(table[ids].unbind(2))


def stack_arguments(**given):
    """x-transformers' stack inputs (AttentionLayers.forward's keyword arguments) as the ops take them, in the ops'
    order, absent ones at their defaults. Each passes under its schema name, except the few x-transformers gives in
    another form: mems with None masks, the flash_pack_seq kwargs dicts, (k, v) pairs of additional key/values."""
    mems = list(given.pop("mems", None) or [])
    mem_masks = given.pop("mem_masks", None)
    # The ops take one mask per memory or none: a missing one keeps every memory key.
    given["mem_masks"] = [torch.ones(m.shape[:2], dtype=torch.bool, device=m.device) if k is None else k
                          for m, k in zip(mems, mem_masks)] if mem_masks else []
    given["mems"] = mems
    for name in ("flash_pack_seq", "flash_pack_seq_context"):
        given[name], given[name + "_max"] = flash_pack_seq_args(given.pop(name + "_kwargs", None), name + "_kwargs")
    given["self_attn_additional_kv"] = _additional_kv_list(given.pop("self_attn_additional_kv", None),
                                                           given.pop("detach_additional_kv", False))
    given["route_additional_kv_to_top"] = bool(given.pop("route_additional_kv_to_top", True))
    given["ff_output_scales"] = _deep_embed_scales(given.pop("deep_embeds_and_ids", None))
    arguments = [given.pop(name, default) for name, default in _STACK_INPUTS]
    if given:
        raise TypeError(f"AttentionLayers: unexpected stack inputs {', '.join(sorted(given))}")
    return arguments


_PACK_SEQ_KEYS = ("cu_seqlens_q", "cu_seqlens_k", "max_seqlen_q", "max_seqlen_k")


def flash_pack_seq_args(kwargs, name):
    """x-transformers' flash_pack_seq_kwargs (flash_attn_varlen_func's keyword arguments) as the ops take them:
    ([cu_seqlens_q, cu_seqlens_k], [max_seqlen_q, max_seqlen_k]), or two empty lists."""
    if kwargs is None:
        return [], []
    unknown = sorted(set(kwargs) - set(_PACK_SEQ_KEYS))
    missing = [k for k in _PACK_SEQ_KEYS if k not in kwargs]
    if unknown or missing:
        raise TypeError(f"{name}: expected the keys {', '.join(_PACK_SEQ_KEYS)}"
                        + (f"; unsupported: {', '.join(unknown)}" if unknown else "")
                        + (f"; missing: {', '.join(missing)}" if missing else ""))
    return ([kwargs["cu_seqlens_q"], kwargs["cu_seqlens_k"]],
            [int(kwargs["max_seqlen_q"]), int(kwargs["max_seqlen_k"])])


def check_forward_defaults(owner, given, defaults):
    """x-transformers' forward arguments that are not implemented here work at their defaults (which do nothing)
    and are refused by name otherwise, never ignored. None and 0 / False count as the same default (x-transformers'
    own wrappers pass either)."""
    refused = []
    for name, value in given.items():
        if name not in defaults:
            refused.append(name)
            continue
        default = defaults[name]
        if isinstance(default, dict) or default is None or default is False or default == 0:
            neutral = value is None or (not torch.is_tensor(value) and not value)
        else:
            neutral = not torch.is_tensor(value) and value == default
        if not neutral:
            refused.append(name)
    if refused:
        raise TypeError(f"{owner}.forward: unsupported arguments (only at x-transformers' defaults): "
                        f"{', '.join(sorted(refused))}")


class AttentionLayers(PretrainedMixin, nn.Module):
    """A stack of attention and feed-forward layers, as x-transformers' AttentionLayers.

    Args (keyword names are x-transformers'):
        dim: model width. depth: number of (attention, feed-forward) blocks. heads: attention heads (8).
        causal: causal self-attention. cross_attend / only_cross: cross-attention layers over `context`.
        Norms (use_rmsnorm, use_scalenorm, use_simple_rmsnorm, norm_add_unit_offset, pre_norm, sandwich_norm),
        residuals (scale_residual, gate_residual, use_layerscale), layouts (macaron, custom_layers, par_ratio,
        sandwich_coef, layers_execute_order, weight_tie_layers), alibi_pos_bias, softclamp_output, layer_dropout.
        attn_* / cross_attn_*: attention options (dim_head, kv_heads, qk_norm, gate_values, num_mem_kv, ...).
        ff_*: feed-forward options (mult, glu, swish, relu_squared, post_act_ln, no_bias, dropout).
        The README's table lists every x-transformers keyword argument and its status here.
    """

    def __init__(self, dim, depth=None, heads=8, causal=False, **kwargs):
        super().__init__()
        if depth is None and kwargs.get("custom_layers") is not None:
            # As x-transformers: the number of executed layers.
            depth = len(kwargs.get("layers_execute_order") or kwargs["custom_layers"])
        if depth is None:
            raise TypeError("AttentionLayers: depth is required unless custom_layers gives the layers")
        self._kwargs = dict(dim=dim, depth=depth, heads=heads, causal=causal, **kwargs)  # for the repr
        plan = _C.AttentionLayersPlan(_options_json(self._kwargs))  # the options parsed and validated, once
        self._options = plan.options
        layout = plan.layout(initializes_on_construction())
        self._parameter_names = [name for name, *_ in layout]
        self._attention_types = _attention_types(plan)  # once: read by every return_hiddens
        # The attributes x-transformers' wrappers read off a stack.
        self.dim, self.depth, self.causal = dim, depth, causal
        self.attn_heads, self.attn_dim_head = heads, kwargs.get("attn_dim_head", 64)
        # Our cache refuses shift_tokens and the residual updates over whole sequences (x-transformers would
        # shift or reduce within the new tokens only), and selective attention (x-transformers' can_cache_kv):
        # no caching then.
        given = lambda name: any(v) if isinstance(v := kwargs.get(name, False), (tuple, list)) else bool(v)
        self.can_cache_kv = not any(map(given, ("shift_tokens", "attn_selective", "orthog_residual",
                                                "mv_split_residual")))
        # An LSTM hybrid keeps two states, x-transformers' cache one (it fails there): no caching then.
        self.can_cache_kv &= not any(isinstance(kwargs.get(p + "hybrid_module"), nn.LSTM)
                                     for p in ("attn_", "cross_attn_"))
        self._unpad = bool(kwargs.get("unpad", False))
        self.disable_abs_pos_emb = plan.disables_abs_pos_emb
        self.layer_types = tuple(plan.layer_types)
        tree = _build_tree(layout)
        for name, param in tree.named_parameters(recurse=False):  # stream_emb
            self.register_parameter(name, param)
        for name, child in tree.named_children():
            self.add_module(name, child)
        self._hybrid_weights = _hybrid_weights(kwargs)
        self._copy_hybrid_weights()

    @torch.no_grad()
    def _copy_hybrid_weights(self):
        """Every attention layer's hybrid network starts as the module given (x-transformers deep-copies it):
        self-attention's attn_hybrid_module, cross-attention's cross_attn_hybrid_module or else attn_'s."""
        for i, kind in enumerate(self.layer_types):
            prefixes = {"a": ("attn_",), "c": ("cross_attn_", "attn_")}.get(kind, ())
            source = next((self._hybrid_weights[p] for p in prefixes if p in self._hybrid_weights), None)
            if source is None:
                continue
            weights = {n: t for n, t in self.named_parameters() if n.startswith(f"layers.{i}.")}
            for name, value in source.items():
                target = next(t for n, t in weights.items() if n.endswith(f".hybrid_module.fn.{name}"))
                target.copy_(value)

    # x-transformers' other forward arguments, at the values that make them do nothing (its own wrappers pass them
    # so); anything else is refused by name.
    _FORWARD_DEFAULTS = dict(
        seq_pos_offset=0, input_not_include_cache=False, rotary_pos_emb=None, polar_pos_emb=None,
        transform_block_inputs=None)

    def call_options(self, layers_execute_order=None, repeat_blocks=None):
        """This call's options and executed attention kinds: the stack's, or the same layers (so the same
        parameters) in another order, x-transformers' layers_execute_order or repeat_blocks (depth extrapolation).
        repeat_blocks: (start_end, repeats) or a tuple of them, start_end a block index or (first, last)."""
        if repeat_blocks is not None:
            if layers_execute_order is not None:
                raise ValueError("cannot pass both `repeat_blocks` and `layers_execute_order`")
            groups = (repeat_blocks,) if (isinstance(repeat_blocks, (tuple, list)) and len(repeat_blocks) == 2
                                          and isinstance(repeat_blocks[1], int)) else repeat_blocks
            triples = []
            for start_end, repeats in groups:
                first, last = (start_end, start_end) if isinstance(start_end, int) else start_end
                triples.append((int(first), int(last), int(repeats)))
            layers_execute_order = _C.repeat_blocks_order(self._options, triples)
        if layers_execute_order is None:
            return self._options, self._attention_types
        options = dict(json.loads(self._options), layers_execute_order=[int(i) for i in layers_execute_order])
        plan = _C.AttentionLayersPlan(json.dumps(options))
        return plan.options, _attention_types(plan)

    # Each attention's to_v and to_out parameters and each feed-forward's linear weights (x-transformers' picks).
    _MUON_PARAMETER = re.compile(r"\.(to_v|to_out(\.0)?)\.(weight|bias)$|\.ff\..*\.weight$")

    def muon_parameters(self):
        """The parameters x-transformers hands to the Muon optimiser, in its order: each attention layer's to_v and
        to_out parameters and each feed-forward's linear weights (the rest go to AdamW)."""
        return [p for name, p in self.named_parameters() if self._MUON_PARAMETER.search(name)]

    def _attention_projections(self):
        """(to_q, to_k) weights of each attention layer, self and cross, in layer order (not execution order)."""
        weights = dict(self.named_parameters())
        layers = sorted({int(name.split(".")[1]) for name in weights if name.endswith(".to_q.weight")})
        def find(i, leaf):
            return next(w for n, w in weights.items() if n.startswith(f"layers.{i}.1.") and n.endswith(leaf))
        return [(find(i, ".to_q.weight"), find(i, ".to_k.weight")) for i in layers]

    @torch.no_grad()
    def attn_qk_clip_(self, intermediates, tau=100.0):
        """Kimi's qk-clip after an optimiser step (x-transformers' attn_qk_clip_): per attention layer, from the
        pre-softmax logits of a forward with return_hiddens (attn_flash off), each head's scale
        sqrt(min(1, tau / its largest logit)) multiplies to_q's and to_k's weights, repeated over the head's
        features and broadcast over the weights' last axis as x-transformers does (so dim must equal heads x
        dim_head, and kv heads the heads)."""
        layers, inters = self._attention_projections(), intermediates.attn_intermediates
        if len(layers) != len(inters):
            raise ValueError(f"attn_qk_clip_: expected the intermediates of {len(layers)} attention layers (a forward "
                             f"in layer order), got {len(inters)}")
        for (q_weight, k_weight), inter in zip(layers, inters):
            logits = inter if torch.is_tensor(inter) else inter.pre_softmax_attn
            if logits is None:
                raise ValueError("attn_qk_clip_: the intermediates hold no pre_softmax_attn; run the forward with "
                                 "return_hiddens=True and attn_flash=False")
            if q_weight.shape[0] != q_weight.shape[1] or k_weight.shape[0] != q_weight.shape[0]:
                raise ValueError(f"attn_qk_clip_: x-transformers broadcasts the heads' scales over the weights' input "
                                 f"features, so to_q and to_k must be square ({tuple(q_weight.shape)} and "
                                 f"{tuple(k_weight.shape)}): heads x dim_head == dim, one kv head per head")
            scale = (tau / logits.amax(dim=(0, 2, 3))).clamp(max=1.0).sqrt()
            scale = scale.repeat_interleave(q_weight.shape[0] // scale.numel())
            q_weight.mul_(scale)
            k_weight.mul_(scale)

    def reset_parameters(self):
        """Initialises every parameter and buffer in place as construction does (the C++ module's init, which is
        x-transformers'), for a stack built under torch.device("meta") and materialised with to_empty(device=...).
        Draws from torch's default generator in construction's order: torch.manual_seed(s) then reset_parameters()
        gives the values that constructing after torch.manual_seed(s) gives."""
        fill_from_layout(self, _C.AttentionLayersPlan(self._options).layout())
        self._copy_hybrid_weights()

    @with_stack_inputs
    def forward(self, x, mask=None, *, return_hiddens=False, cache=None, cache_age=1, layers_execute_order=None,
                repeat_blocks=None, return_gumbel_log_probs=False, **kwargs):
        """x (batch, seq, dim) float; mask (batch, seq) bool, True = keep. Returns (batch, seq, dim). The other
        inputs, listed below, by name (x-transformers advises so too; positionally, the second argument is the mask
        here, so that `torch.jit.trace(encoder, (embed, mask))` works).

        With return_hiddens, returns (out, LayerIntermediates) with x-transformers' `hiddens`, `layer_hiddens`,
        `last_hidden`, `cache_length` and, per attention layer, `attn_intermediates[i]` with `cached_kv` and, as
        x-transformers without attn_flash, the attention maps `qk_similarities`, `pre_softmax_attn` and
        `post_softmax_attn` (those layers then materialise their scores for this call).

        Incremental decoding (Decoder), as x-transformers: pass the LayerIntermediates of the previous call as
        `cache`; only the last `cache_age` tokens of x run (x may hold just the new tokens), at the positions after
        `cache.cache_length`, attending to the cached keys and values; `mask` then covers the cached and new keys
        (batch, cached + new). Decoding token by token gives the full forward's outputs.

        layers_execute_order: this call's order of the layers (indices), as x-transformers (depth extrapolation);
        or repeat_blocks: ((first, last), repeats) groups of blocks run again (a block index for first == last).

        Padded positions are not attended to, and their attention outputs are zeroed; as in x-transformers, the
        feed-forward layers still run there, so the output at padded positions is defined but not zero. With
        unpad=True (an xtc extension) and a mask, the kept tokens are packed at the entry, every layer runs on
        them alone, and the output is scattered back: kept positions as without unpad, masked positions exactly 0.

        return_gumbel_log_probs (gumbel-softmax attention's policy gradients): return_hiddens, each attention
        intermediate also holding log_probs, the log-softmax of its logits at the key its map picks (needs the maps:
        not with attn_flash).

        x-transformers' other forward arguments (rotary_pos_emb, ...) are accepted at their defaults, as its own
        wrappers pass them, and refused by name otherwise.
        """
        # x-transformers' TransformerWrapper passes the cached length as seq_pos_offset; the cache says it here.
        if cache is not None and kwargs.get("seq_pos_offset") == cache.cache_length:
            kwargs.pop("seq_pos_offset")
        stack_extra = {name: kwargs.pop(name) for name in STACK_KWARGS if name in kwargs}
        return_hiddens = return_hiddens or return_gumbel_log_probs
        check_forward_defaults(type(self).__name__, kwargs, self._FORWARD_DEFAULTS)
        if self._unpad and mask is not None and torch.compiler.is_exporting():
            # (torch.compile runs the packing eagerly, breaking its graph there; export has no such way out.)
            raise ValueError("unpad packs by the mask's values, which torch.export's fake tensors do not have: "
                             "export the stack without unpad (the same numbers at kept positions)")
        unshard_fsdp_groups(self)
        params = [reduce(getattr, name.split("."), self) for name in self._parameter_names]
        inputs = (x, *stack_arguments(mask=mask, **stack_extra))
        options, attention_types = self.call_options(layers_execute_order, repeat_blocks)
        if not return_hiddens and cache is None:
            return torch.ops.xtc.attention_layers(*inputs, params, options, self.training)
        cache_length = cache.cache_length if cache is not None else 0
        out, hiddens, layer_hiddens, kv, maps = torch.ops.xtc.attention_layers_with_hiddens(
            *inputs, flat_cache(cache), cache_length, cache_age, params, options, self.training)
        if not return_hiddens:
            return out
        intermediates = layer_intermediates(attention_types, out, hiddens, layer_hiddens, kv, maps,
                                            cache_length + out.shape[1])
        if return_gumbel_log_probs:
            _add_hard_attention_log_probs(intermediates)
        return out, intermediates

    def extra_repr(self):
        required = ("dim", "depth", "heads")
        given = {k: v for k, v in json.loads(self._options).items() if k in required}
        return differing_options(self._kwargs, self._options, _C.normalize_options(json.dumps(given)), required)


class Encoder(AttentionLayers):
    """x-transformers' Encoder: bidirectional AttentionLayers. Keyword arguments only."""

    def __init__(self, **kwargs):
        if "causal" in kwargs:
            raise TypeError("Encoder: cannot set causality on an Encoder; use Decoder")
        super().__init__(causal=False, **kwargs)


class CrossAttender(AttentionLayers):
    """x-transformers' CrossAttender: cross-attention and feed-forward blocks over a context. Keyword arguments only."""

    def __init__(self, **kwargs):
        super().__init__(cross_attend=True, only_cross=True, **kwargs)


class Decoder(AttentionLayers):
    """x-transformers' Decoder: causal AttentionLayers. Keyword arguments only."""

    def __init__(self, **kwargs):
        if "causal" in kwargs:
            raise TypeError("Decoder: cannot set causality on a Decoder; it is always causal")
        super().__init__(causal=True, **kwargs)


class PrefixDecoder(AttentionLayers):
    """x-transformers' PrefixDecoder: causal self-attention except over a prefix of `prefix_attn_len` positions
    (an int, or one per sequence), which every query sees; through attn_mask, so on the materialising path."""

    def __init__(self, **kwargs):
        if "causal" in kwargs:
            raise TypeError("PrefixDecoder: cannot set causality on a PrefixDecoder")
        super().__init__(causal=False, **kwargs)

    def forward(self, x, *args, attn_mask=None, prefix_attn_len=None, **kwargs):
        b, n = x.shape[0], x.shape[1]
        visible = ~torch.ones((n, n), device=x.device, dtype=torch.bool).triu(1)
        if prefix_attn_len is not None:
            if isinstance(prefix_attn_len, int):
                prefix_attn_len = torch.full((b,), prefix_attn_len, device=x.device)
            prefix = torch.arange(n, device=x.device) < prefix_attn_len.view(b, 1, 1, 1)
            visible = visible | prefix
        if attn_mask is not None:
            visible = visible & attn_mask
        return super().forward(x, *args, attn_mask=visible, **kwargs)
