"""TransformerWrapper and ContinuousTransformerWrapper as torch.nn.Modules over the C++ ops
torch.ops.xtc.transformer_wrapper and torch.ops.xtc.continuous_transformer.

As x-transformers' wrappers: the modules own the wrapper's parameters under x-transformers' names, hold the given
AttentionLayers as `attn_layers`, and hand every tensor to the op in the layout the C++ module defines.
"""
import json
import random
from functools import reduce

import torch
from torch import nn

from . import _C
from .pretrained import PretrainedMixin
from .attention_layers import (ORDER_KWARGS, STACK_KWARGS, AttentionLayers, _build_tree, _json_ready,
                               check_forward_defaults, differing_options, fill_from_layout, flat_cache, initializes_on_construction,
                               layer_intermediates, stack_arguments, unshard_fsdp_groups, with_stack_inputs)


def _attention_maps(intermediates):
    """x-transformers' return_attn: each attention layer's post-softmax map (None for attn_flash layers)."""
    return [t.post_softmax_attn for t in intermediates.attn_intermediates]


class TokenEmbedding(nn.Module):
    """x-transformers' TokenEmbedding over the wrapper's table (`emb.weight`), for the wrappers that call
    `net.token_emb(ids)` themselves (NextLatentWrapper, ...); the wrapper's own forward embeds in its op."""

    l2norm_embed = False

    def forward(self, x):
        embeds = torch.nn.functional.embedding(x.long(), self.emb.weight)
        return torch.nn.functional.normalize(embeds, dim=-1) if self.l2norm_embed else embeds


class LogitsHead(nn.Module):
    """x-transformers' bias-less to_logits linear over the wrapper's `weight`, for wrappers that call
    `net.to_logits(embeddings)` themselves."""

    def forward(self, x):
        return torch.nn.functional.linear(x, self.weight)


def _stack_kwargs(kwargs):
    """The forward arguments x-transformers' wrappers pass on to their stack, taken out of kwargs: its inputs, and
    this call's layer order (layers_execute_order or repeat_blocks)."""
    stack = {name: kwargs.pop(name) for name in STACK_KWARGS if name in kwargs}
    order = {name: kwargs.pop(name) for name in ORDER_KWARGS if name in kwargs}
    return stack, order


