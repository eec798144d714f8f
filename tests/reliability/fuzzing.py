"""Seeded generators of bad inputs, and the check that an error is a clean one.

A clean error is what a user can act on: a `ValueError` (or `ConfigError`, a `ValueError`) or a
`TypeError`, with a message, raised by the project's own code. "Raised by the project's own
code" is read from the traceback: its last frame must lie under `linearizer/` or `pipelines/`,
never inside torch, numpy or the standard library, where messages speak of internals.

Generators draw from `random.Random(seed)`, so a failing case is replayed by its seed, and each
case carries a description of what it broke.
"""

from __future__ import annotations

import dataclasses
import math
import random
import traceback
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from linearizer.config import ConfigError

REPO = Path(__file__).resolve().parents[2]
OWN_CODE = (str(REPO / "linearizer") + "/", str(REPO / "pipelines") + "/")
CLEAN_TYPES: tuple[type[BaseException], ...] = (ValueError, TypeError, ConfigError)


@dataclass
class Verdict:
    """How one bad input was handled."""

    case: str
    error: BaseException | None
    clean: bool
    why: str


def judge(case: str, call, allowed: tuple[type[BaseException], ...] = CLEAN_TYPES,
          own_code: tuple[str, ...] = OWN_CODE) -> Verdict:
    """Run `call()`, which must raise; classify what it raised.

    Returns:
        A verdict; `clean` is True when the exception is one of `allowed`, has a message, and
        the traceback's last frame lies in `own_code`.
    """
    try:
        result = call()
    except Exception as e:  # noqa: BLE001 - classifying every exception is the point
        frames = traceback.extract_tb(e.__traceback__)
        last = frames[-1].filename if frames else "?"
        if not isinstance(e, allowed):
            return Verdict(case, e, False, f"{type(e).__name__} (not one of {[t.__name__ for t in allowed]}) "
                                           f"from {last}: {e}")
        if not str(e).strip():
            return Verdict(case, e, False, f"{type(e).__name__} without a message from {last}")
        if not last.startswith(own_code):
            return Verdict(case, e, False, f"{type(e).__name__} raised inside {last}: {e}")
        return Verdict(case, e, True, "")
    return Verdict(case, None, False, f"accepted: returned {type(result).__name__}")


# --------------------------------------------------------------------------------------------
# Configs: mutate one field of a valid config tree so that it is certainly invalid
# --------------------------------------------------------------------------------------------


def fields_of(cls: type, prefix: str = "") -> list[tuple[str, Any]]:
    """(dotted path, annotation) of every leaf and every nested dataclass of `cls`."""
    out = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        path = f"{prefix}.{f.name}" if prefix else f.name
        tp = hints[f.name]
        out.append((path, tp))
        if dataclasses.is_dataclass(tp):
            out.extend(fields_of(tp, path))
    return out


