"""What every evaluation shares: results and quality-floor checks, the registry, the model's kind.

An evaluation is a function `run(model, model_cfg, cfg) -> EvalResult`. The result carries the
metrics, the quality-floor checks, the primary metric the promotion compares, and the pictures of the
report; everything in it is plain data and tensors, so it travels back from a Ray task.

Registry access is strict and fails fast: an unreachable tracking server, a missing store, model,
alias or version, and a model of the wrong kind for the requested evaluation all raise
`EvaluationError` with a message that says what was looked for and what exists.

MLflow is imported inside functions: loading a config must not pay its import.

Example:
    >>> uri, _ = resolve_tracking(cfg)
    >>> check_reachable(uri)
    >>> mv = resolve_version(client, "linearizer-onestep", alias="challenger")
    >>> model_dir = download_model(client, uri, mv, "/tmp/eval")
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from .config import EVALUATION_KINDS, EvalConfig

if TYPE_CHECKING:
    import torch
    from mlflow.entities.model_registry import ModelVersion
    from mlflow.tracking import MlflowClient
    from torch import Tensor

    from linearizer.metrics import FIDResult

#: prefix of every model version tag the evaluation writes.
TAG = "eval."


class EvaluationError(ValueError):
    """A registry entry, store or model does not fit the requested evaluation."""


# --------------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Check:
    """One quality floor: `metric op bound`, with the measured value and where the bound came from.

    A NaN value never passes, nor does a NaN bound (a floor that could not be determined; then
    `source` says why).
    """

    metric: str
    op: Literal[">=", "<="]
    bound: float
    value: float
    source: str = ""

    @property
    def passed(self) -> bool:
        if math.isnan(self.value) or math.isnan(self.bound):
            return False
        return self.value >= self.bound if self.op == ">=" else self.value <= self.bound

    @property
    def shortfall(self) -> str:
        """By how much a failed check misses its bound ("" when it passes)."""
        if self.passed:
            return ""
        if math.isnan(self.bound):
            return "no floor could be set"
        if math.isnan(self.value):
            return "the value is NaN"
        gap = f"misses by {abs(self.value - self.bound):.4g}"
        if self.op == "<=" and self.bound > 0:
            gap += f" ({self.value / self.bound:.3g}x the bound)"
        return gap

    def __str__(self) -> str:
        bound = "an unknown floor" if math.isnan(self.bound) else f"{self.bound:g}"
        where = f" [{self.source}]" if self.source else ""
        verdict = "pass" if self.passed else f"FAIL, {self.shortfall}"
        return f"{self.metric} = {self.value:.4g} (needs {self.op} {bound}{where}): {verdict}"


def make_checks(metrics: dict[str, float], bounds: list[tuple[str, Literal[">=", "<="], float | None]],
                section: str = "") -> list[Check]:
    """Checks for the `(metric, op, bound)` triples whose bound is set (None disables one).

    Args:
        metrics: the measured values.
        bounds: the floors; a metric absent from `metrics` is checked as NaN (fails).
        section: the config section the bounds come from, e.g. "sampling" (names each source).
    """
    return [Check(m, op, float(b), float(metrics.get(m, math.nan)), _source(section, m, op))
            for m, op, b in bounds if b is not None]


def _source(section: str, metric: str, op: str) -> str:
    return f"{section}.{'max' if op == '<=' else 'min'}_{metric}" if section else ""


def fid_floor(cfg: EvalConfig, max_fid: float | str | None, scored: FIDResult | None, setting: str) -> list[Check]:
    """The FID floor of an evaluation: an explicit `max_fid`, or with "auto" the floor that
    `fid.floors` states for the feature network that scored the images.

    Floors are keyed by the network and its weights' recipe (`name/recipe`, e.g. the classifier's
    training budget), not by the weights' hash: a floor is a property of the FID scale, which a
    retrained classifier of the same recipe keeps; promotion compares two FIDs only when the
    hashes match (`EvalResult.comparable`).

    Args:
        cfg: the evaluation config (`fid.floors`).
        max_fid: the section's setting (a number, "auto", or None: no FID floor).
        scored: the FID of the evaluation (None when FID is off).
        setting: the dotted name of `max_fid`, for messages.

    Returns:
        No check (None), or one FID check; a check with a NaN bound when no floor is known.
    """
    if max_fid is None:
        return []
    value = math.nan if scored is None else scored.value
    if max_fid != "auto":
        return [Check("fid", "<=", float(max_fid), value, setting)]
    if scored is None:  # EvalConfig.check_for refuses this combination before any work
        return [Check("fid", "<=", math.nan, value, f"{setting}=auto, but FID is off")]
    from linearizer.metrics.fid import extractor_key

    key = extractor_key(scored.extractor, scored.recipe)
    if key not in cfg.fid.floors:
        return [Check("fid", "<=", math.nan, value,
                      f"no FID floor is known for {key}: measure one (python -m bench.fid_floors) and add it to "
                      f"fid.floors, or set {setting}")]
    return [Check("fid", "<=", cfg.fid.floors[key], value, f"fid.floors[{key}]")]


@dataclass
class EvalResult:
    """What one evaluation of one model measured.

    Attributes:
        evaluation: "sampling", "projection" or "style".
        metrics: flat name -> float (logged as run metrics and version tags).
        checks: the quality floors with their values.
        primary: the metric promotion compares; `higher_is_better` says which way.
        comparable: scores with the same key can be compared (evaluation, primary metric and
            whatever changes its scale, e.g. the FID feature network).
        images: name -> `[C, H, W]` picture in [0, 1] for the report.
        info: name -> text shown in the report and logged as run params (extractor names, sizes).
        notes: free-text lines for the report.
    """

    evaluation: str
    metrics: dict[str, float]
    checks: list[Check]
    primary: str
    higher_is_better: bool
    comparable: str
    images: dict[str, Tensor] = field(default_factory=dict)
    info: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.primary not in self.metrics:
            raise ValueError(f"primary metric {self.primary!r} is not among the metrics {sorted(self.metrics)}")

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    @property
    def failures(self) -> list[Check]:
        return [c for c in self.checks if not c.passed]

    @property
    def primary_value(self) -> float:
        return self.metrics[self.primary]


# --------------------------------------------------------------------------------------------
# The store
# --------------------------------------------------------------------------------------------


def resolve_tracking(cfg: EvalConfig) -> tuple[str, str | None]:
    """The tracking URI and the artifact location for a new evaluation experiment.

    Order: `mlflow.tracking_uri`, `$MLFLOW_TRACKING_URI`, then the training pipeline's local
    default `sqlite:///<output_dir>/mlflow.db` (artifacts in `<output_dir>/mlartifacts`), so an
    evaluation started in the same directory finds what training registered.
    """
    uri = cfg.mlflow.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri, cfg.mlflow.artifact_location
    root = Path(cfg.output_dir).resolve()
    return f"sqlite:///{root / 'mlflow.db'}", cfg.mlflow.artifact_location or (root / "mlartifacts").as_uri()


def check_reachable(uri: str, timeout_s: float = 10.0) -> None:
    """Fail fast when the store is not there, instead of MLflow's minutes of retries.

    A tracking server must answer `GET /health` within `timeout_s`; a SQLite store must exist
    (MLflow would silently create an empty one, and every lookup would then report a missing model).

    Raises:
        EvaluationError: naming the URI and what went wrong.
    """
    from pipelines.tracking import UnreachableError, check_tracking_server

    if uri.startswith(("http://", "https://")):
        try:
            check_tracking_server(uri, timeout_s)
        except UnreachableError as e:
            raise EvaluationError(str(e)) from e
    elif uri.startswith("sqlite:///"):
        path = Path(uri[len("sqlite:///"):])
        if not path.is_file():
            raise EvaluationError(f"no MLflow store at {path} (from {uri}): train and register a model first, or "
                                  f"set mlflow.tracking_uri / $MLFLOW_TRACKING_URI")


def client_for(uri: str) -> MlflowClient:
    """An MLflow client whose tracking and registry are both `uri`."""
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def _is_missing(error: Exception) -> bool:
    return getattr(error, "error_code", None) in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE")


def resolve_version(client: MlflowClient, name: str, alias: str | None = None,
                    version: int | str | None = None) -> ModelVersion:
    """The registered version `name` / `version`, else the one `alias` points to.

    Raises:
        EvaluationError: the model, version or alias does not exist (the message lists what does).
    """
    from mlflow.exceptions import MlflowException

    try:
        registered = client.get_registered_model(name)
    except MlflowException as e:
        if not _is_missing(e):
            raise
        names = sorted(m.name for m in client.search_registered_models(max_results=50))
        raise EvaluationError(f"registered model {name!r} not found; the registry holds: {names or 'nothing'}") from e
    try:
        if version is not None:
            return client.get_model_version(name, str(version))
        if alias is None:
            raise EvaluationError(f"give a version or an alias of {name!r} to evaluate")
        return client.get_model_version_by_alias(name, alias)
    except MlflowException as e:
        if not _is_missing(e):
            raise
        aliases = {a: str(v) for a, v in (registered.aliases or {}).items()}
        versions = sorted(int(v.version) for v in client.search_model_versions(f"name='{name}'"))
        what = f"version {version}" if version is not None else f"alias {alias!r}"
        raise EvaluationError(f"registered model {name!r} has no {what}; aliases: {aliases or 'none'}, "
                              f"versions: {versions or 'none'}") from e


def download_model(client: MlflowClient, uri: str, mv: ModelVersion, dst: str | Path) -> Path:
    """Download a registered pyfunc version and return its Linearizer directory.

    The pipeline logs the exported model (`config.json` + `model.safetensors`) as the pyfunc
    artifact "model"; its place inside the MLflow model is read from the `MLmodel` file.

    Raises:
        EvaluationError: the version is not a Linearizer pyfunc (no "model" artifact or no
            `config.json` in it).
    """
    import mlflow
    import yaml

    source = client.get_model_version_download_uri(mv.name, mv.version)  # resolved by this client's registry
    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=source, dst_path=str(dst), tracking_uri=uri,
                                                     registry_uri=uri))
    spec = yaml.safe_load((local / "MLmodel").read_text()) if (local / "MLmodel").is_file() else {}
    artifacts = (spec.get("flavors", {}).get("python_function", {}) or {}).get("artifacts") or {}
    if "model" not in artifacts:
        raise EvaluationError(f"{mv.name} v{mv.version} is not a Linearizer pyfunc: its MLmodel lists no 'model' "
                              f"artifact (artifacts: {sorted(artifacts)})")
    model_dir = local / artifacts["model"]["path"]
    if not (model_dir / "config.json").is_file():
        raise EvaluationError(f"{mv.name} v{mv.version}: artifact 'model' holds no config.json ({model_dir})")
    return model_dir


def choose_evaluation(requested: str, kind: str, where: str) -> str:
    """The evaluation to run for a model of `kind` ("auto" picks the kind's own).

    Args:
        requested: "auto" or an evaluation name.
        kind: the model's kind (from its `config.json`).
        where: how to name the model in messages, e.g. "linearizer-onestep v3".

    Raises:
        EvaluationError: the requested evaluation needs another kind, or no evaluation exists
            for this kind.
    """
    if requested == "auto":
        for evaluation, needed in EVALUATION_KINDS.items():
            if needed == kind:
                return evaluation
        raise EvaluationError(f"{where} is of kind {kind!r}, which no evaluation covers "
                              f"(evaluations by kind: {EVALUATION_KINDS})")
    needed = EVALUATION_KINDS[requested]
    if needed != kind:
        raise EvaluationError(f"evaluation {requested!r} needs a model of kind {needed!r}, but {where} is of kind "
                              f"{kind!r}; use evaluation=auto or the evaluation of that kind")
    return requested


def version_tags(client: MlflowClient, name: str, version: int | str) -> dict[str, str]:
    """The current tags of a version, read fresh from the registry."""
    return dict(client.get_model_version(name, str(version)).tags or {})


def set_version_tags(client: MlflowClient, name: str, version: int | str, tags: dict[str, Any]) -> None:
    """Set several version tags (values as strings; MLflow has no batch call for these)."""
    for key, value in tags.items():
        client.set_model_version_tag(name, str(version), key, str(value))


def generator(seed: int, offset: int = 0) -> torch.Generator:
    """A CPU generator seeded with `seed + offset` (one stream per probe, independent of order)."""
    import torch

    return torch.Generator().manual_seed(seed + offset)


def fid_vs_mnist(cfg: EvalConfig, fake: Tensor) -> FIDResult | None:
    """FID of `fake` against the MNIST test split, with the configured feature network.

    Returns:
        The result (value, the network's name, recipe and weights hash, sizes), or None when
        `fid.extractor` is "off".

    Raises:
        EvaluationError: the images are not 1x32x32 digits as the offline classifier needs, or
            the requested extractor is not available offline.
    """
    if cfg.fid.extractor == "off":
        return None
    import torch

    from linearizer.data.mnist import load_mnist
    from linearizer.metrics import ExtractorUnavailableError, fid, get_extractor

    shape = tuple(fake.shape[1:])
    if shape[0] != 1 or shape[1] != shape[2]:
        raise EvaluationError(f"FID is computed against MNIST and needs grey square images, got {shape}; "
                              f"set fid.extractor=off for models of other data")
    try:
        with torch.enable_grad():  # the evaluations run under no_grad; a first use trains the classifier
            extractor = get_extractor(cfg.fid.extractor, cache_dir=cfg.fid.cache_dir, steps=cfg.fid.classifier_steps,
                                      limit=cfg.fid.classifier_limit)
    except ExtractorUnavailableError as e:
        raise EvaluationError(str(e)) from e
    if extractor.name.startswith("mnist-classifier") and shape != (1, 32, 32):
        raise EvaluationError(f"the offline FID extractor {extractor.name} takes 1x32x32 images, got {shape}; "
                              f"set fid.extractor=off or fid.extractor=inception")
    real, _ = load_mnist("test", size=shape[1], limit=cfg.fid.n_real)
    return fid(real, fake.float().cpu().clamp(0, 1), extractor)


def fid_info(scored: FIDResult) -> dict[str, str]:
    """The report / run-parameter lines of an FID result."""
    return {"fid_extractor": scored.key, "fid_n_real": str(scored.n_real)}
