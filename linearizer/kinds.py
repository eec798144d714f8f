"""Model kinds: what a trainer, a registry and an evaluator need to know about a model family.

The pipelines never special-case a model family. They look the kind up by the name in
`ModelConfig.kind` and call the hooks below; every family of the library (one-step generator,
projective model, style model, flow-matching baseline) registers one `ModelKind`.

Each built-in kind declares itself once, in a `KindSpec` (in the spirit of torchtitan's
`TrainSpec`): its name, the loss weights it reads and the terms it logs, its batch keys, its
predict modes with each mode's inputs and typed request parameters, and its evaluation. That one
declaration drives predict dispatch and the request checks (`ImageKind.predict`), the MLflow
signature of a served model (`pipelines.registry`), CLI options (`add_param_options`), the fuzz
cases of the reliability suite and the evaluation registry (`pipelines.evaluate`).

Batches are dicts of tensors. Images are float `[B, C, H, W]` in [0, 1] under the key "image";
paired data adds "target" (the styled image) and "style" (a long index); labels are "label".

Example:
    >>> kind = get_kind("onestep")
    >>> model = kind.build(cfg)
    >>> loss, logs = kind.loss(model, {"image": x}, generator)
    >>> kind.spec.mode("interpolate").param("n").default
    8
"""

from __future__ import annotations

import argparse
import functools
import importlib
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Literal, Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from .checks import check_finite, check_unit_range
from .config import ConfigError, ModelConfig, set_kind_lookup


class _Required:
    """The default of a parameter a request must give."""

    def __repr__(self) -> str:
        return "REQUIRED"


#: default of a `Param` the request must set.
REQUIRED: Any = _Required()
#: the value types a request parameter may have (`list`: a list of strings).
PARAM_TYPES = (bool, int, float, str, list)
_TYPE_TEXT = {bool: "true or false", int: "an integer", float: "a finite number", str: "a string",
              list: "a non-empty list of strings"}


@dataclass(frozen=True)
class Param:
    """One request parameter of a predict mode.

    Attributes:
        name: the key in `params`.
        type: bool, int, float, str, or list (a non-empty list of strings).
        default: the value when the request leaves the key out; `REQUIRED` when it must be given;
            None when the model supplies its own (e.g. `cfg.sampler.steps`).
        doc: one line for CLI help and docs.
        choices: the allowed values, if the set is closed.
        low, high: bounds of a number (inclusive, or exclusive with `low_open` / `high_open`).
        example: a valid value where neither the default nor the choices give one (tests, fuzzing).
    """

    name: str
    type: type
    default: Any = REQUIRED
    doc: str = ""
    choices: tuple[Any, ...] | None = None
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    example: Any = None

    def __post_init__(self) -> None:
        if self.type not in PARAM_TYPES:
            raise TypeError(f"param {self.name!r}: type must be one of {[t.__name__ for t in PARAM_TYPES]}, "
                            f"got {self.type!r}")

    @property
    def required(self) -> bool:
        return self.default is REQUIRED

    def valid_value(self) -> Any:
        """A value `check` accepts: the example, else the default, else the first choice."""
        for value in (self.example, None if self.required else self.default, *(self.choices or ())):
            if value is not None:
                return value
        raise ValueError(f"param {self.name!r} declares no example, default or choices")

    def invalid_values(self) -> list[Any]:
        """Values `check` refuses, from the declaration alone (for fuzzing and contract tests):
        None, values of other types, a value outside the choices, values just out of bounds."""
        wrong_type = {bool: ["yes", 1, None], int: [2.5, "3", True, None], float: ["x", math.nan, math.inf, True, None],
                      str: [3, ["a"], None], list: ["a", [], [3], None]}[self.type]
        out = list(wrong_type)
        if self.choices is not None and self.type is str:
            out.append("no-such-choice")
        if self.low is not None:
            out.append(self.low if self.low_open else self.low - 1)
        if self.high is not None:
            out.append(self.high if self.high_open else self.high + 1)
        return out

    def bounds_text(self) -> str:
        lo = "" if self.low is None else f"{'>' if self.low_open else '>='} {self.low:g}"
        hi = "" if self.high is None else f"{'<' if self.high_open else '<='} {self.high:g}"
        return " and ".join(b for b in (lo, hi) if b)

    def check(self, value: Any) -> Any:
        """`value` if it is valid for this parameter (ints widened to float for float params).

        Raises:
            ValueError: the message names the parameter, what it must be and what was given.
        """
        tp, name = self.type, self.name
        ok = {bool: lambda v: isinstance(v, bool),
              int: lambda v: isinstance(v, int) and not isinstance(v, bool),
              float: lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v),
              str: lambda v: isinstance(v, str),
              list: lambda v: isinstance(v, (list, tuple)) and len(v) > 0 and all(isinstance(s, str) for s in v),
              }[tp](value)
        if not ok:
            raise ValueError(f"{name} must be {_TYPE_TEXT[tp]}, got {value!r}")
        if self.choices is not None and value not in self.choices:
            raise ValueError(f"'{name}' must be one of {list(self.choices)}, got {value!r}")
        if tp in (int, float):
            below = self.low is not None and (value <= self.low if self.low_open else value < self.low)
            above = self.high is not None and (value >= self.high if self.high_open else value > self.high)
            if below or above:
                raise ValueError(f"{name} must be {self.bounds_text()}, got {value!r}")
        return float(value) if tp is float else list(value) if tp is list else value


