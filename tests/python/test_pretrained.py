"""Checkpoint directories (config.json + model.safetensors): round trips ours -> ours for every model class, ours ->
x-transformers (its own classes rebuilt from config.json, the safetensors loaded strictly) and x-transformers ->
ours, with tuples (layer schedules), None and floats surviving exactly; and each bad directory (missing file,
corrupt or truncated safetensors, unknown config key, shape or dtype mismatch, a module JSON cannot hold) refused
with an error naming the file and the key."""
import json

import pytest
import safetensors.torch
import torch
import x_transformers

from x_transformers_cpp import (ContinuousTransformerWrapper, CrossAttender, Decoder, Encoder, TransformerWrapper,
                                XTransformer)

STACK = dict(dim=16, depth=3, heads=2, attn_dim_head=8)
STACKS = {
    "encoder_schedule": (Encoder, dict(STACK, ff_mult=(4, 2, 1), attn_kv_heads=(2, 1, 2), rotary_pos_emb=True,
                                       attn_qk_norm_scale=7.25, layer_dropout=0.0, attn_dim_head=8)),
    "decoder_floats_none": (Decoder, dict(STACK, alibi_pos_bias=True, alibi_num_heads=None, ff_glu=True,
                                          attn_softclamp_logits=True, attn_logit_softclamp_value=31.4159)),
    "cross_attender": (CrossAttender, dict(STACK, cross_attn_dim_context=12)),
    "custom_layers": (Encoder, dict(dim=16, depth=None, heads=2, custom_layers=("a", "f", "a", "a", "f"))),
}


def _inputs(model_class, generator):
    x = torch.randn(2, 7, 16, generator=generator)
    return dict(x=x, context=torch.randn(2, 5, 12, generator=generator)) if model_class is CrossAttender else dict(x=x)


@pytest.mark.parametrize("model_class,kwargs", STACKS.values(), ids=STACKS.keys())
def test_stack_round_trips_through_ours_and_x_transformers(tmp_path, model_class, kwargs):
    torch.manual_seed(0)
    model = model_class(**kwargs).eval()
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    loaded = model_class.from_pretrained(tmp_path).eval()
    inputs = _inputs(model_class, torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = model(**inputs)
        torch.testing.assert_close(loaded(**inputs), expected, atol=0, rtol=0)
        # x-transformers itself, from the same two files.
        theirs = getattr(x_transformers, model_class.__name__)(**{k: tuple(v) if isinstance(v, list) else v
                                                                 for k, v in config.items()}).eval()
        theirs.load_state_dict(safetensors.torch.load_file(tmp_path / "model.safetensors"), strict=True)
        torch.testing.assert_close(theirs(**inputs), expected, atol=1e-5, rtol=0)
    assert loaded._init_arguments == {k: v for k, v in kwargs.items()}
    # One format: the ops receive keyword arguments as JSON too, every option under its keyword name (a layer
    # schedule a list); only custom_layers' tuple (a string there) and depth None (counted) take another form.
    options = json.loads(model._options)
    for key, value in config.items():
        if key not in ("custom_layers", "depth"):
            assert options[key] == value, key


def test_wrappers_and_xtransformer_round_trip(tmp_path):
    torch.manual_seed(0)
    lm = TransformerWrapper(num_tokens=30, max_seq_len=12, emb_dim=20, embed_num_tokens=dict(kind=3),
                            attn_layers=Decoder(dim=16, depth=2, heads=2, rotary_pos_emb=True), tie_embedding=False)
    continuous = ContinuousTransformerWrapper(dim_in=5, dim_out=3, max_seq_len=12,
                                              attn_layers=Encoder(dim=16, depth=1, heads=2))
    xt = XTransformer(dim=16, enc_num_tokens=30, enc_depth=1, enc_heads=2, enc_max_seq_len=12, dec_num_tokens=30,
                      dec_depth=1, dec_heads=2, dec_max_seq_len=12, tie_token_emb=True)
    tokens = torch.randint(0, 30, (2, 9))
    calls = [(lm, dict(x=tokens, embed_ids=dict(kind=torch.randint(0, 3, (2, 9))))),
             (continuous, dict(x=torch.randn(2, 9, 5))), (xt, dict(src=tokens, tgt=tokens))]
    for i, (model, inputs) in enumerate(calls):
        model.eval().save_pretrained(tmp_path / str(i))
        loaded = type(model).from_pretrained(tmp_path / str(i)).eval()
        torch.manual_seed(2)
        expected = model(**inputs)
        torch.manual_seed(2)
        torch.testing.assert_close(loaded(**inputs), expected, atol=0, rtol=0)
    assert loaded.decoder.net.token_emb is loaded.encoder.token_emb  # tied, stored once
    # The wrapper's stack rebuilds in x-transformers as the README says.
    config = json.loads((tmp_path / "0" / "config.json").read_text())
    stack = getattr(x_transformers, config.pop("attn_layers_class"))(**config.pop("attn_layers"))
    theirs = x_transformers.TransformerWrapper(**config, attn_layers=stack).eval()
    theirs.load_state_dict(safetensors.torch.load_file(tmp_path / "0" / "model.safetensors"), strict=True)
    with torch.no_grad():
        torch.testing.assert_close(theirs(**calls[0][1]), lm(**calls[0][1]), atol=1e-5, rtol=0)


def test_a_directory_written_from_x_transformers_loads(tmp_path):
    torch.manual_seed(3)
    kwargs = dict(dim=16, depth=2, heads=2, attn_dim_head=8, ff_glu=True, attn_kv_heads=1, use_rmsnorm=True)
    theirs = x_transformers.Decoder(**kwargs).eval()
    (tmp_path / "config.json").write_text(json.dumps(kwargs))
    safetensors.torch.save_file(theirs.state_dict(), tmp_path / "model.safetensors")
    ours = Decoder.from_pretrained(tmp_path).eval()
    x = torch.randn(2, 7, 16)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x), atol=1e-5, rtol=0)
    assert Decoder.from_pretrained(tmp_path, depth=2, ff_glu=True).depth == 2  # keyword arguments override


