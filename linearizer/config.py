"""Typed configuration: dataclasses, validated once on load, dumped with every run.

One tree describes a model; the pipelines nest it inside their job config
(`pipelines.config.JobConfig`). Loading is strict: unknown keys, wrong types and impossible
values raise `ConfigError` naming the dotted path of the offending key.

Example:
    >>> cfg = from_dict(ModelConfig, {"kind": "onestep", "flow": {"depth": 2}})
    >>> cfg.flow.depth
    2
    >>> cfg = apply_overrides(cfg, ["operator.rank=16"])
"""

from __future__ import annotations

import contextvars
import dataclasses
import difflib
import json
import math
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration value is missing, unknown, of the wrong type or out of range."""


#: The dotted path `from_dict` is building, so that a check run at construction names the key
#: as the loaders do ("model.flow.depth"), and a direct construction as the class ("FlowConfig.depth").
_BUILDING: contextvars.ContextVar[str | None] = contextvars.ContextVar("config_path", default=None)


# --------------------------------------------------------------------------------------------
# The model tree
# --------------------------------------------------------------------------------------------


@dataclass
class FlowConfig:
    """The invertible network `g`.

    Attributes:
        depth: number of blocks (ActNorm -> coupling -> coupling -> 1x1 conv); the "flow depth".
        hidden: channels (U-Net) or units (MLP) of the coupling conditioners.
        conditioner: "unet" for images, "mlp" for flat vectors.
        clamp: soft bound on the coupling log-scales, `|log s| < clamp` per coupling. 2, not
            the reference's 5: with 5, `g_y^-1` may expand a code by up to e^5 per coupling,
            and the noise pre-images of real images (inversion) of a partly trained model
            leave float32's range; see docs/onestep.md for the measured effect.
        shared: one network serves `g_x` and `g_y` through a role flag (the paper's choice);
            False builds two separate networks.
        conditioner_precision: "float32", or "bfloat16" to run the U-Net conditioners'
            convolutions in bfloat16 (autocast, channels-last) while every invertible map stays
            float32, so inversion and the collapse stay exact. About 3x faster training on CPUs
            with AMX / AVX512-BF16 (docs/benchmarks.md); part of the model, so sampling uses it too.
        scales: levels of a multi-scale network (images only). 1 is the paper's single level;
            each further level takes half the channels the level before kept, squeezes them to
            half the resolution and runs `depth` more blocks on them, the other half passing
            through (Glow's split; the latent keeps the data's shape). H and W must halve
            `scales` times (once more for an odd channel count).
    """

    depth: int = 4
    hidden: int = 32
    conditioner: Literal["unet", "mlp"] = "unet"
    clamp: float = 2.0
    shared: bool = True
    conditioner_precision: Literal["float32", "bfloat16"] = "float32"
    scales: int = 1

    def __post_init__(self) -> None:
        # Checked at construction too, not only when loaded: build_flow(shape, FlowConfig(depth=0))
        # would otherwise build a network of no blocks, the identity, without a word.
        self.validate(_BUILDING.get() or type(self).__name__)

    def validate(self, path: str) -> None:
        _check(self.depth >= 1, f"{path}.depth must be >= 1, got {self.depth}")
        _check(self.hidden >= 1, f"{path}.hidden must be >= 1, got {self.hidden}")
        _check(self.clamp > 0, f"{path}.clamp must be > 0, got {self.clamp}")
        _check(self.scales >= 1, f"{path}.scales must be >= 1, got {self.scales}")


@dataclass
class OperatorConfig:
    """The core linear operator `A`.

    Attributes:
        rank: rank r of low-rank / time-conditioned operators, k of the projector; the
            "operator rank".
        time_embed_dim: width of the sinusoidal embedding of t (time-conditioned operators).
        hidden: hidden units of the MLP that emits the factors of `A(t)`.
        kernel_size: kernel of the per-style depthwise convolution (style models).
        styles: style names, one operator each (style models).
        symmetric: projector variant: True gives the orthogonal projector `Q Q^T`.
    """

    rank: int = 8
    time_embed_dim: int = 64
    hidden: int = 128
    kernel_size: int = 4
    styles: list[str] = field(default_factory=list)
    symmetric: bool = True

    def validate(self, path: str) -> None:
        _check(self.rank >= 1, f"{path}.rank must be >= 1, got {self.rank}")
        _check(self.time_embed_dim >= 2 and self.time_embed_dim % 2 == 0,
               f"{path}.time_embed_dim must be an even number >= 2, got {self.time_embed_dim}")
        _check(self.kernel_size >= 1, f"{path}.kernel_size must be >= 1, got {self.kernel_size}")
        _check(len(set(self.styles)) == len(self.styles), f"{path}.styles has duplicates: {self.styles}")


#: The loss-weight fields of configs written before each kind named its weights by its terms.
#: They meant a different term per kind; `ModelConfig` translates them through the kind's
#: `legacy_loss_weights` when a config is loaded (`upgrade_legacy_loss`), so old saved models load.
LEGACY_WEIGHT_FIELDS = ("w_latent", "w_noise", "w_data", "w_pred", "w_prior")
#: The value every legacy field had when a config left it out.
LEGACY_WEIGHT_DEFAULT = 1.0


class KindLoss(typing.Protocol):
    """What configuration needs to know of a model kind's loss (a `linearizer.kinds.KindSpec`)."""

    name: str
    #: logged term -> its default weight.
    loss_weights: Mapping[str, float]
    #: legacy `w_*` field -> the term it weighted for this kind.
    legacy_loss_weights: Mapping[str, str]


#: kind name -> its `KindLoss`, or None for a kind not registered. Installed by `linearizer.kinds`
#: (`set_kind_lookup`), which depends on this module and not the reverse.
_kind_lookup: Callable[[str], KindLoss | None] | None = None


def set_kind_lookup(lookup: Callable[[str], KindLoss | None]) -> None:
    """Install how a kind's loss declaration is found by name (done once, by `linearizer.kinds`)."""
    global _kind_lookup
    _kind_lookup = lookup


def _kind_loss(kind: str) -> KindLoss | None:
    return None if _kind_lookup is None else _kind_lookup(kind)


def resolve_loss_weights(kind: str, defaults: Mapping[str, float], given: Mapping[str, float],
                         path: str = "loss.weights") -> dict[str, float]:
    """Every loss weight of a kind: the given ones, the kind's defaults for the rest.

    Args:
        kind: the kind's name (for messages).
        defaults: the kind's declared weights, term -> default (`KindSpec.loss_weights`).
        given: the weights a config sets.
        path: dotted path of the weights in messages.

    Returns:
        term -> weight, for every term of `defaults`, in its order.

    Raises:
        ConfigError: a name that is not one of the kind's weights (the message names the kind
            and its weights), or a weight that is negative or not a finite number.
    """
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        valid = ", ".join(defaults) if defaults else "none"
        raise ConfigError(f"{path}: {', '.join(map(repr, unknown))} {'is' if len(unknown) == 1 else 'are'} not a "
                          f"loss weight of kind {kind!r}; its weights (the terms it logs) are: {valid}")
    for name, value in given.items():
        _check(isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
               and value >= 0, f"{path}.{name} must be a finite number >= 0, got {value!r}")
    return {name: float(given.get(name, default)) for name, default in defaults.items()}


def upgrade_legacy_loss(data: dict[str, Any], path: str = "") -> dict[str, Any]:
    """A model config dict whose `loss` uses the legacy `w_*` fields, with them as `loss.weights`.

    The one place old configs (saved models' `config.json`, old YAML) are translated: each
    legacy field the kind read becomes the term it weighted (a field the config left out had
    the value 1, as before); fields the kind never read are dropped. A dict without legacy
    fields is returned as it is.

    Raises:
        ConfigError: legacy fields mixed with `weights`, or legacy fields for a kind that is
            not registered (their meaning depends on the kind).
    """
    loss = data.get("loss")
    if not isinstance(loss, dict) or not any(name in loss for name in LEGACY_WEIGHT_FIELDS):
        return data
    where = f"{path}.loss" if path else "loss"
    if "weights" in loss:
        raise ConfigError(f"{where}: give the loss weights as 'weights' only, not with the legacy fields "
                          f"{[n for n in LEGACY_WEIGHT_FIELDS if n in loss]}")
    kind = data.get("kind", ModelConfig.kind)
    declared = _kind_loss(kind) if isinstance(kind, str) else None
    if declared is None:
        raise ConfigError(f"{where}: the legacy fields {[n for n in LEGACY_WEIGHT_FIELDS if n in loss]} can only be "
                          f"read for a registered model kind, got kind {kind!r}")
    new_loss = {k: v for k, v in loss.items() if k not in LEGACY_WEIGHT_FIELDS}
    new_loss["weights"] = {term: loss.get(old, LEGACY_WEIGHT_DEFAULT)
                           for old, term in declared.legacy_loss_weights.items()}
    return {**data, "loss": new_loss}


@dataclass
class LossConfig:
    """The training objective's settings (method.md §2); its weights are named by the kind.

    Attributes:
        s: latent noise scale of the reconstruction terms (one-step and style objectives).
        perceptual: "mse" (offline default), "ssim" (MSE + SSIM), "lpips" (needs local weights) or
            "classifier" (MSE + activations of an MNIST classifier trained here; 1x32x32 only).
        weights: logged term -> its weight. The names are the model kind's loss terms
            (`KindSpec.loss_weights`: onestep latent, noise, data, pred; projective pixel,
            latent, prior_data, prior_noise; style pred, latent, content_rec, styled_rec,
            identity; fm_baseline none). Terms left out get the kind's default; `ModelConfig`
            fills them in and refuses names of other kinds.
    """

    s: float = 0.3
    perceptual: Literal["mse", "ssim", "lpips", "classifier"] = "mse"
    weights: dict[str, float] = field(default_factory=dict)

    def validate(self, path: str) -> None:
        _check(self.s >= 0, f"{path}.s must be >= 0, got {self.s}")
        for name, value in self.weights.items():
            _check(value >= 0, f"{path}.weights.{name} must be >= 0, got {value}")


@dataclass
class SamplerConfig:
    """Latent ODE integration for one-step models.

    Attributes:
        method: "euler" or "rk4".
        steps: number of steps T of the multi-step sampler that `B` collapses.
        t_end: end time; None means `1 - 1/T` as the reference.
        compress_tol: relative tolerance of the rank-revealing re-compression of `B`
            (0 disables it).
    """

    method: Literal["euler", "rk4"] = "rk4"
    steps: int = 100
    t_end: float | None = None
    compress_tol: float = 0.0

    def validate(self, path: str) -> None:
        _check(self.steps >= 1, f"{path}.steps must be >= 1, got {self.steps}")
        if self.t_end is not None:
            _check(0 < self.t_end < 1, f"{path}.t_end must lie in (0, 1), got {self.t_end}")
        _check(self.compress_tol >= 0, f"{path}.compress_tol must be >= 0, got {self.compress_tol}")

    def resolved_t_end(self) -> float:
        return 1.0 - 1.0 / self.steps if self.t_end is None else self.t_end


@dataclass
class ModelConfig:
    """A whole model: which kind, its data shape, `g` and `A`.

    Attributes:
        kind: a registered model kind ("onestep", "projective", "style", ...).
        image_shape: (C, H, W) of the images the model maps.
    """

    kind: str = "onestep"
    image_shape: tuple[int, int, int] = (1, 32, 32)
    flow: FlowConfig = field(default_factory=FlowConfig)
    operator: OperatorConfig = field(default_factory=OperatorConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)

    def __post_init__(self) -> None:
        # The kind owns the weights' names and defaults: fill them in here, so that every
        # constructed config (and the config.json dumped from it) holds every weight it trains with.
        declared = _kind_loss(self.kind) if isinstance(self.kind, str) else None
        if declared is not None and isinstance(self.loss, LossConfig):
            path = f"{_BUILDING.get() or type(self).__name__}.loss.weights"
            weights = resolve_loss_weights(self.kind, declared.loss_weights, self.loss.weights, path)
            self.loss = dataclasses.replace(self.loss, weights=weights)

    @staticmethod
    def upgrade_dict(data: dict[str, Any], path: str) -> dict[str, Any]:
        """The raw dict with legacy fields translated (`from_dict` calls it before loading)."""
        return upgrade_legacy_loss(data, path)

    def validate(self, path: str) -> None:
        _check(all(s >= 1 for s in self.image_shape), f"{path}.image_shape must be positive, got {self.image_shape}")
        _check(self.loss.perceptual != "classifier" or tuple(self.image_shape) == (1, 32, 32),
               f"{path}.loss.perceptual='classifier' compares MNIST classifier features of 1x32x32 images, "
               f"got image_shape {tuple(self.image_shape)}; use 'mse', 'ssim' or 'lpips'")

    def chw(self) -> tuple[int, int, int]:
        """`image_shape` as the `(C, H, W)` ints a model is built for.

        Raises:
            ConfigError: not three positive sizes (models may be built from unvalidated configs).
        """
        shape = tuple(self.image_shape)
        if len(shape) != 3 or not all(isinstance(s, int) and s >= 1 for s in shape):
            raise ConfigError(f"image_shape must be (C, H, W) with positive int sizes, got {self.image_shape}")
        return shape


@dataclass
class TrainConfig:
    """Optimisation of one run (the pipelines add the distributed knobs).

    Attributes:
        steps: optimiser steps.
        batch_size: global batch size (split across workers by the pipeline).
        lr: Adam learning rate.
        weight_decay: AdamW weight decay.
        grad_clip: max gradient norm (0 disables clipping).
        seed: seed of parameters, data order and noise.
        log_every, sample_every, checkpoint_every: intervals in steps (0 disables).
        lr_schedule: "constant" (`lr` throughout), or "cosine": cosine decay from `lr` to
            `lr * min_lr_ratio` over the steps after the warmup.
        warmup_steps: steps of linear warmup from `lr / warmup_steps` to `lr` (0: none).
        min_lr_ratio: the cosine schedule's final lr as a fraction of `lr`.
        ema_decay: decay of an exponential moving average of the weights, used for sampling
            and export (the trained model ends with the averaged weights); 0 disables it.
            The average starts at the weights after step 1 and warms up as
            `min(ema_decay, (1 + step) / (10 + step))`, so short runs are not dominated by the
            initial weights.
    """

    steps: int = 1000
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    seed: int = 0
    log_every: int = 10
    sample_every: int = 0
    checkpoint_every: int = 0
    lr_schedule: Literal["constant", "cosine"] = "constant"
    warmup_steps: int = 0
    min_lr_ratio: float = 0.0
    ema_decay: float = 0.0

    def validate(self, path: str) -> None:
        _check(self.steps >= 1, f"{path}.steps must be >= 1, got {self.steps}")
        _check(self.batch_size >= 1, f"{path}.batch_size must be >= 1, got {self.batch_size}")
        _check(self.lr > 0, f"{path}.lr must be > 0, got {self.lr}")
        _check(self.grad_clip >= 0, f"{path}.grad_clip must be >= 0, got {self.grad_clip}")
        _check(self.warmup_steps >= 0, f"{path}.warmup_steps must be >= 0, got {self.warmup_steps}")
        _check(0 <= self.min_lr_ratio <= 1, f"{path}.min_lr_ratio must lie in [0, 1], got {self.min_lr_ratio}")
        _check(0 <= self.ema_decay < 1, f"{path}.ema_decay must lie in [0, 1), got {self.ema_decay}")
        for name in ("log_every", "sample_every", "checkpoint_every"):
            _check(getattr(self, name) >= 0, f"{path}.{name} must be >= 0, got {getattr(self, name)}")


# --------------------------------------------------------------------------------------------
# Strict (de)serialisation
# --------------------------------------------------------------------------------------------


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, path: str) -> Any:
    """Check `value` against the annotation `tp` and convert JSON shapes (list -> tuple)."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{path or 'config'} must be a mapping, got {type(value).__name__}")
        return from_dict(tp, value, path)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arm in args:
            if arm is type(None):
                continue
            try:
                return _coerce(value, arm, path)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(f"{path}: {value!r} matches none of {[_type_name(a) for a in args]}")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{path} must be one of {list(args)}, got {value!r}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path} must be a list, got {type(value).__name__} {value!r}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ConfigError(f"{path} must have {len(args)} entries, got {len(value)}: {value!r}")
            return tuple(_coerce(v, a, f"{path}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
        item = args[0] if args else Any
        out = [_coerce(v, item, f"{path}[{i}]") for i, v in enumerate(value)]
        return tuple(out) if origin is tuple else out
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{path} must be a mapping, got {type(value).__name__}")
        key_tp, value_tp = args if args else (Any, Any)
        return {_coerce(k, key_tp, path): _coerce(v, value_tp, f"{path}.{k}") for k, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{path} must be true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{path} must be an integer, got {type(value).__name__} {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{path} must be a number, got {type(value).__name__} {value!r}")
        value = float(value)
        if value != value or value in (float("inf"), float("-inf")):
            raise ConfigError(f"{path} must be finite, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{path} must be a string, got {type(value).__name__} {value!r}")
        return value
    raise ConfigError(f"{path}: unsupported annotation {tp!r}")  # pragma: no cover


def from_dict(cls: type[T], data: dict[str, Any], path: str = "") -> T:
    """Build and validate the dataclass `cls` from a plain mapping, strictly.

    Args:
        cls: a config dataclass.
        data: nested dicts / lists / scalars (parsed JSON or YAML).
        path: dotted prefix used in error messages.

    A class with a static `upgrade_dict(data, path)` gets `data` through it first: that is how
    `ModelConfig` reads the layouts of older configs (`upgrade_legacy_loss`).

    Returns:
        The validated config object.

    Raises:
        ConfigError: naming the dotted path of the first problem.
    """
    if not isinstance(data, dict):
        raise ConfigError(f"{path or 'config'} must be a mapping, got {type(data).__name__}")
    upgrade = getattr(cls, "upgrade_dict", None)
    if callable(upgrade):  # a config class that reads older layouts of itself translates them first
        data = upgrade(data, path)
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        where = f"{path}.{key}" if path else key
        if key not in names:
            near = difflib.get_close_matches(str(key), names, n=1)
            hint = f" (did you mean '{near[0]}'?)" if near else f" (known: {', '.join(names)})"
            raise ConfigError(f"unknown config key '{where}'{hint}")
        kwargs[key] = _coerce(value, hints[key], where)
    token = _BUILDING.set(path or cls.__name__)
    try:
        obj = cls(**kwargs)
    finally:
        _BUILDING.reset(token)
    validate(obj, path)
    return obj


def validate(obj: Any, path: str = "") -> None:
    """Run `validate(path)` on `obj` and every nested config dataclass."""
    for f in dataclasses.fields(obj):
        child = getattr(obj, f.name)
        if dataclasses.is_dataclass(child):
            validate(child, f"{path}.{f.name}" if path else f.name)
    if hasattr(obj, "validate"):
        obj.validate(path or type(obj).__name__)


def to_dict(obj: Any) -> dict[str, Any]:
    """The JSON-ready form of a config (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(obj)))


