"""Checkpoints as directories, in huggingface_hub's PyTorchModelHubMixin layout: `config.json` (the model's
x-transformers keyword arguments) and `model.safetensors` (its state_dict under x-transformers' names).

    encoder.save_pretrained("my-encoder")
    encoder = Encoder.from_pretrained("my-encoder")

A stack's config.json is its keyword arguments, flat: `x_transformers.Encoder(**config)` plus the safetensors
rebuilds the same model in x-transformers itself. A wrapper's holds its own keyword arguments, its stack's under
"attn_layers" and the stack's class under "attn_layers_class":

    config = json.load(open("my-lm/config.json"))
    stack = getattr(x_transformers, config.pop("attn_layers_class"))(**config.pop("attn_layers"))
    lm = x_transformers.TransformerWrapper(**config, attn_layers=stack)

JSON has no tuples: lists read back as tuples (x-transformers' layer schedules, custom_layers, ...). A directory
written the same way from an x-transformers model loads here too, and C++ loads these directories without Python
(xtc/nn/modules/pretrained.h), through the same translation of keyword arguments the Python modules use.
"""
import functools
import inspect
import json
from pathlib import Path

from . import _C

CONFIG_NAME, WEIGHTS_NAME = "config.json", "model.safetensors"


def _safetensors():
    try:
        import safetensors.torch
    except ImportError as e:
        raise ImportError("save_pretrained / from_pretrained read and write safetensors: pip install "
                          "safetensors") from e
    return safetensors


def _json_value(name, value):
    """A keyword argument as config.json holds it: tuples as lists, non-finite floats by name; a module or other
    object that JSON cannot hold raises naming the argument."""
    from .attention_layers import _json_ready  # (that module imports this one)

    try:
        return _json_ready(name, value)
    except TypeError:
        raise TypeError(f"save_pretrained: the keyword argument {name} is a {type(value).__name__}, which "
                        f"config.json cannot hold; build the model with a value JSON can (a string, number, list "
                        f"or dict)") from None


def _python_value(value):
    """config.json's value as the constructors take it: lists as tuples."""
    if isinstance(value, list):
        return tuple(_python_value(v) for v in value)
    if isinstance(value, dict):
        return {k: _python_value(v) for k, v in value.items()}
    return value


class PretrainedMixin:
    """save_pretrained / from_pretrained for the model classes. Each class's constructor arguments, as the caller
    gave them, are recorded once (by the outermost __init__ of the call), and are what config.json holds."""

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        init = cls.__dict__.get("__init__")
        if init is None:
            return
        signature = inspect.signature(init)

        @functools.wraps(init)
        def recording_init(self, *args, **kwargs):
            if "_init_arguments" not in self.__dict__:
                bound = signature.bind(self, *args, **kwargs)
                arguments = {k: v for k, v in bound.arguments.items() if k != "self"}
                for name, parameter in signature.parameters.items():
                    if parameter.kind == parameter.VAR_KEYWORD:
                        arguments.update(arguments.pop(name, {}))
                object.__setattr__(self, "_init_arguments", arguments)
            init(self, *args, **kwargs)

        cls.__init__ = recording_init

    def pretrained_config(self):
        """The config.json dict: the constructor's keyword arguments; a stack given as attn_layers nests as its
        own config beside its class name."""
        config = {}
        for name, value in self._init_arguments.items():
            if name == "attn_layers":
                config["attn_layers_class"] = type(value).__name__
                config["attn_layers"] = value.pretrained_config()
            else:
                config[name] = _json_value(name, value)
        return config

    def save_pretrained(self, save_directory):
        """Writes config.json and model.safetensors into save_directory (created if missing)."""
        directory = Path(save_directory)
        config = self.pretrained_config()  # first: a value JSON cannot hold raises before anything is written
        directory.mkdir(parents=True, exist_ok=True)
        (directory / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")
        # save_model keeps one copy of tensors the model shares (tied embeddings), as load_model expects.
        _safetensors().torch.save_model(self, str(directory / WEIGHTS_NAME))

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **model_kwargs):
        """The model of a directory save_pretrained wrote (or one written alike from x-transformers); model_kwargs
        override config.json's. Any error names the file and the key; no partly loaded model is returned."""
        directory = Path(pretrained_model_name_or_path)
        config = _read_config(directory / CONFIG_NAME)
        config.update(model_kwargs)
        try:
            model = cls(**_constructor_arguments(config))
        except (TypeError, ValueError) as e:
            raise type(e)(f"{directory / CONFIG_NAME}: {e}") from e
        _load_weights(model, directory / WEIGHTS_NAME)
        return model


def _read_config(path):
    if not path.is_file():
        raise FileNotFoundError(f"from_pretrained: no {CONFIG_NAME} at {path}")
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(config, dict):
        raise ValueError(f"{path}: expected a JSON object of keyword arguments, got {type(config).__name__}")
    return config


def _constructor_arguments(config):
    """config.json's dict as keyword arguments: tuples for lists, and a nested stack built from its class name."""
    from . import attention_layers

    arguments = {k: _python_value(v) for k, v in config.items() if k not in ("attn_layers", "attn_layers_class")}
    if "attn_layers" in config:
        name = config.get("attn_layers_class", "AttentionLayers")
        stack_class = getattr(attention_layers, name, None)
        if not (isinstance(stack_class, type) and issubclass(stack_class, attention_layers.AttentionLayers)):
            raise ValueError(f"attn_layers_class: expected Encoder, Decoder, CrossAttender, PrefixDecoder or "
                             f"AttentionLayers, got {name!r}")
        arguments["attn_layers"] = stack_class(**_constructor_arguments(config["attn_layers"]))
    return arguments


def _load_weights(model, path):
    """model.safetensors into model: every key of the model's state_dict, of its shape and dtype, and no other;
    the file read once, the model untouched unless all of it fits."""
    if not path.is_file():
        raise FileNotFoundError(f"from_pretrained: no {WEIGHTS_NAME} at {path}")
    safetensors = _safetensors()
    try:
        stored = safetensors.torch.load_file(str(path))
    except Exception as e:  # the header or the data do not parse (truncated, corrupt)
        raise ValueError(f"{path}: not a readable safetensors file ({e})") from e
    expected = model.state_dict()
    shared = _shared_names(expected)
    for key, tensor in expected.items():
        if key not in stored:
            other = next((o for o in shared.get(key, ()) if o in stored), None)
            if other is None:
                raise KeyError(f"{path}: missing the tensor {key!r}")
            stored[key] = stored[other]  # a tied tensor, stored once under another name
        value = stored[key]
        if value.shape != tensor.shape or value.dtype != tensor.dtype:
            raise ValueError(f"{path}: {key!r} expected shape {tuple(tensor.shape)} and dtype "
                             f"{_C.safetensors_dtype_name(tensor)}, got {tuple(value.shape)} and "
                             f"{_C.safetensors_dtype_name(value)}")
    unexpected = sorted(set(stored) - set(expected))
    if unexpected:
        raise KeyError(f"{path}: tensors the model does not have: {', '.join(unexpected)}")
    model.load_state_dict(stored, strict=True)


def _shared_names(state):
    """For each key, the other keys whose tensor is the same storage (tied weights)."""
    by_storage = {}
    for key, tensor in state.items():
        by_storage.setdefault((tensor.untyped_storage().data_ptr(), tensor.device), []).append(key)
    return {key: [k for k in keys if k != key] for keys in by_storage.values() for key in keys}