@dataclass(frozen=True)
class Mode:
    """One predict mode: what its inputs are and which parameters it takes.

    Attributes:
        name: the value of `params["mode"]`; the kind serves it with `predict_<name>`.
        inputs: "noise" (any finite values, drawn as N(0, I)), "images" (values in [0, 1]) or
            "any" (any finite images: noisy, masked, out of distribution); `[N, C, H, W]` of the
            model's image shape in every case.
        params: the parameters it accepts besides "mode".
        count: the exact number of inputs it takes (interpolate: 2), or None for any N >= 1.
        doc: one line for docs and help.
    """

    name: str
    inputs: Literal["noise", "images", "any"]
    params: tuple[Param, ...] = ()
    count: int | None = None
    doc: str = ""

    def param(self, name: str) -> Param:
        for p in self.params:
            if p.name == name:
                return p
        raise KeyError(f"mode {self.name!r} has no param {name!r}")

    def valid_params(self) -> dict[str, Any]:
        """Params `check_params` accepts: every required one set to a valid value."""
        return {p.name: p.valid_value() for p in self.params if p.required}

    def check_params(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """Every declared param, checked, with defaults filled in ("mode" itself is dropped).

        Raises:
            ValueError: an unknown key, a missing required key, or a value of the wrong type,
                outside the choices or out of bounds (a given None counts as wrong: leave the
                key out for the default).
        """
        names = [p.name for p in self.params]
        unknown = sorted(set(params) - {"mode", *names})
        if unknown:
            raise ValueError(f"predict mode {self.name!r} accepts params {names}, got unknown {unknown}")
        missing = [p.name for p in self.params if p.required and p.name not in params]
        if missing:
            raise ValueError(f"predict mode {self.name!r} needs parameters {missing}")
        return {p.name: p.check(params[p.name]) if p.name in params else p.default for p in self.params}

    def check_inputs(self, x: Any, image_shape: tuple[int, ...], like: Tensor | None = None) -> Tensor:
        """`x` validated as this mode's inputs and brought to `like`'s dtype and device.

        Raises:
            ValueError: not a tensor, not floating point, not `[N, *image_shape]` with N >= 1 (or
                N = `count`), NaN or inf, or (images) values outside [0, 1].
        """
        what = f"{self.name} inputs ({'any images' if self.inputs == 'any' else self.inputs})"
        shape = ", ".join(map(str, image_shape))
        if not isinstance(x, Tensor):
            raise ValueError(f"{what} must be a torch.Tensor [N, {shape}], got {type(x).__name__}")
        if not x.is_floating_point():
            raise ValueError(f"{what} must be a floating-point tensor (images in [0, 1] or noise in floating point), "
                             f"got {x.dtype} (divide uint8 images by 255)")
        if x.dim() == len(image_shape) and tuple(x.shape) == tuple(image_shape):
            raise ValueError(f"{what} must have shape [N, {shape}] (a batch), got one image {list(x.shape)}: "
                             f"use x[None]")
        if x.dim() != len(image_shape) + 1 or tuple(x.shape[1:]) != tuple(image_shape) or x.shape[0] < 1:
            raise ValueError(f"{what} must have shape [N, {shape}] with N >= 1 (a batch of shape [B, {shape}] of "
                             f"this model's images), got {list(x.shape)}")
        if self.count is not None and x.shape[0] != self.count:
            raise ValueError(f"{self.name} takes exactly {self.count} inputs [{self.count}, {shape}], "
                             f"got {x.shape[0]}")
        check_finite(x, what)
        if self.inputs == "images":
            check_unit_range(x, what)
        return x if like is None else x.to(dtype=like.dtype, device=like.device)


@dataclass(frozen=True)
class KindSpec:
    """The one declaration of a model kind.

    Attributes:
        name: the kind's name (`ModelConfig.kind`).
        modes: its predict modes; the first is the default of a served model's signature.
        batch_keys: the batch keys `loss` reads.
        loss_weights: the kind's section of `ModelConfig.loss.weights`: logged term -> its
            default weight (e.g. `{"pixel": 10.0, ...}`). The loss logs exactly these terms (plus
            `terms`) and "loss"; a config may set only these names.
        legacy_loss_weights: the legacy `LossConfig` field -> the term it weighted for this kind
            (e.g. `{"w_data": "pixel"}`), read once when an old config is loaded.
        terms: logged terms that no weight scales (e.g. the baseline's "fm").
        evaluation: the name of the kind's evaluation in `pipelines.evaluate`, or None.

    Raises:
        ValueError: two modes with one name, one parameter name with two types, a negative
            default weight, or a legacy field mapped to a term that is not a weight.
    """

    name: str
    modes: tuple[Mode, ...]
    batch_keys: tuple[str, ...] = ("image",)
    loss_weights: Mapping[str, float] = field(default_factory=dict)
    legacy_loss_weights: Mapping[str, str] = field(default_factory=dict)
    terms: tuple[str, ...] = ()
    evaluation: str | None = None

    def __post_init__(self) -> None:
        names = [m.name for m in self.modes]
        if not names or len(set(names)) != len(names):
            raise ValueError(f"kind {self.name!r}: modes must be a non-empty list of distinct names, got {names}")
        types: dict[str, type] = {}
        for mode in self.modes:
            for p in mode.params:
                if types.setdefault(p.name, p.type) is not p.type:
                    raise ValueError(f"kind {self.name!r}: param {p.name!r} has two types "
                                     f"({types[p.name].__name__}, {p.type.__name__}); a served signature has one")
        negative = {n: w for n, w in self.loss_weights.items() if not w >= 0}
        if negative:
            raise ValueError(f"kind {self.name!r}: default loss weights must be >= 0, got {negative}")
        stray = sorted(set(self.legacy_loss_weights.values()) - set(self.loss_weights))
        if stray:
            raise ValueError(f"kind {self.name!r}: legacy loss fields map to {stray}, which are not among its "
                             f"loss weights {list(self.loss_weights)}")

    @property
    def mode_names(self) -> tuple[str, ...]:
        return tuple(m.name for m in self.modes)

    @property
    def logged_terms(self) -> frozenset[str]:
        """The keys of the loss's log dict: every weighted term, the unweighted ones and "loss"."""
        return frozenset({*self.loss_weights, *self.terms, "loss"})

    def mode(self, name: Any) -> Mode:
        """The mode called `name`.

        Raises:
            ValueError: no such mode (the message lists the modes).
        """
        for m in self.modes:
            if isinstance(name, str) and m.name == name:
                return m
        raise ValueError(f"unknown predict mode {name!r} for kind {self.name!r}: params['mode'] must be one of "
                         f"{list(self.mode_names)}")

    def check_request(self, params: Any) -> tuple[Mode, dict[str, Any]]:
        """The shared request check of every kind: `(mode, params with defaults)`.

        Raises:
            ValueError: params not a dict, no or an unknown mode, or a bad parameter.
        """
        if not isinstance(params, dict):
            raise ValueError(f"params must be a dict with a 'mode' key, got {type(params).__name__}")
        if "mode" not in params:
            raise ValueError(f"params must name a predict mode: params['mode'] one of {list(self.mode_names)}")
        mode = self.mode(params["mode"])
        return mode, mode.check_params(params)

    def param_types(self) -> dict[str, type]:
        """Every parameter of every mode -> its type (what a served signature declares)."""
        return {p.name: p.type for m in self.modes for p in m.params}


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


def _check_output(kind: str, mode: Any, out: Tensor) -> Tensor:
    """Refuse non-finite answers: a `clamp(0, 1)` would hide the NaN of an overflowed network."""
    if not bool(torch.isfinite(out).all()):
        bad = int((~torch.isfinite(out)).sum())
        raise FloatingPointError(f"{kind} predict (mode {mode!r}) produced {bad} non-finite values of "
                                 f"{out.numel()}: the model overflowed on these inputs (weights or inputs out of "
                                 f"range); refusing to return them")
    return out


class ImageKind:
    """The shared base of the library's kinds: everything but the model's own arithmetic.

    A subclass sets `spec` and implements `build`, `loss`, `samples`, and one
    `predict_<mode>(model, x, **params)` per mode of the spec; `predict` checks the request
    against the spec (one validator for every kind), checks the inputs as the mode declares,
    dispatches, and refuses non-finite answers. Models have an `image_shape` (C, H, W).
    """

    spec: ClassVar[KindSpec]

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def modes(self) -> tuple[str, ...]:
        return self.spec.mode_names

    @property
    def batch_keys(self) -> tuple[str, ...]:
        return self.spec.batch_keys

    def initialize(self, model: nn.Module, batch: dict[str, Tensor]) -> None:
        """Data-dependent initialisation from one batch of `batch_keys` (training does it on its
        first batch; call it before using an untrained model). Default: nothing to initialise."""

    def finalize(self, model: nn.Module) -> None:
        """Work done once after training and before export. Default: nothing."""

    @staticmethod
    def reference(model: nn.Module) -> Tensor:
        """A tensor of the model whose dtype and device requests are brought to."""
        return next(model.parameters())

    @torch.no_grad()
    def predict(self, model: nn.Module, inputs: Tensor, params: dict[str, Any]) -> Tensor:
        """Serve one request: `params["mode"]` picks a mode of `spec`; other keys are its params.

        Raises:
            ValueError: a request the spec refuses, or inputs the mode refuses.
            FloatingPointError: the model produced NaN or inf.
        """
        mode, kwargs = self.spec.check_request(params)
        x = mode.check_inputs(inputs, tuple(model.image_shape), like=self.reference(model))
        out = getattr(self, f"predict_{mode.name}")(model, x, **kwargs)
        return _check_output(self.name, mode.name, out)


def served(predict: Callable[..., Tensor]) -> Callable[..., Tensor]:
    """Decorate the `predict` of a kind without a spec with the checks every served request gets.

    `params` must be a dict (the kind validates its own modes and keys), and the answer must be
    finite. Kinds with a `KindSpec` get these checks, and the request checks, from `ImageKind`.

    Example:
        >>> class MyKind:
        ...     @served
        ...     def predict(self, model, inputs, params): ...
    """

    @functools.wraps(predict)
    def checked(self: Any, model: nn.Module, inputs: Tensor, params: dict[str, Any]) -> Tensor:
        if not isinstance(params, dict):
            raise ValueError(f"params must be a dict with a 'mode' key, got {type(params).__name__}")
        return _check_output(self.name, params.get("mode"), predict(self, model, inputs, params))

    return checked


def spec_of(kind: ModelKind) -> KindSpec:
    """The kind's `KindSpec`; for a plugin kind without one, the spec its attributes imply.

    A plugin kind may list `param_types` (name -> bool, int, float, str or list): each is then an
    optional parameter of every mode; its inputs are taken as noise (any finite values). It may
    declare `loss_weights` (term -> default weight) to be configured by `loss.weights`.
    """
    spec = getattr(kind, "spec", None)
    if isinstance(spec, KindSpec):
        return spec
    params = tuple(Param(name, tp, None) for name, tp in sorted(getattr(kind, "param_types", {}).items()))
    return KindSpec(kind.name, tuple(Mode(m, "noise", params) for m in kind.modes), tuple(kind.batch_keys),
                    loss_weights=dict(getattr(kind, "loss_weights", {})))


def add_param_options(parser: argparse.ArgumentParser, mode: Mode, only: tuple[str, ...] | None = None,
                      defaults: Mapping[str, Any] | None = None) -> None:
    """Add `--<param>` options for the params of `mode` (types, choices and help from the spec).

    Args:
        parser: the subcommand's parser.
        mode: the mode whose params become options (`t_end` becomes `--t-end`).
        only: the params to add (default: all of them, in spec order).
        defaults: option defaults that differ from the spec's.
    """
    for p in mode.params:
        if only is not None and p.name not in only:
            continue
        if p.type is list:
            raise ValueError(f"param {p.name!r} is a list: give it its own option")
        default = (defaults or {}).get(p.name, None if p.required else p.default)
        text = p.doc if default is None else f"{p.doc.split(' (None:')[0]} (default: {default})"
        flag = "--" + p.name.replace("_", "-")
        if p.type is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=default, help=text)
        else:
            parser.add_argument(flag, type=p.type, choices=p.choices, default=default, required=p.required,
                                help=text)