def apply_overrides(obj: T, overrides: list[str]) -> T:
    """Return a copy of `obj` with `dotted.key=value` overrides applied (values parsed as JSON,
    falling back to plain strings), validated again."""
    data = to_dict(obj)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key.path=value")
        key, raw = item.split("=", 1)
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        node = data
        parts = key.strip().split(".")
        for i, part in enumerate(parts[:-1]):
            if not isinstance(node.get(part), dict):
                raise ConfigError(f"unknown config key '{'.'.join(parts[: i + 1])}' in override {item!r}")
            node = node[part]
        if parts[-1] not in node:
            near = difflib.get_close_matches(parts[-1], list(node), n=1)
            hint = f" (did you mean '{near[0]}'?)" if near else ""
            if parts[-1] in LEGACY_WEIGHT_FIELDS:
                hint = (f" (did you mean '{'.'.join(parts[:-1] + ['weights'])}.<term>'? loss weights are named by "
                        f"the terms the kind logs)")
            raise ConfigError(f"unknown config key '{key}' in override {item!r}{hint}")
        node[parts[-1]] = value
    return from_dict(type(obj), data)


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The plain mapping in a JSON or YAML file (`.yaml` / `.yml`), not yet loaded into a config.

    Raises:
        ConfigError: the file does not exist or does not parse.
    """
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    text = p.read_text()
    try:
        if p.suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text) or {}
        else:
            data = json.loads(text)
    except Exception as e:  # noqa: BLE001 - re-raised with the file named
        raise ConfigError(f"cannot parse config file {p}: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"config file {p} must hold a mapping, got {type(data).__name__}")
    return data


def load_config(cls: type[T], path: str | Path | None = None, overrides: list[str] | None = None) -> T:
    """Load `cls` from a JSON or YAML file (or defaults when `path` is None), then apply overrides."""
    data = read_config_file(path) if path is not None else {}
    obj = from_dict(cls, data)
    return apply_overrides(obj, overrides or []) if overrides else obj


def dump_config(obj: Any, path: str | Path) -> Path:
    """Write the resolved config as JSON (the record of what a run used)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(to_dict(obj), indent=2, sort_keys=True) + "\n")
    return p
