"""Model kinds: what a trainer, a registry and an evaluator need to know about a model family.

The pipelines never special-case a model family. They look the kind up by the name in
`ModelConfig.kind` and call the hooks below; every family of the library (one-step generator,
projective model, style model) registers one `ModelKind`.

Batches are dicts of tensors. Images are float `[B, C, H, W]` in [0, 1] under the key "image";
paired data adds "target" (the styled image) and "style" (a long index); labels are "label".

Example:
    >>> kind = get_kind("onestep")
    >>> model = kind.build(cfg)
    >>> loss, logs = kind.loss(model, {"image": x}, generator)
"""

from __future__ import annotations

import functools
import importlib
from typing import Any, Callable, Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from .config import ConfigError, ModelConfig


@runtime_checkable
class ModelKind(Protocol):
    """Hooks a model family provides. Implementations are stateless singletons."""

    name: str
    #: modes `predict` accepts, e.g. ("sample", "invert", "interpolate") for one-step models.
    modes: tuple[str, ...]
    #: batch keys `loss` reads, e.g. ("image",) or ("image", "target", "style").
    batch_keys: tuple[str, ...]

    def build(self, cfg: ModelConfig) -> nn.Module:
        """A freshly initialised model for `cfg` (on CPU, float32)."""

    def loss(self, model: nn.Module, batch: dict[str, Tensor], generator: torch.Generator | None = None
             ) -> tuple[Tensor, dict[str, float]]:
        """The scalar training loss and a dict of named float terms for logging."""

    def samples(self, model: nn.Module, n: int, generator: torch.Generator | None = None) -> Tensor:
        """`n` images in [0, 1] that show what the model does (for grids during training)."""

    def finalize(self, model: nn.Module) -> None:
        """Work done once after training and before export (e.g. building the collapsed `B`)."""

    def predict(self, model: nn.Module, inputs: Tensor, params: dict[str, Any]) -> Tensor:
        """Serve one request: `params["mode"]` picks the operation; inputs/outputs are images."""


def served(predict: Callable[..., Tensor]) -> Callable[..., Tensor]:
    """Decorate a kind's `predict` with the checks every served request gets.

    `params` must be a dict (the kind validates its own modes and keys), and the answer must be
    finite: a model whose network overflows raises instead of handing back NaN images (a
    `clamp(0, 1)` would keep them).

    Example:
        >>> class MyKind:
        ...     @served
        ...     def predict(self, model, inputs, params): ...
    """

    @functools.wraps(predict)
    def checked(self: Any, model: nn.Module, inputs: Tensor, params: dict[str, Any]) -> Tensor:
        if not isinstance(params, dict):
            raise ValueError(f"params must be a dict with a 'mode' key, got {type(params).__name__}")
        out = predict(self, model, inputs, params)
        if not bool(torch.isfinite(out).all()):
            bad = int((~torch.isfinite(out)).sum())
            raise FloatingPointError(f"{self.name} predict (mode {params.get('mode')!r}) produced {bad} non-finite "
                                     f"values of {out.numel()}: the model overflowed on these inputs (weights or "
                                     f"inputs out of range); refusing to return them")
        return out

    return checked


_KINDS: dict[str, ModelKind] = {}
#: kinds the library ships, imported on first use so that importing one costs nothing for the rest.
_BUILTIN = {
    "onestep": "linearizer.onestep.kind",
    "projective": "linearizer.projective.kind",
    "style": "linearizer.style.kind",
    "fm_baseline": "linearizer.baselines.flow_matching",
}


def register_kind(kind: ModelKind) -> ModelKind:
    """Make `kind` available under `kind.name` (idempotent)."""
    _KINDS[kind.name] = kind
    return kind


def get_kind(name: str) -> ModelKind:
    """The registered kind called `name`.

    Raises:
        ConfigError: when no such kind exists (the message lists the known kinds).
    """
    if name not in _KINDS and name in _BUILTIN:
        importlib.import_module(_BUILTIN[name])
    if name not in _KINDS:
        known = sorted(set(_KINDS) | set(_BUILTIN))
        raise ConfigError(f"unknown model kind {name!r}; known kinds: {', '.join(known)}")
    return _KINDS[name]