class _Wrapper(PretrainedMixin, nn.Module):
    """Builds the wrapper's own parameters from the C++ layout, in x-transformers' order, around `attn_layers`."""

    def _setup(self, attn_layers, kwargs, unsupported, keys):
        if not isinstance(attn_layers, AttentionLayers):
            raise TypeError(f"attn_layers: expected an x_transformers_cpp AttentionLayers (Encoder, Decoder, ...), "
                            f"got {type(attn_layers).__name__}")
        rejected = [k for k, default in unsupported.items() if k in kwargs and kwargs[k] != default]
        unknown = [k for k in kwargs if k not in unsupported and k not in keys]
        if rejected or unknown:
            raise TypeError(f"unrecognized or unsupported keyword arguments: {', '.join(sorted(rejected + unknown))}")
        self._kwargs = {k: v for k, v in kwargs.items() if k not in unsupported}  # for the repr
        text = json.dumps({k: _json_ready(k, v) for k, v in self._kwargs.items()})
        self._options, layout = self._layout(text, attn_layers._options, initializes_on_construction())
        self._layer_options = attn_layers._options
        self._tensor_names = [name for name, *_ in layout]
        tree = _build_tree([entry for entry in layout if not entry[0].startswith("attn_layers.")],
                           dict(token_emb=TokenEmbedding, to_logits=LogitsHead))
        for name, param in tree.named_parameters(recurse=False):
            self.register_parameter(name, param)
        # Children in the layout's (x-transformers') order, the user's stack in its place.
        children = dict(tree.named_children(), attn_layers=attn_layers)
        for top in dict.fromkeys(name.split(".")[0] for name in self._tensor_names):
            if top in children:
                self.add_module(top, children[top])

    def _set_attributes(self, kwargs):
        """The attributes x-transformers' own wrappers (AutoregressiveWrapper, ...) read off a TransformerWrapper or
        ContinuousTransformerWrapper, as x-transformers sets them."""
        self.max_seq_len = kwargs.get("max_seq_len", 0)
        self.num_memory_tokens = kwargs.get("num_memory_tokens") or 0
        has_abs_pos_emb = any(name.startswith("pos_emb.") for name in self._tensor_names)
        self.can_cache_kv = self.num_memory_tokens == 0 and self.attn_layers.can_cache_kv
        self.can_cache_kv_outside_max_seq_len = not has_abs_pos_emb
        self.looped = self.recycling = self.add_continuous_pred_head = self.output_is_log_prob = False

    def reset_parameters(self):
        """Initialises the wrapper's own parameters in place as construction does (attn_layers has its own
        reset_parameters, as torch modules reset only their own), after to_empty(device=...) on a wrapper built
        under torch.device("meta")."""
        fill_from_layout(self, self._layout(self._options, self._layer_options, True)[1])

    def muon_parameters(self):
        """The stack's Muon parameters (x-transformers' wrappers hand on attn_layers')."""
        return self.attn_layers.muon_parameters()

    def attn_qk_clip_(self, intermediates, tau=100.0):
        """The stack's qk-clip from a forward's return_intermediates (x-transformers' wrappers hand it on)."""
        self.attn_layers.attn_qk_clip_(intermediates, tau=tau)

    def _tensors(self):
        unshard_fsdp_groups(self)
        return [reduce(getattr, name.split("."), self) for name in self._tensor_names]

    def _run(self, op, op_with_hiddens, inputs, return_embeddings, return_intermediates, cache, order,
             input_not_include_cache):
        """The plain op, or the one with the stack's intermediates for return_intermediates / cache; with a cache
        only the last position runs (x-transformers' wrappers, whose input holds every position so far, or only the
        new ones with input_not_include_cache). `order`: this call's layers_execute_order / repeat_blocks."""
        layer_options, attention_types = self.attn_layers.call_options(**order)
        tail = (self._tensors(), self._options, layer_options, self.training, return_embeddings)
        if not return_intermediates and cache is None:
            return op(*inputs, *tail)
        not_included = bool(input_not_include_cache) and cache is not None
        out, hiddens, layer_hiddens, kv, maps, *wrapper_record = op_with_hiddens(*inputs, flat_cache(cache),
                                                                                 not_included, *tail)
        if not return_intermediates:
            return out
        # Positions the stack ran (memory tokens included, as x-transformers counts them), after the cached ones.
        cache_length = (cache.cache_length if cache is not None else 0) + layer_hiddens[-1].shape[1]
        intermediates = layer_intermediates(attention_types, out, hiddens, layer_hiddens, kv, maps, cache_length)
        return (out, intermediates, *wrapper_record)

    def extra_repr(self):
        given = {k: v for k, v in json.loads(self._options).items() if k in self._REQUIRED}
        defaults = self._layout(json.dumps(given), self._layer_options, False)[0]
        return differing_options(self._kwargs, self._options, defaults, self._REQUIRED)


def _auxiliary_results(intermediates, out, entropies, z_loss, z_loss_weight, logits_out):
    """x-transformers' return_logit_entropies (the entropy of each position's softmax over the logits) and
    return_attn_z_loss (the squared log-sum-exp of every attention layer's pre-softmax logits, summed over the
    layers inside and the heads, averaged over the positions, times the weight), into the intermediates."""
    if entropies:
        logits = intermediates.logits if intermediates.logits is not None else out
        logits = logits[0] if isinstance(logits, tuple) else logits
        if not logits_out:
            raise ValueError("TransformerWrapper: return_logit_entropies needs the logits; it cannot be combined "
                             "with return_embeddings or return_only_embed")
        prob = logits.softmax(dim=-1)
        intermediates.logit_entropies = -(prob * prob.clamp(min=1e-20).log()).sum(dim=-1)
    if z_loss:
        logits = [inter.pre_softmax_attn for inter in intermediates.attn_intermediates]
        if any(t is None for t in logits):
            raise ValueError("TransformerWrapper: return_attn_z_loss reads each attention layer's pre-softmax "
                             "logits, which attn_flash=True does not keep; construct the stack with attn_flash=False")
        lse = sum(t.logsumexp(dim=-1) for t in logits)
        intermediates.attn_z_loss = lse.square().sum(dim=1).mean() * z_loss_weight