def _saved(tmp_path):
    torch.manual_seed(4)
    Encoder(**STACK).save_pretrained(tmp_path)
    return tmp_path


def test_bad_directories_name_the_file_and_the_key(tmp_path):
    weights = _saved(tmp_path) / "model.safetensors"
    config = tmp_path / "config.json"
    good = weights.read_bytes()
    weights.write_bytes(good[: len(good) // 2])  # truncated
    with pytest.raises(ValueError, match="model.safetensors: not a readable safetensors file"):
        Encoder.from_pretrained(tmp_path)
    weights.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!")  # corrupt header
    with pytest.raises(ValueError, match="model.safetensors: not a readable safetensors file"):
        Encoder.from_pretrained(tmp_path)
    weights.write_bytes(good)
    config.write_text(json.dumps(dict(STACK, ff_mlt=4)))  # misspelt
    with pytest.raises(TypeError, match=r"config.json: .*ff_mlt"):
        Encoder.from_pretrained(tmp_path)
    config.write_text(json.dumps(dict(STACK, dim=24)))  # the tensors' shapes no longer fit
    with pytest.raises(ValueError, match=r"safetensors: 'layers.0.0.0.gamma' expected shape \(24,\) .* got \(16,\)"):
        Encoder.from_pretrained(tmp_path)
    config.write_text(json.dumps(dict(STACK, depth=2)))  # fewer layers: the file has more tensors
    with pytest.raises(KeyError, match="tensors the model does not have: layers.4"):
        Encoder.from_pretrained(tmp_path)
    config.write_text(json.dumps(STACK))
    safetensors.torch.save_file({k: v.to(torch.bfloat16) for k, v in Encoder(**STACK).state_dict().items()}, weights)
    with pytest.raises(ValueError, match="dtype F32, got .* BF16"):
        Encoder.from_pretrained(tmp_path)
    weights.unlink()
    with pytest.raises(FileNotFoundError, match="no model.safetensors"):
        Encoder.from_pretrained(tmp_path)
    with pytest.raises(FileNotFoundError, match="no config.json"):
        Encoder.from_pretrained(tmp_path / "missing")
    config.write_text("{not json")
    with pytest.raises(ValueError, match="config.json: not valid JSON"):
        Encoder.from_pretrained(tmp_path)


def test_a_module_argument_is_refused_before_anything_is_written(tmp_path):
    model = Encoder(**STACK, ff_custom_activation=torch.nn.SiLU())
    with pytest.raises(TypeError, match="ff_custom_activation is a SiLU, which config.json cannot hold"):
        model.save_pretrained(tmp_path / "out")
    assert not (tmp_path / "out").exists()
