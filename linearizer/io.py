"""Safe artifacts: weights as safetensors, the model as a JSON config it is rebuilt from.

Nothing here unpickles. A saved model directory holds:

- `config.json`: `{"format": "linearizer/1", "model": <ModelConfig as JSON>}`;
- `model.safetensors`: every parameter and persistent buffer, shared tensors stored once.

Buffers may change shape on load (a cached collapsed operator whose rank is only known after
it is built), parameters may not.

Example:
    >>> save_model(model, cfg, "out/model")
    >>> model2, cfg2 = load_model("out/model")
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from .config import ModelConfig, from_dict, to_dict

FORMAT = "linearizer/1"
WEIGHTS = "model.safetensors"
CONFIG = "config.json"


def unique_state(model: nn.Module) -> tuple[dict[str, Tensor], dict[str, str]]:
    """The state dict with tensors that share storage kept once.

    Returns:
        (state, aliases): `state` maps a canonical key to a contiguous tensor; `aliases` maps
        every other key of the same storage to its canonical key.
    """
    state: dict[str, Tensor] = {}
    aliases: dict[str, str] = {}
    seen: dict[tuple[int, int, tuple[int, ...], torch.dtype], str] = {}
    for key, t in model.state_dict().items():
        ident = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.dtype)
        if t.numel() and ident in seen:
            aliases[key] = seen[ident]
            continue
        seen[ident] = key
        state[key] = t.detach().contiguous().cpu()
    return state, aliases


def save_weights(model: nn.Module, path: str | Path) -> Path:
    """Write the model's parameters and buffers to a safetensors file."""
    state, aliases = unique_state(model)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    save_file(state, str(tmp), metadata={"format": FORMAT, "aliases": json.dumps(aliases)})
    tmp.replace(path)  # atomic: a crash never leaves a half-written weights file behind
    return path


def load_weights(model: nn.Module, path: str | Path) -> nn.Module:
    """Load a safetensors file into `model` in place (strict, up to aliases and resizable buffers)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    try:
        state = load_file(str(path))
    except Exception as e:  # noqa: BLE001 - safetensors raises its own error type for foreign or corrupt files
        raise ValueError(f"{path} is not a readable safetensors file ({e}); it was not written by "
                         f"linearizer.io.save_weights or is corrupt") from e
    _, aliases = unique_state(model)
    expected = set(model.state_dict()) - set(aliases)
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        raise ValueError(f"{path} does not fit this model: missing keys {missing[:5]}, unexpected keys {unexpected[:5]}")
    for key, t in state.items():
        mod_name, _, leaf = key.rpartition(".")
        mod = model.get_submodule(mod_name) if mod_name else model
        if leaf in mod._buffers and mod._buffers[leaf] is not None and mod._buffers[leaf].shape != t.shape:
            mod._buffers[leaf] = torch.empty_like(t)  # resizable cache buffer
    model.load_state_dict(state, strict=False)
    return model


def save_model(model: nn.Module, cfg: ModelConfig, directory: str | Path) -> Path:
    """Save `model` built from `cfg` into `directory` (config.json + model.safetensors)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    save_weights(model, directory / WEIGHTS)
    (directory / CONFIG).write_text(json.dumps({"format": FORMAT, "model": to_dict(cfg)}, indent=2) + "\n")
    return directory


def read_model_config(directory: str | Path) -> ModelConfig:
    """Read and validate the config of a saved model directory."""
    directory = Path(directory)
    path = directory / CONFIG
    if not path.is_file():
        raise FileNotFoundError(f"not a saved linearizer model (no {CONFIG}): {directory}")
    meta = json.loads(path.read_text())
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path}: unsupported format {meta.get('format')!r}, expected {FORMAT!r}")
    return from_dict(ModelConfig, meta["model"], "model")


def load_model(directory: str | Path, dtype: torch.dtype | None = None) -> tuple[nn.Module, ModelConfig]:
    """Rebuild a model from `directory` through its kind, then load its weights.

    Returns:
        (model in eval mode, its config).
    """
    from .kinds import get_kind

    cfg = read_model_config(directory)
    model = get_kind(cfg.kind).build(cfg)
    # Rebuild in the dtype the weights were saved in (integer buffers such as permutations say nothing).
    try:
        floats = [t.dtype for t in load_file(str(Path(directory) / WEIGHTS)).values() if t.is_floating_point()]
    except FileNotFoundError:
        raise FileNotFoundError(f"weights file not found: {Path(directory) / WEIGHTS}") from None
    except Exception as e:  # noqa: BLE001 - see load_weights
        raise ValueError(f"{Path(directory) / WEIGHTS} is not a readable safetensors file ({e})") from e
    if floats:
        model.to(floats[0])
    load_weights(model, Path(directory) / WEIGHTS)
    if dtype is not None:
        model.to(dtype)
    return model.eval(), cfg