def _token_ids(x, prepend_embeds):
    """Token ids as x-transformers takes them: any integer dtype, or floats holding integers (its embedding reads
    x.long()); None with prepend_embeds for a sequence of the prefix alone (as its BeliefStateWrapper generates)."""
    if x is None:
        if prepend_embeds is None:
            raise ValueError("TransformerWrapper: x may be None only with prepend_embeds (the prefix alone)")
        return prepend_embeds.new_empty((prepend_embeds.shape[0], 0), dtype=torch.long)
    if torch.is_tensor(x) and x.is_floating_point():
        if not torch.equal(x, x.trunc()):
            raise ValueError("TransformerWrapper: expected token ids, got a floating tensor with non-integral "
                             "values (x-transformers would truncate them)")
        return x.long()
    return x


class TransformerWrapper(_Wrapper):
    """x-transformers' TransformerWrapper(num_tokens=..., max_seq_len=..., attn_layers=Decoder(...), ...).

    Keyword arguments only: num_tokens, max_seq_len, attn_layers, emb_dim, post_emb_norm, emb_dropout,
    num_memory_tokens, tie_embedding, tie_embedding_scale, logits_dim, return_only_embed, use_abs_pos_emb,
    scaled_sinu_pos_emb, l2norm_embed, average_pool_embed, use_cls_token / num_cls_tokens, squeeze_out_last_dim,
    attn_pool / num_pooled_tokens / attn_pool_depth / dim_pooled_tokens, max_mem_len, shift_mem_down,
    input_not_include_cache, token_emb / to_logits as modules, and the research options (embed_num_tokens,
    emb_frac_gradient, num_output_heads, mixture_of_softmax, sigsoftmax_logits, memory_tokens_interspersed_every,
    ff_deep_embed, recycling / train_max_recycle_steps, looped / max_looped_steps, add_continuous_pred_head): every
    argument of x-transformers' constructor but attn_z_loss_weight (which it never reads), taken at its default only.
    """

    _layout = staticmethod(_C.transformer_wrapper_layout)
    _REQUIRED = ("num_tokens", "max_seq_len")  # shown always; the rest where they differ from the defaults
    _UNSUPPORTED = dict(attn_z_loss_weight=1e-4)  # (x-transformers' constructor never reads this one)

    def __init__(self, *, num_tokens, max_seq_len, attn_layers, max_mem_len=0, shift_mem_down=0,
                 input_not_include_cache=False, token_emb=None, to_logits=None, **kwargs):
        super().__init__()
        # x-transformers takes the token embedding and the logits head as modules too: Python runs those (the op
        # takes the embeddings, and returns embeddings for the head), and they sit where x-transformers has them.
        for name, module in (("token_emb", token_emb), ("to_logits", to_logits)):
            if module is not None and not isinstance(module, nn.Module):
                raise TypeError(f"{name}: expected a torch.nn.Module, got {type(module).__name__}")
        if token_emb is not None:
            kwargs["external_token_emb"] = True
        self._has_logits = to_logits is not None or not kwargs.get("return_only_embed", False)
        self._heads, self._mixture = kwargs.get("num_output_heads", 1), bool(kwargs.get("mixture_of_softmax", False))
        # embed_num_tokens {name: num_tokens}: the options keep the dict's order.
        embed_num_tokens = kwargs.get("embed_num_tokens") or {}
        if not isinstance(embed_num_tokens, dict):
            raise TypeError(f"embed_num_tokens: expected a dict of name -> num_tokens, got "
                            f"{type(embed_num_tokens).__name__}")
        self._embed_names = list(embed_num_tokens)
        if to_logits is not None:
            if kwargs.get("return_only_embed") or kwargs.get("tie_embedding") or self._heads > 1 or self._mixture:
                raise ValueError("to_logits: a logits module cannot be combined with return_only_embed, "
                                 "tie_embedding, num_output_heads > 1 or mixture_of_softmax (x-transformers "
                                 "would leave it out or feed it the mixture)")
            kwargs["return_only_embed"] = True  # the op's head is off: the module is the head
        self._token_emb_module, self._to_logits_module = token_emb is not None, to_logits is not None
        self._tied_logits = bool(kwargs.get("tie_embedding", False))
        self._squeeze_out_last_dim = bool(kwargs.get("squeeze_out_last_dim", False))
        self._sigsoftmax = bool(kwargs.get("sigsoftmax_logits", False))
        # With a cache, whether forward's input holds only the new tokens by default (x-transformers' option).
        self.input_not_include_cache = input_not_include_cache
        # Transformer-XL: how many positions of the hiddens return_mems keeps, and how far the list of memories
        # rotates down before the layers take them (x-transformers' arguments; no parameters of their own).
        self.max_mem_len, self.shift_mem_down = max_mem_len, shift_mem_down
        self._setup(attn_layers, dict(num_tokens=num_tokens, max_seq_len=max_seq_len, **kwargs), self._UNSUPPORTED,
                    _C.transformer_wrapper_option_keys())
        self._set_attributes(dict(max_seq_len=max_seq_len, **kwargs))
        self.output_is_log_prob = self._mixture  # the mixture's logits are log-probabilities
        # Recurrent depth and the continuous head, as x-transformers' attributes (its wrappers read them).
        self.recycling, self.looped = bool(kwargs.get("recycling")), bool(kwargs.get("looped"))
        self.train_max_recycle_steps = kwargs.get("train_max_recycle_steps", 4)
        self.train_max_looped_steps = kwargs.get("max_looped_steps", 4)
        self.add_continuous_pred_head = bool(kwargs.get("add_continuous_pred_head"))
        self.can_cache_kv = self.can_cache_kv and not self.recycling
        if self.looped and self._heads > 1:
            raise ValueError("TransformerWrapper: looped predicts each step's logits with one head "
                             "(x-transformers fails with num_output_heads > 1)")
        self.has_multiple_heads = self._heads > 1
        self.num_tokens, self.emb_dim = num_tokens, kwargs.get("emb_dim") or attn_layers.dim
        self.num_cls_tokens = kwargs.get("num_cls_tokens", 1)
        self._attn_pool = bool(kwargs.get("attn_pool", False))
        if token_emb is None:
            self.token_emb.l2norm_embed = bool(kwargs.get("l2norm_embed", False))
        if self._tied_logits:  # x-transformers' tied head is a function of the token table too
            self.to_logits = self._own_logits
        if token_emb is not None:  # first among the modules, as x-transformers registers it
            self._modules = type(self._modules)([("token_emb", token_emb), *self._modules.items()])
        if to_logits is not None:
            self.add_module("to_logits", to_logits)

    def _embed_ids(self, embed_ids):
        """x-transformers' embed_ids {name: (b, n) ids} as the op takes them: in embed_num_tokens' order."""
        embed_ids = embed_ids or {}
        if set(embed_ids) != set(self._embed_names):
            raise ValueError(f"TransformerWrapper: expected embed_ids for exactly the embed_num_tokens names "
                             f"{self._embed_names}, got {sorted(embed_ids)}")
        return [embed_ids[name] for name in self._embed_names]

    def _own_logits(self, embeddings):
        """The op's logits head (tied or not) over embeddings; a tuple of them with num_output_heads > 1."""
        return self._split_heads(torch.ops.xtc.transformer_wrapper_logits(embeddings, self._tensors(), self._options,
                                                                          self._layer_options))

    def _split_heads(self, logits):
        """The op stacks several heads' logits on a leading axis; x-transformers returns them as a tuple."""
        return tuple(logits.unbind(0)) if self._heads > 1 else logits

    def _logits(self, embeddings, to_logits_kwargs):
        """The logits head over the op's embeddings: the op's own, or the given to_logits module."""
        if not self._to_logits_module:
            return self._own_logits(embeddings)
        logits = self.to_logits(embeddings, **to_logits_kwargs)
        if self._sigsoftmax:
            logits = logits + logits.sigmoid().log()
        return logits.squeeze(-1) if self._squeeze_out_last_dim and logits.shape[-1] == 1 else logits

    def _raw_logits(self, x):
        """x-transformers' to_logits alone (no sigsoftmax, mixture or squeeze), as looped steps' logits take it."""
        if self._to_logits_module:
            return self.to_logits(x)
        if self._tied_logits:
            scale = self._kwargs.get("tie_embedding_scale")  # unset (None) = dim^-0.5, as x-transformers' default()
            scale = self.attn_layers.dim ** -0.5 if scale is None else scale
            return x @ self.token_emb.emb.weight.t() * scale
        return torch.nn.functional.linear(x, self.to_logits.weight)

    def _recurrence(self, recycle_steps, looped_steps, max_looped_steps, looped_inference, threshold, cache):
        """The op's recurrence arguments (steps, looped_inference, exit threshold, prompt keys and values) from
        x-transformers' forward arguments; those of the other kind of recurrence are refused by name."""
        looped_args = dict(looped_steps=looped_steps, max_looped_steps=max_looped_steps,
                           looped_inference=looped_inference or None)
        foreign = {**(dict(recycle_steps=recycle_steps) if not self.recycling else {}),
                   **(looped_args if not self.looped else {})}
        named = [k for k, v in foreign.items() if v is not None]
        if named:
            raise ValueError(f"TransformerWrapper: {', '.join(named)} need a wrapper built with "
                             f"{'recycling' if 'recycle_steps' in named else 'looped'} (this one is "
                             f"{'recycling' if self.recycling else 'looped' if self.looped else 'neither'})")
        if self.recycling:
            # As x-transformers, a training call draws the steps even when given (its default() argument).
            drawn = random.randrange(self.train_max_recycle_steps) + 1 if self.training else None
            steps = recycle_steps if recycle_steps is not None else drawn
            if steps is None:
                raise ValueError("TransformerWrapper: `recycle_steps` must be provided on forward if recycling is "
                                 "turned on and not training")
            return int(steps), False, None, []
        if not self.looped:
            return 0, False, None, []
        steps = next(v for v in (looped_steps, max_looped_steps, self.train_max_looped_steps) if v is not None)
        early_exit = threshold if looped_inference and looped_steps is None else None
        prompt = cache.looped_prompt_kv_cache if cache is not None else None
        prompt_kv = [t for step in prompt or () for pair in step for t in pair]
        return int(steps), bool(looped_inference), early_exit, prompt_kv

    def _record_wrapper(self, intermediates, initial_embeds, step_outputs, exit_logits, prompt_kv, cache,
                        pred_all_logits):
        """x-transformers' wrapper fields of the intermediates: initial_embeds, and a looped network's exit logits,
        per-step logits, exit index and prompt keys and values."""
        intermediates.initial_embeds = initial_embeds
        if not self.looped:
            return
        intermediates.exit_logits = list(exit_logits)
        intermediates.all_pred_logits = [self._raw_logits(t) for t in step_outputs] if pred_all_logits else []
        index = torch.tensor([[len(step_outputs) - 1]], device=initial_embeds.device)
        previous = cache.exit_indices if cache is not None else None
        intermediates.exit_indices = index if previous is None else torch.cat((previous, index), dim=-1)
        if prompt_kv:
            per_step = len(prompt_kv) // len(step_outputs)
            intermediates.looped_prompt_kv_cache = tuple(
                [(prompt_kv[i], prompt_kv[i + 1]) for i in range(start, start + per_step, 2)]
                for start in range(0, len(prompt_kv), per_step))
        elif cache is not None:
            intermediates.looped_prompt_kv_cache = cache.looped_prompt_kv_cache

    def _heads_after(self, embeddings, intermediates, mask, prepend_embeds, prepend_mask, to_logits_kwargs):
        """The heads over the op's embeddings: the attention pool (into the intermediates, and the output of an
        encoder, as x-transformers) and the logits (beside the pooled tokens in the intermediates)."""
        encoder_pools = self._attn_pool and not self.attn_layers.causal
        pooled = None
        if self._attn_pool and (intermediates is not None or encoder_pools):
            pooled = torch.ops.xtc.transformer_wrapper_attn_pool(
                embeddings, mask, prepend_embeds, prepend_mask, self._tensors(), self._options, self._layer_options,
                self.training)
            if intermediates is not None:
                intermediates.attn_pooled_tokens = pooled
        logits = self._logits(embeddings, to_logits_kwargs)
        if not encoder_pools:
            return logits
        if intermediates is not None:
            intermediates.logits = logits
        return pooled

    def _new_mems(self, mems, hiddens, detach):
        """Transformer-XL's next memories: each layer's hiddens behind its old memory, the last max_mem_len
        positions."""
        new_mems = [torch.cat(pair, dim=-2) for pair in zip(mems, hiddens)] if mems else hiddens
        new_mems = [t[..., -self.max_mem_len:, :] if self.max_mem_len > 0 else t[..., t.shape[-2]:, :]
                    for t in new_mems]
        return [t.detach() for t in new_mems] if detach else new_mems

    # x-transformers' other forward arguments, at the values that make them do nothing.
    _FORWARD_DEFAULTS = dict(
        transform_token_embeds=None, transform_block_inputs=None, token_emb_kwargs={}, to_logits_kwargs={})

    @with_stack_inputs
    def forward(self, x, return_embeddings=False, mask=None, return_intermediates=False, cache=None,
                looped_pred_all_logits=None, return_logits_and_embeddings=False,
                return_embeddings_and_intermediates=False, sum_embeds=None, prepend_embeds=None, prepend_mask=None,
                excise_prepend_embeds=False, return_mems=False, detach_mems=True, return_attn=False,
                input_not_include_cache=None, return_logit_entropies=False, return_attn_z_loss=False,
                attn_z_loss_weight=1e-4, embed_ids=None, return_next_embed_pred=False, recycle_steps=None,
                looped_steps=None, max_looped_steps=None, looped_inference=False, looped_exit_prob_threshold=0.9,
                **kwargs):
        """x (batch, seq) token ids; mask (batch, seq) bool, True = keep.

        Returns logits (batch, seq, logits_dim) ((batch, logits_dim) with average_pool_embed), or the stack's
        embeddings with return_embeddings or return_only_embed. With return_intermediates, (logits,
        LayerIntermediates) as x-transformers.

        Incremental decoding, as x-transformers (its AutoregressiveWrapper): pass the whole sequence so far with
        the previous call's intermediates as `cache`; only the last token runs through the stack, and the logits
        are (batch, 1, logits_dim). With input_not_include_cache (here or at construction), x holds only the new
        tokens, at the positions after the cached ones.

        As x-transformers: return_logits_and_embeddings gives (logits, embeddings), return_embeddings_and_intermediates
        (embeddings, LayerIntermediates); sum_embeds (batch, seq, emb_dim) adds to the token embeddings,
        prepend_embeds (batch, prefix, emb_dim) goes in front of them (after post_emb_norm) with prepend_mask
        (batch, prefix) joining the mask, and excise_prepend_embeds cuts the prefix off the outputs. Transformer-XL:
        `mems` (one (batch, mem_len, dim) per self-attention layer) pass on to the stack, rotated by shift_mem_down;
        return_mems also returns the new memories, each layer's hiddens behind its old memory, the last max_mem_len
        positions, detached unless detach_mems=False (in LayerIntermediates.mems with return_intermediates).

        As x-transformers, the stack inputs (below) pass on to the stack; pos and seq_start_pos (left padding) also
        set the absolute positions (seq_start_pos shifts each row's to start at 0 there).

        Recurrent depth, as x-transformers: with recycling, recycle_steps runs (drawn in training when not given);
        with looped, looped_steps (else max_looped_steps, else the constructor's) runs, the intermediates holding
        exit_logits, all_pred_logits (with looped_pred_all_logits, by default in training) and exit_indices; with
        looped_inference (batch 1, as its AutoregressiveWrapper generates), a prompt keeps every step's keys and
        values and a decoded token exits once the cumulative exit probability reaches looped_exit_prob_threshold.
        return_next_embed_pred (add_continuous_pred_head) returns (out, (next embedding predictions, the initial
        embeddings)).

        x-transformers' other forward arguments are accepted at their defaults (so its AutoregressiveWrapper runs
        over this class) and refused by name otherwise.
        """
        x = _token_ids(x, prepend_embeds)
        if self._mixture and (return_embeddings or return_logits_and_embeddings or return_embeddings_and_intermediates):
            raise ValueError("TransformerWrapper: with mixture_of_softmax x-transformers returns the embeddings "
                             "expanded to the mixture; ours has no such embeddings to return")
        if return_next_embed_pred and not self.add_continuous_pred_head:
            raise ValueError("TransformerWrapper: return_next_embed_pred needs add_continuous_pred_head=True")
        if self._heads > 1 and return_logit_entropies:
            raise ValueError("TransformerWrapper: return_logit_entropies takes one head's logits (x-transformers "
                             "fails with num_output_heads > 1)")
        stack, order = _stack_kwargs(kwargs)
        token_emb_kwargs = kwargs.pop("token_emb_kwargs", {}) if self._token_emb_module else {}
        to_logits_kwargs = kwargs.pop("to_logits_kwargs", {}) if self._to_logits_module else {}
        check_forward_defaults("TransformerWrapper", kwargs, self._FORWARD_DEFAULTS)
        mems = stack.get("mems")
        if self.shift_mem_down and mems:
            mems = [*mems[self.shift_mem_down:], *mems[:self.shift_mem_down]]
            stack["mems"] = mems
        recurrence = self._recurrence(recycle_steps, looped_steps, max_looped_steps, looped_inference,
                                      looped_exit_prob_threshold, cache)
        with_intermediates = (return_intermediates or return_embeddings_and_intermediates or return_mems
                              or return_attn or return_logit_entropies or return_attn_z_loss
                              or return_next_embed_pred or looped_inference)
        embeddings = return_embeddings or return_logits_and_embeddings or return_embeddings_and_intermediates
        token_embeds = self.token_emb(x, **token_emb_kwargs) if self._token_emb_module else None
        inputs = (x, *stack_arguments(mask=mask, **stack), sum_embeds, prepend_embeds, prepend_mask, token_embeds,
                  self._embed_ids(embed_ids), *recurrence)
        # With a to_logits module, or the attention pool and intermediates (x-transformers gives the pooled tokens
        # and the logits both), the op returns the embeddings and each head runs after it.
        encoder_pools = self._attn_pool and not self.attn_layers.causal
        heads_after = self._to_logits_module or (self._attn_pool and with_intermediates)
        result = self._run(torch.ops.xtc.transformer_wrapper, torch.ops.xtc.transformer_wrapper_with_hiddens, inputs,
                           embeddings or heads_after, with_intermediates, cache, order,
                           self.input_not_include_cache if input_not_include_cache is None else input_not_include_cache)
        out, intermediates, next_embed_pred = result, None, None
        if with_intermediates:
            out, intermediates, initial_embeds, next_embed_pred, *looped = result
            pred_all = self.training if looped_pred_all_logits is None else looped_pred_all_logits
            self._record_wrapper(intermediates, initial_embeds, *looped, cache, pred_all)
        if not (embeddings or heads_after):
            out = self._split_heads(out)
        if heads_after and not embeddings:
            out = self._heads_after(out, intermediates, mask, prepend_embeds, prepend_mask, to_logits_kwargs)
        returns_pooled = encoder_pools and not embeddings  # pooled tokens have no positions to cut
        if excise_prepend_embeds and prepend_embeds is not None and cache is None and not returns_pooled:
            out = out[:, prepend_embeds.shape[1]:]
            next_embed_pred = [t[:, prepend_embeds.shape[1]:] for t in next_embed_pred or ()]
        if return_logits_and_embeddings:
            out = (self._logits(out, to_logits_kwargs), out)
        elif return_embeddings_and_intermediates:
            out = (out, intermediates)
        if return_logit_entropies or return_attn_z_loss:
            # As x-transformers: the auxiliary results go in the intermediates, which are then returned.
            _auxiliary_results(intermediates, out, return_logit_entropies, return_attn_z_loss, attn_z_loss_weight,
                               logits_out=self._has_logits and not (embeddings and not return_logits_and_embeddings))
            return_intermediates = True
        if return_next_embed_pred:
            out = (out, (next_embed_pred[0], intermediates.initial_embeds))
        if return_mems:
            new_mems = self._new_mems(mems, intermediates.hiddens, detach_mems)
            if not return_intermediates:
                return out, new_mems
            intermediates.mems = new_mems
        if return_intermediates:
            return out, intermediates
        return (out, _attention_maps(intermediates)) if return_attn else out


