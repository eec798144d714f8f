"""The evaluation job config: which registered version, which evaluation, quality floors, promotion.

One typed tree, loaded strictly (`linearizer.config.from_dict`): unknown keys, wrong types and
impossible values raise `ConfigError` naming the dotted key. Quality floors are plain fields of
the evaluation they belong to (`sampling.min_agreement_db`, `projection.max_idempotency_error`,
...), so a `--set` override of a floor is checked like any other key; `None` disables a floor.
A version must pass every floor of its evaluation to become champion (`promotion.decide`); the
defaults are absolute floors a usable model of each kind passes and a model that draws noise or
does nothing does not (docs/jobs.md, "Quality floors", has the measurements behind them).

Example:
    >>> cfg = load_eval_config(None, ["mlflow.registered_model=linearizer-onestep",
    ...                               "mlflow.alias=challenger", "sampling.max_fid=40"])
    >>> cfg.mlflow.alias, cfg.sampling.max_fid
    ('challenger', 40.0)
    >>> load_eval_config().sampling.max_fid                 # the floor of the FID's feature network
    'auto'
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from linearizer.config import ConfigError, apply_overrides, from_dict, load_config
from linearizer.kinds import evaluations
from linearizer.metrics.classifier import DEFAULT_STEPS as CLASSIFIER_STEPS

#: FID floors of generated MNIST digits (against the test split), by feature network and the
#: recipe of its weights (`linearizer.metrics.fid.extractor_key`). The classifier's value is the
#: geometric mean (rounded up) of two reference sets' FIDs (`python -m bench.quality_floors`,
#: docs/results/quality_floors.json): real digits blurred by 1 px (181, readable) and samples of
#: a Gaussian fitted to the digits (547, blobs); noise and an untrained model score 1460-1960.
DEFAULT_FID_FLOORS: dict[str, float] = {"mnist-classifier-v1/steps800-bs128-lr0.002-seed0": 315.0}
#: evaluation name -> the model kind it needs, from each kind's `KindSpec.evaluation`.
EVALUATION_KINDS = evaluations()
_ALIAS = re.compile(r"^[A-Za-z0-9_-]+$")


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def _optional_positive(value: float | None, name: str) -> None:
    _check(value is None or value > 0, f"{name} must be > 0 or null, got {value}")


@dataclass
class EvalMlflowConfig:
    """Where the model comes from and where the evaluation run goes.

    Attributes:
        tracking_uri: MLflow tracking (and registry) URI; None means $MLFLOW_TRACKING_URI, else
            the training pipeline's local default `sqlite:///<output_dir>/mlflow.db`.
        artifact_location: artifact root of a newly created evaluation experiment (None: beside
            the local store, or the server's default).
        experiment: experiment of the evaluation runs.
        registered_model: registered model name.
        alias: alias of the version to evaluate (ignored when `version` is set).
        version: a version number; wins over `alias`.
        request_timeout_s: how long the reachability check waits for a tracking server.
    """

    tracking_uri: str | None = None
    artifact_location: str | None = None
    experiment: str = "linearizer-evaluation"
    registered_model: str = "linearizer-onestep"
    alias: str | None = "challenger"
    version: int | None = None
    request_timeout_s: float = 10.0

    def validate(self, path: str) -> None:
        _check(bool(self.experiment), f"{path}.experiment must be a non-empty string")
        _check(bool(self.registered_model), f"{path}.registered_model must be a non-empty string")
        _check(self.alias is not None or self.version is not None,
               f"{path}: set {path}.alias or {path}.version (which registered version to evaluate)")
        _check(self.alias is None or bool(_ALIAS.match(self.alias)),
               f"{path}.alias must contain only letters, digits, '_' and '-', got {self.alias!r}")
        _check(self.version is None or self.version >= 1, f"{path}.version must be >= 1 or null, got {self.version}")
        _check(self.request_timeout_s > 0, f"{path}.request_timeout_s must be > 0, got {self.request_timeout_s}")


@dataclass
class RayEvalConfig:
    """Where the computation runs.

    Attributes:
        enabled: run the metrics in a Ray task (embedded loopback Ray, `$RAY_ADDRESS`, or the
            cluster of the Ray job this runs in); False computes in this process.
        address: Ray cluster address (None: `$RAY_ADDRESS`, else embedded).
        num_cpus, num_gpus: resources of the task (`device` should be "cuda" when num_gpus > 0).
    """

    enabled: bool = True
    address: str | None = None
    num_cpus: float = 1.0
    num_gpus: float = 0.0

    def validate(self, path: str) -> None:
        _check(self.num_cpus > 0, f"{path}.num_cpus must be > 0, got {self.num_cpus}")
        _check(self.num_gpus >= 0, f"{path}.num_gpus must be >= 0, got {self.num_gpus}")


@dataclass
class FidConfig:
    """FID settings shared by the evaluations that report one.

    Attributes:
        extractor: "auto" (Inception when its package and weights are on disk, else the offline
            MNIST classifier), "inception", "mnist-classifier", or "off" (no FID).
        n_real: real images (MNIST test split) the statistics are fitted on.
        classifier_steps, classifier_limit: training budget of the offline classifier when it is
            not cached yet (`linearizer.metrics.load_or_train_classifier`).
        cache_dir: classifier cache root (None: $LINEARIZER_CACHE or ~/.cache/linearizer).
        floors: the FID floor (highest FID a champion may have) of each feature network, keyed
            `name/recipe` (`DEFAULT_FID_FLOORS`); used where an evaluation's `max_fid` is "auto".
            A network without an entry has no known floor, and "auto" then fails the version.
    """

    extractor: Literal["auto", "inception", "mnist-classifier", "off"] = "auto"
    n_real: int = 1000
    classifier_steps: int = CLASSIFIER_STEPS  # one recipe for training validation, evaluation and benches
    classifier_limit: int | None = None
    cache_dir: str | None = None
    floors: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_FID_FLOORS))

    def validate(self, path: str) -> None:
        for key, value in self.floors.items():
            _check(isinstance(key, str) and bool(key), f"{path}.floors keys must be non-empty strings, got {key!r}")
            _check(not isinstance(value, bool) and isinstance(value, (int, float)) and 0 < value < float("inf"),
                   f"{path}.floors[{key!r}] must be a finite number > 0, got {value!r}")
        _check(self.n_real >= 2, f"{path}.n_real must be >= 2 (a covariance needs two images), got {self.n_real}")
        _check(self.classifier_steps >= 1, f"{path}.classifier_steps must be >= 1, got {self.classifier_steps}")
        _check(self.classifier_limit is None or self.classifier_limit >= 1,
               f"{path}.classifier_limit must be >= 1 or null, got {self.classifier_limit}")


@dataclass
class SamplingEvalConfig:
    """One-step generation ("onestep" models).

    Attributes:
        n: one-step samples scored by FID.
        agreement_n: noises sampled both in one step and with the multi-step sampler.
        multistep_steps: steps of the reference sampler (None: the model's `sampler.steps`).
        batch_size: samples per forward pass (also the batch of the samples/s timing).
        timing_batches: timed one-step batches (after one warm-up batch).
        grid: samples shown in the report's grid.
        min_agreement_db: floor: one-step vs multi-step agreement must reach this (null: no floor).
        max_fid: floor: FID must not exceed this; "auto" takes the floor of the feature network
            from `fid.floors`; null: no FID floor.
        primary: metric a challenger must beat the champion on.
    """

    n: int = 512
    agreement_n: int = 64
    multistep_steps: int | None = None
    batch_size: int = 128
    timing_batches: int = 3
    grid: int = 64
    min_agreement_db: float | None = 30.0
    max_fid: float | Literal["auto"] | None = "auto"
    primary: Literal["fid", "agreement_db"] = "fid"

    def validate(self, path: str) -> None:
        for name in ("n", "agreement_n", "batch_size", "timing_batches", "grid"):
            _check(getattr(self, name) >= 1, f"{path}.{name} must be >= 1, got {getattr(self, name)}")
        _check(self.n >= 2, f"{path}.n must be >= 2 (FID fits a covariance), got {self.n}")
        _check(self.multistep_steps is None or self.multistep_steps >= 1,
               f"{path}.multistep_steps must be >= 1 or null, got {self.multistep_steps}")
        if self.max_fid != "auto":
            _optional_positive(self.max_fid, f"{path}.max_fid")


@dataclass
class ProjectionEvalConfig:
    """Globally projective models ("projective").

    Attributes:
        n: images per probe set (noise, noisy, masked, out-of-distribution, data).
        sigma: noise level of the denoising probe.
        inpaint_iterations: alternating projections of the inpainting probe.
        ood: the out-of-distribution probe set (`linearizer.projective.inputs`).
        fid_n: projected noises scored by FID.
        grid: images per row of the before/after grid.
        max_idempotency_error: floor: worst relative `||f(f(x)) - f(x)|| / ||f(x)||` over all probes.
        max_fixed_point_error: floor (reconstruction): mean relative `||f(x) - x|| / ||x||` on
            test digits; 0.5 keeps at least the rough shape of a digit (a k = 16 model trained
            for minutes on a CPU reaches ~0.4, an untrained one ~1).
        min_denoise_gain_db: floor: `denoise_psnr - noisy_psnr`, how much projecting a noisy
            digit improves it over returning it unchanged (0: at least as good as doing nothing).
        min_denoise_psnr, min_inpaint_psnr: restoration quality, dB.
        max_fid: FID of projected noise ("auto": the floor of the feature network).
        primary: metric a challenger must beat the champion on.
    """

    n: int = 64
    sigma: float = 0.3
    inpaint_iterations: int = 10
    ood: Literal["digits", "photos", "uniform"] = "photos"
    fid_n: int = 512
    grid: int = 8
    max_idempotency_error: float | None = 1e-4
    max_fixed_point_error: float | None = 0.5
    min_denoise_gain_db: float | None = 0.0
    min_denoise_psnr: float | None = None
    min_inpaint_psnr: float | None = None
    max_fid: float | Literal["auto"] | None = None
    primary: Literal["denoise_psnr", "inpaint_psnr", "fixed_point_error", "fid"] = "denoise_psnr"

    def validate(self, path: str) -> None:
        for name in ("n", "inpaint_iterations", "grid"):
            _check(getattr(self, name) >= 1, f"{path}.{name} must be >= 1, got {getattr(self, name)}")
        _check(self.fid_n >= 2, f"{path}.fid_n must be >= 2, got {self.fid_n}")
        _check(self.sigma > 0, f"{path}.sigma must be > 0, got {self.sigma}")
        for name in ("max_idempotency_error", "max_fixed_point_error"):
            _optional_positive(getattr(self, name), f"{path}.{name}")
        if self.max_fid != "auto":
            _optional_positive(self.max_fid, f"{path}.max_fid")


@dataclass
class StyleEvalConfig:
    """Style-transfer models ("style").

    Attributes:
        pairs: folder of held-out pairs `ROOT/STYLE/{content,styled}/NAME.png`; None makes the
            classical-filter pairs of the held-out photos (`linearizer.style.data`).
        n: held-out content images per style (filter pairs only).
        strip_steps: interpolation strip length (alphas 0, 1/(k-1), ..., 1).
        examples: content images shown per style / strip / composition in the report.
        min_gain_db: floor: every style must beat the identity baseline on held-out content,
            `psnr.<style> - content_psnr.<style>` (the PSNR of returning the content unchanged)
            at least this, dB; the metric `gain_db` is the worst style's.
        min_psnr, min_ssim: mean over styles of the per-style PSNR (dB) / SSIM against targets.
        primary: metric a challenger must beat the champion on.
    """

    pairs: str | None = None
    n: int = 32
    strip_steps: int = 6
    examples: int = 4
    min_gain_db: float | None = 0.0
    min_psnr: float | None = None
    min_ssim: float | None = None
    primary: Literal["psnr", "ssim"] = "psnr"

    def validate(self, path: str) -> None:
        _check(self.n >= 1, f"{path}.n must be >= 1, got {self.n}")
        _check(self.strip_steps >= 2, f"{path}.strip_steps must be >= 2, got {self.strip_steps}")
        _check(self.examples >= 1, f"{path}.examples must be >= 1, got {self.examples}")


@dataclass
class PromotionConfig:
    """Champion / challenger.

    Attributes:
        enabled: decide promotion after a successful evaluation (False: only record metrics).
        champion_alias: the alias a winning version receives.
        min_improvement: how much better than the champion's primary metric a challenger must be
            (absolute, in the metric's unit; 0: strictly better).
        lock_timeout_s: how long to wait for another evaluation's promotion step to finish.
        lock_ttl_s: after this long a held lock counts as abandoned (its holder crashed).
        claim_ttl_s: after this long an unfinished evaluation of a version counts as abandoned
            and the version may be evaluated again.
        max_attempts: a version whose evaluation failed this many times is no longer retried
            (unless forced).
    """

    enabled: bool = True
    champion_alias: str = "champion"
    min_improvement: float = 0.0
    lock_timeout_s: float = 120.0
    lock_ttl_s: float = 60.0
    claim_ttl_s: float = 7200.0
    max_attempts: int = 3

    def validate(self, path: str) -> None:
        _check(bool(_ALIAS.match(self.champion_alias)),
               f"{path}.champion_alias must contain only letters, digits, '_' and '-', got {self.champion_alias!r}")
        _check(self.min_improvement >= 0, f"{path}.min_improvement must be >= 0, got {self.min_improvement}")
        for name in ("lock_timeout_s", "lock_ttl_s", "claim_ttl_s"):
            _check(getattr(self, name) > 0, f"{path}.{name} must be > 0, got {getattr(self, name)}")
        _check(self.max_attempts >= 1, f"{path}.max_attempts must be >= 1, got {self.max_attempts}")


@dataclass
class EvalConfig:
    """A whole evaluation job.

    Attributes:
        evaluation: "auto" picks the evaluation of the model's kind; naming one makes a model
            of another kind an error.
        output_dir: local root; reports go to `<output_dir>/evaluate/<model>-v<version>/`.
        seed: seeds every noise and data draw.
        device: where the model runs ("cpu", "cuda", "cuda:1", ...).
        force: evaluate (and decide) again even if the version was already evaluated, and let a
            version that fails its quality floors be promoted all the same (the override is
            recorded on the version, the run and in the report).
    """

    evaluation: Literal["auto", "sampling", "projection", "style"] = "auto"
    output_dir: str = "runs"
    seed: int = 0
    device: str = "cpu"
    force: bool = False
    mlflow: EvalMlflowConfig = field(default_factory=EvalMlflowConfig)
    ray: RayEvalConfig = field(default_factory=RayEvalConfig)
    fid: FidConfig = field(default_factory=FidConfig)
    sampling: SamplingEvalConfig = field(default_factory=SamplingEvalConfig)
    projection: ProjectionEvalConfig = field(default_factory=ProjectionEvalConfig)
    style: StyleEvalConfig = field(default_factory=StyleEvalConfig)
    promotion: PromotionConfig = field(default_factory=PromotionConfig)

    def validate(self, path: str) -> None:
        _check(bool(self.device), "device must be a torch device string such as 'cpu' or 'cuda'")
        _check(self.promotion.champion_alias != self.mlflow.alias,
               f"promotion.champion_alias and mlflow.alias are both {self.mlflow.alias!r}: the evaluated "
               f"version and the champion need distinct aliases")

    def check_for(self, evaluation: str) -> None:
        """The checks that depend on which evaluation runs (known once the model's kind is).

        Raises:
            ConfigError: the evaluation's primary metric or a floor needs FID while
                `fid.extractor` is "off".
        """
        if self.fid.extractor != "off":
            return
        section = getattr(self, evaluation)
        _check(getattr(section, "primary", None) != "fid",
               f"{evaluation}.primary is 'fid' but fid.extractor is 'off': choose another primary metric "
               f"or an extractor")
        max_fid = getattr(section, "max_fid", None)
        _check(max_fid != "auto",
               f"{evaluation}.max_fid is 'auto' (the FID floor of the feature network) but fid.extractor is 'off': "
               f"choose an extractor, or set {evaluation}.max_fid=null to waive the FID floor")
        _check(max_fid is None,
               f"{evaluation}.max_fid is set but fid.extractor is 'off': nothing to check it against")

    @property
    def report_root(self) -> Path:
        return Path(self.output_dir) / "evaluate"


def load_eval_config(path: str | Path | None = None, overrides: list[str] | None = None,
                     base: dict[str, Any] | None = None) -> EvalConfig:
    """Load and check an evaluation config.

    Args:
        path: YAML or JSON file; None starts from `base` (or the defaults).
        overrides: `dotted.key=value` strings (values parsed as JSON), applied last.
        base: a plain mapping used when `path` is None.

    Returns:
        The validated `EvalConfig`.

    Raises:
        ConfigError: naming the offending key.
    """
    if path is not None and base is not None:
        raise ConfigError("give a config file or a base mapping, not both")
    if path is not None:
        return load_config(EvalConfig, path, overrides)
    cfg = from_dict(EvalConfig, base or {})
    return apply_overrides(cfg, overrides) if overrides else cfg