_KINDS: dict[str, ModelKind] = {}
#: kinds the library ships, imported on first use so that importing one costs nothing for the rest.
_BUILTIN = {
    "onestep": "linearizer.onestep.kind",
    "projective": "linearizer.projective.kind",
    "style": "linearizer.style.kind",
    "fm_baseline": "linearizer.baselines.flow_matching",
}


def register_kind(kind: ModelKind) -> ModelKind:
    """Make `kind` available under `kind.name` (idempotent).

    Raises:
        TypeError: a kind with a spec lacks the `predict_<mode>` of one of its modes.
    """
    spec = getattr(kind, "spec", None)
    if isinstance(spec, KindSpec) and isinstance(kind, ImageKind):
        missing = [m.name for m in spec.modes if not callable(getattr(kind, f"predict_{m.name}", None))]
        if missing:
            raise TypeError(f"kind {spec.name!r} declares modes {missing} but has no predict_<mode> for them")
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


def _registered_spec(name: str) -> KindSpec | None:
    """The spec of the kind called `name`, or None when there is no such kind (yet)."""
    try:
        return spec_of(get_kind(name))
    except ConfigError:
        return None


# A config names its kind by a string; this is how `linearizer.config` finds the kind's loss
# weights (config cannot import this module, which imports it).
set_kind_lookup(_registered_spec)


def builtin_kinds() -> tuple[str, ...]:
    """The names of the kinds the library ships."""
    return tuple(_BUILTIN)


def evaluations() -> dict[str, str]:
    """Evaluation name -> the kind it evaluates, from the built-in kinds' specs."""
    return {spec.evaluation: spec.name for spec in (spec_of(get_kind(n)) for n in _BUILTIN) if spec.evaluation}