class ContinuousTransformerWrapper(_Wrapper):
    """x-transformers' ContinuousTransformerWrapper(max_seq_len=..., attn_layers=Encoder(...), dim_in=..., ...).

    Keyword arguments only: attn_layers (an x_transformers_cpp AttentionLayers), dim_in, dim_out, max_seq_len,
    max_mem_len, num_memory_tokens, post_emb_norm, emb_dropout, use_abs_pos_emb, scaled_sinu_pos_emb,
    average_pool_embed, probabilistic, use_identity_if_same_dim, and project_in / project_out as modules.
    """

    _layout = staticmethod(_C.continuous_layout)
    _REQUIRED = ()
    _UNSUPPORTED = {}

    def __init__(self, *, attn_layers, max_mem_len=0, project_in=None, project_out=None, **kwargs):
        super().__init__()
        self.max_mem_len = max_mem_len  # the positions return_mems keeps (no parameters of its own)
        # x-transformers takes the projections as modules too: Python runs those around the op (which then takes x
        # at the stack's width, and returns the embeddings for project_out).
        for name, module in (("project_in", project_in), ("project_out", project_out)):
            if module is not None and not isinstance(module, nn.Module):
                raise TypeError(f"{name}: expected a torch.nn.Module, got {type(module).__name__}")
            if module is not None and kwargs.get("dim" + name[len("project"):]) is not None:
                raise ValueError(f"either `dim{name[len('project'):]}` or `{name}` can be passed in, but not both")
        self._setup(attn_layers, kwargs, self._UNSUPPORTED, _C.continuous_option_keys())
        if project_in is not None or project_out is not None:
            # After attn_layers, project_in before project_out, as x-transformers registers them.
            modules = dict(self._modules, project_in=project_in, project_out=project_out)
            order = [k for k in self._modules if k not in ("project_in", "project_out")] + ["project_in", "project_out"]
            self._modules = type(self._modules)((k, modules[k]) for k in order if modules.get(k) is not None)
        self._project_in_module, self._project_out_module = project_in is not None, project_out is not None
        self._set_attributes(kwargs)
        self.probabilistic = bool(kwargs.get("probabilistic", False))  # x-transformers' continuous wrappers read it

    _FORWARD_DEFAULTS = {}  # every x-transformers forward argument is taken

    def _probabilistic_output(self, out):
        """A project_out module's output as x-transformers' probabilistic head reads it: interleaved (mean,
        log-variance) pairs as stack((mean, variance))."""
        if not self.probabilistic:
            return out
        pairs = out.unflatten(-1, (out.shape[-1] // 2, 2))
        return torch.stack((pairs[..., 0], pairs[..., 1].exp()))

    @with_stack_inputs
    def forward(self, x, return_embeddings=False, mask=None, lens=None, return_intermediates=False, cache=None,
                return_attn=False, input_not_include_cache=False, return_mems=False, sum_embeds=None,
                prepend_embeds=None, prepend_mask=None, **kwargs):
        """x (batch, seq, dim_in) float; mask (batch, seq) bool (True = keep) or lens (batch,) int.

        Returns (batch, seq, dim_out), or (batch, dim_out) with average_pool_embed; the stack's embeddings before
        the output projection with return_embeddings. With return_intermediates, (out, LayerIntermediates); with
        `cache` (the previous intermediates) and every position so far in x, only the last position runs, as
        x-transformers; with input_not_include_cache, x holds only the new positions.

        As x-transformers, pos and seq_start_pos set the absolute positions only, and the other stack inputs (below)
        pass on to the stack. sum_embeds adds to x after its positions; prepend_embeds (batch, prefix, dim) goes in
        front (the output keeps those positions), with prepend_mask joining the mask; return_mems also returns
        each self-attention layer's input hiddens, their last max_mem_len positions, detached.
        """
        stack, order = _stack_kwargs(kwargs)
        check_forward_defaults("ContinuousTransformerWrapper", kwargs, self._FORWARD_DEFAULTS)
        if self._project_in_module:
            x = self.project_in(x)
        inputs = (x, *stack_arguments(mask=mask, **stack), lens, sum_embeds, prepend_embeds, prepend_mask)
        with_intermediates = return_intermediates or return_attn or return_mems
        result = self._run(torch.ops.xtc.continuous_transformer, torch.ops.xtc.continuous_transformer_with_hiddens,
                           inputs, return_embeddings or self._project_out_module, with_intermediates, cache, order,
                           input_not_include_cache)
        result = result[:2] if with_intermediates else result
        if self._project_out_module and not return_embeddings:
            out, intermediates = result if with_intermediates else (result, None)
            out = self._probabilistic_output(self.project_out(out))
            result = (out, intermediates) if with_intermediates else out
        if return_intermediates:
            return result
        if return_mems:  # as x-transformers' continuous wrapper: no earlier memories joined
            out, intermediates = result
            keep = self.max_mem_len
            return out, tuple((t[..., t.shape[-2] - keep:, :] if keep > 0 else t[..., :0, :]).detach()
                              for t in intermediates.hiddens)
        if return_attn:
            out, intermediates = result
            return out, _attention_maps(intermediates)
        return result