def _optional(tp: Any) -> tuple[bool, Any]:
    """(accepts None, the annotation without None)."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return type(None) in typing.get_args(tp), (args[0] if len(args) == 1 else typing.Union[tuple(args)])
    return False, tp


def wrong_values(tp: Any, rng: random.Random) -> list[Any]:
    """Values of the wrong type for the annotation `tp` (None only where it is not allowed)."""
    nullable, tp = _optional(tp)
    junk: list[Any] = [{"nested": 1}, [rng.randint(1, 9), "x"]]
    if not nullable:
        junk.append(None)
    if dataclasses.is_dataclass(tp):
        return [[1, 2], "section", 3]
    origin = typing.get_origin(tp)
    if origin is Literal:
        return junk + [f"not-{typing.get_args(tp)[0]}", rng.randint(5, 99)]
    if origin is tuple:
        n = len(typing.get_args(tp))
        return [[1] * (n - 1), [1] * (n + 1), "1x8x8", [1.5] + [8] * (n - 1), [True] * n, {"c": 1}]
    if origin is list:
        return ["one", {"a": 1}, [3, 4]]
    if tp is bool:
        return junk + ["true", 1, 0]
    if tp is int:
        return junk + [str(rng.randint(1, 99)), rng.randint(1, 99) + 0.5, True]
    if tp is float:
        return junk + [f"{rng.random():.3f}", True, math.nan, math.inf, -math.inf]
    if tp is str:
        return junk + [rng.randint(1, 99), 2.5, True]
    if tp is typing.Any or origin is dict:
        return []
    return junk  # pragma: no cover - a new annotation: still the generic junk


def set_path(data: dict[str, Any], path: str, value: Any) -> None:
    node = data
    parts = path.split(".")
    for part in parts[:-1]:
        node = node[part]
    node[parts[-1]] = value


def mutate_config(base: dict[str, Any], cls: type, rng: random.Random,
                  range_cases: list[tuple[str, Any]], combo_cases: list[tuple[dict[str, Any], str]]
                  ) -> tuple[dict[str, Any], str, str]:
    """One certainly-invalid config derived from the valid `base`.

    Returns:
        (config data, what was broken, a fragment the error message must contain).
    """
    import copy

    data = copy.deepcopy(base)
    roll = rng.random()
    if roll < 0.25:  # an unknown key at a random depth
        sections = [p for p, tp in fields_of(cls) if dataclasses.is_dataclass(_optional(tp)[1])]
        where = rng.choice([""] + sections)
        node = data
        for part in where.split(".") if where else []:
            node = node[part]
        key = rng.choice(["lr_rate", "stepz", "num_worker", "extra", "zero", "Name", f"k{rng.randint(0, 999)}"])
        while key in node:
            key += "_"
        node[key] = rng.choice([1, "x", None, [1], {"a": 1}])
        path = f"{where}.{key}" if where else key
        return data, f"unknown key {path}", f"'{path}'"
    if roll < 0.65:  # a wrong type
        candidates = [(p, tp) for p, tp in fields_of(cls) if wrong_values(tp, rng)]
        path, tp = rng.choice(candidates)
        value = rng.choice(wrong_values(tp, rng))
        set_path(data, path, value)
        return data, f"{path}={value!r} (annotation {tp})", path
    if roll < 0.85:  # out of range
        path, value = rng.choice(range_cases)
        value = value(rng) if callable(value) else value
        set_path(data, path, value)
        return data, f"{path}={value!r} (out of range)", path.split(".")[-1]
    changes, fragment = rng.choice(combo_cases)  # an impossible combination
    for path, value in changes.items():
        set_path(data, path, value(rng) if callable(value) else value)
    return data, f"combination {changes}", fragment


# --------------------------------------------------------------------------------------------
# predict requests: one valid request, then one thing broken
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModeSpec:
    """A predict mode: how to make valid inputs and params, and which params can be broken how."""

    mode: str
    unit_range: bool  # inputs are images in [0, 1] (else noise: any finite value)
    batch: int | None  # a fixed batch size the mode needs (interpolate: 2), else None
    params: dict[str, Any]  # valid params besides "mode"
    bad_params: dict[str, list[Any]]  # param -> certainly-invalid values


def valid_inputs(shape: tuple[int, int, int], spec: ModeSpec, rng: random.Random) -> torch.Tensor:
    n = spec.batch or rng.randint(1, 3)
    g = torch.Generator().manual_seed(rng.randint(0, 2**31))
    return torch.rand(n, *shape, generator=g) if spec.unit_range else torch.randn(n, *shape, generator=g)


def bad_request(shape: tuple[int, int, int], spec: ModeSpec, rng: random.Random) -> tuple[Any, Any, str]:
    """(inputs, params, what was broken) with exactly one defect."""
    x = valid_inputs(shape, spec, rng)
    params: Any = {"mode": spec.mode, **spec.params}
    c, h, w = shape
    n = x.shape[0]
    kinds = ["input type", "input dtype", "input dims", "input shape", "empty batch", "non-finite", "params type",
             "mode", "unknown param"]
    kinds += (["range"] if spec.unit_range else []) + (["param value"] if spec.bad_params else [])
    kind = rng.choice(kinds)
    if kind == "input type":
        x = rng.choice([None, 3, "image", x.tolist(), x.numpy(), {"x": 1}])
        return x, params, f"inputs of type {type(x).__name__}"
    if kind == "input dtype":
        dtype = rng.choice([torch.int64, torch.int32, torch.uint8, torch.bool, torch.complex64])
        return (x * 255).to(dtype) if dtype != torch.complex64 else x.to(dtype), params, f"inputs of dtype {dtype}"
    if kind == "input dims":
        x = rng.choice([x[0], x[0, 0], x.flatten(), x[None], torch.tensor(0.5)])
        return x, params, f"inputs of shape {list(x.shape)}"
    if kind == "input shape":
        bad = rng.choice([(c + rng.randint(1, 3), h, w), (c, h + rng.randint(1, 5), w),
                          (c, h, max(1, w - rng.randint(1, 3))), (c, w + 1, h + 1), (n, c * h * w, 1)])
        return torch.rand(n, *bad), params, f"inputs of shape {[n, *bad]}"
    if kind == "empty batch":
        return x[:0], params, "an empty batch"
    if kind == "non-finite":
        flat = x.clone().flatten()
        flat[rng.randrange(flat.numel())] = rng.choice([math.nan, math.inf, -math.inf])
        return flat.view_as(x), params, "a NaN or infinite value"
    if kind == "range":
        flat = x.clone().flatten()
        flat[rng.randrange(flat.numel())] = rng.choice([-0.5, 1.5, -1e-3, 1.001, 255.0])
        return flat.view_as(x), params, "an image value outside [0, 1]"
    if kind == "params type":
        return x, rng.choice([None, "sample", [spec.mode], 3, ("mode", spec.mode)]), "params that are not a dict"
    if kind == "mode":
        params["mode"] = rng.choice(["generate", "", "SAMPLE", 3, None, 1.5, [spec.mode], {"m": 1}])
        return x, params, f"mode {params['mode']!r}"
    if kind == "unknown param":
        params[rng.choice(["stepz", "temperature", "seed", "strength_", "modes"])] = 1
        return x, params, "an unknown param"
    name = rng.choice(sorted(spec.bad_params))
    params[name] = rng.choice(spec.bad_params[name])
    return x, params, f"param {name}={params[name]!r}"


def bad_array(shape: tuple[int, int, int], rng: random.Random) -> tuple[Any, str]:
    """A request body for a served model `[N, C, H, W]` float32 that is wrong in one way."""
    c, h, w = shape
    n = rng.randint(1, 3)
    x = np.random.default_rng(rng.randint(0, 2**31)).random((n, c, h, w), dtype=np.float32)
    kind = rng.choice(["dtype", "dims", "shape", "nan", "range", "type", "empty"])
    if kind == "dtype":
        dtype = rng.choice([np.float64, np.int64, np.int32, np.uint8, np.bool_, np.complex64])
        return (x * 255).astype(dtype), f"an array of dtype {np.dtype(dtype)}"
    if kind == "dims":
        y = rng.choice([x[0], x[0, 0], x.reshape(-1), x[None]])
        return y, f"an array of shape {list(y.shape)}"
    if kind == "shape":
        bad = rng.choice([(c + 1, h, w), (c, h + 2, w), (c, h, w - 1)])
        return np.zeros((n, *bad), np.float32), f"an array of shape {[n, *bad]}"
    if kind == "nan":
        x.flat[rng.randrange(x.size)] = rng.choice([np.nan, np.inf, -np.inf])
        return x, "a NaN or infinite value"
    if kind == "range":
        x.flat[rng.randrange(x.size)] = rng.choice([-0.5, 1.5, 255.0])
        return x, "a value outside [0, 1]"
    if kind == "empty":
        return x[:0], "an empty batch"
    y = rng.choice(["image", None, 3, {"x": [1.0]}])
    return y, f"a request of type {type(y).__name__}"
