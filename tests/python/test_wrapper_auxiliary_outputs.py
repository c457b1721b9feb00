"""TransformerWrapper's auxiliary outputs and logit variants against the pinned x-transformers: return_logit_entropies,
return_attn_z_loss (with attn_z_loss_weight) in the intermediates, and sigsoftmax_logits (with its own head or a
to_logits module); same weights, values within 1e-5 and the z-loss's gradients within 1e-4."""
import pytest
import torch
from torch import nn
from x_transformers import Decoder as XDecoder
from x_transformers import Encoder as XEncoder
from x_transformers import TransformerWrapper as XTransformerWrapper

from x_transformers_cpp import Decoder, Encoder, TransformerWrapper
from xtc_testing import assert_parameter_grads_close, random_mask, same_weights

LAYERS = dict(dim=16, depth=2, heads=2, attn_dim_head=8)


def _pair(causal=True, layer_kwargs=None, **kwargs):
    torch.manual_seed(0)
    ours_layers, their_layers = (Decoder, XDecoder) if causal else (Encoder, XEncoder)
    layer_kwargs = {**LAYERS, **(layer_kwargs or {})}
    return same_weights(
        lambda: TransformerWrapper(num_tokens=20, max_seq_len=16, attn_layers=ours_layers(**layer_kwargs), **kwargs),
        lambda: XTransformerWrapper(num_tokens=20, max_seq_len=16, attn_layers=their_layers(**layer_kwargs),
                                    **kwargs))


@pytest.mark.parametrize("causal,kwargs", [(True, dict()), (False, dict(sigsoftmax_logits=True)),
                                           (True, dict(tie_embedding=True))], ids=["decoder", "encoder_sig", "tied"])
def test_logit_entropies_and_z_loss_match_x_transformers(causal, kwargs):
    ours, theirs = _pair(causal, **kwargs)
    tokens, mask = torch.randint(0, 20, (3, 9)), random_mask(3, 9)
    call = dict(mask=mask, return_logit_entropies=True, return_attn_z_loss=True, attn_z_loss_weight=0.3)
    out, mine = ours(tokens, **call)
    expected, their = theirs(tokens, **call)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(mine.logit_entropies, their.logit_entropies, atol=1e-5, rtol=0)
    torch.testing.assert_close(mine.attn_z_loss, their.attn_z_loss, atol=1e-5, rtol=1e-6)
    assert_parameter_grads_close(ours, theirs, mine.attn_z_loss, their.attn_z_loss)


def test_sigsoftmax_with_a_to_logits_module():
    torch.manual_seed(1)
    head = nn.Linear(16, 20)
    ours, theirs = _pair(sigsoftmax_logits=True, to_logits=head)
    tokens = torch.randint(0, 20, (2, 7))
    torch.testing.assert_close(ours(tokens), theirs(tokens), atol=1e-5, rtol=0)


def test_auxiliary_outputs_name_what_they_need():
    ours, _ = _pair(layer_kwargs=dict(attn_flash=True))
    tokens = torch.randint(0, 20, (1, 5))
    with pytest.raises(ValueError, match="attn_flash=False"):
        ours(tokens, return_attn_z_loss=True)
    with pytest.raises(ValueError, match="return_logit_entropies needs the logits"):
        ours(tokens, return_embeddings=True, return_logit_entropies=True)
