"""The job config of the training pipeline: one typed tree, validated once, dumped with every run.

`JobConfig` nests the library's `ModelConfig` and `TrainConfig` (`linearizer.config`) and adds
what a distributed job needs: where the shards are, how many Ray workers, which ZeRO stage, where
MLflow is. Loading is strict (unknown keys, wrong types and impossible combinations raise
`ConfigError` naming the dotted key); `load_job_config` also reads the DeepSpeed JSON so that a
missing or contradictory DeepSpeed file fails before any cluster is touched.

Example:
    >>> cfg = load_job_config("jobs/onestep.yaml", ["train.steps=200", "distributed.zero_stage=2"])
    >>> cfg.run_dir, cfg.resolved_storage_path()
    (PosixPath('runs/onestep-mnist'), '/abs/runs/ray_results')
    >>> ds = deepspeed_settings(cfg)          # the dict deepspeed.initialize receives
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from linearizer.config import (ConfigError, ModelConfig, TrainConfig, apply_overrides, from_dict, load_config,
                               to_dict)

#: the repository root: default DeepSpeed configs live in <root>/infra/deepspeed.
REPO_ROOT = Path(__file__).resolve().parent.parent
#: run names become directory names, Ray run names and MLflow tags.
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
#: DeepSpeed keys the pipeline sets from `train` / `distributed` (one source of truth each).
OWNED_DEEPSPEED_KEYS = ("train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps",
                        "gradient_clipping", "bf16", "fp16")

#: query parameters whose values are masked (matched as substrings of the lower-cased key).
_SECRET_WORDS = ("password", "passwd", "pwd", "token", "secret", "key", "signature", "credential", "sig")
MASK = "***"


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


@dataclass
class DataConfig:
    """Where the training shards are and how to build them when they are missing.

    Attributes:
        shards: directory of WebDataset shards with their `manifest.json`.
        source: dataset written to `shards` when the set is missing ("mnist", "digits"), or
            "none" to require existing shards.
        split: split of `source` used for training.
        prefix: shard set name; None means "<source>-<split>".
        limit: samples written on auto-build (None: the whole split).
        heldout_split: split kept for evaluation (None: no held-out set).
        heldout_limit: samples of the held-out split written on auto-build.
        maxcount: samples per shard on auto-build.
        verify: check existing shards against their manifest before training ("shallow":
            sizes and checksums; "deep": decode every sample too; "off").
        max_skipped: damaged samples (corrupt, misshapen or incomplete; a truncated shard
            counts the samples it lost) each training worker may skip before the job stops.
            0, the default, stops at the first. Skips are logged with shard and key and reported
            as the `data_skipped` metric (all ranks, cumulative). A damaged sample is counted
            each time its shard is drawn.
    """

    shards: str = "data/shards"
    source: Literal["mnist", "digits", "none"] = "mnist"
    split: str = "train"
    prefix: str | None = None
    limit: int | None = None
    heldout_split: str | None = "test"
    heldout_limit: int | None = 1000
    maxcount: int = 1000
    verify: Literal["off", "shallow", "deep"] = "shallow"
    max_skipped: int = 0

    def validate(self, path: str) -> None:
        _check(bool(self.shards), f"{path}.shards must name a directory, got {self.shards!r}")
        _check(self.source != "none" or self.prefix is not None,
               f"{path}.prefix must be set when {path}.source is 'none' (nothing to derive it from)")
        _check(self.limit is None or self.limit >= 1, f"{path}.limit must be >= 1 or null, got {self.limit}")
        _check(self.heldout_limit is None or self.heldout_limit >= 1,
               f"{path}.heldout_limit must be >= 1 or null, got {self.heldout_limit}")
        _check(self.maxcount >= 1, f"{path}.maxcount must be >= 1, got {self.maxcount}")
        _check(self.max_skipped >= 0, f"{path}.max_skipped must be >= 0, got {self.max_skipped}")
        _check(self.source != "digits" or (self.split == "train" and self.heldout_split is None),
               f"{path}: the digits source has one split, 'train': set split=train and heldout_split=null, "
               f"got split={self.split!r}, heldout_split={self.heldout_split!r}")

    @property
    def train_prefix(self) -> str:
        return self.prefix or f"{self.source}-{self.split}"

    @property
    def heldout_prefix(self) -> str | None:
        return None if self.heldout_split is None else f"{self.source}-{self.heldout_split}"


@dataclass
class FaultInjection:
    """Kill one worker once, to exercise recovery (tests and drills only).

    Attributes:
        rank: world rank that calls `os._exit(1)`; None disables injection.
        step: the step (1-based) at whose start it dies, on the first attempt only (a marker file
            in the run directory records that it happened).
    """

    rank: int | None = None
    step: int = 1

    def validate(self, path: str) -> None:
        _check(self.rank is None or self.rank >= 0, f"{path}.rank must be >= 0 or null, got {self.rank}")
        _check(self.step >= 1, f"{path}.step must be >= 1, got {self.step}")


@dataclass
class DistributedConfig:
    """Ray Train workers and DeepSpeed.

    Attributes:
        num_workers: data-parallel workers (ranks).
        cpus_per_worker: CPUs Ray reserves per worker (0.5 lets 2 workers share 2 cores with the
            driver and Ray's own actors).
        use_gpu: one GPU per worker (NCCL) instead of CPU (gloo).
        placement_strategy: Ray placement group strategy ("SPREAD" puts workers on distinct
            nodes when it can, "STRICT_SPREAD" insists).
        zero_stage: DeepSpeed ZeRO stage 0-3.
        deepspeed_config: DeepSpeed JSON; None means infra/deepspeed/zero{zero_stage}.json.
        precision: "fp32", or "bf16": matmuls and convolutions under torch autocast in bf16,
            weights, gradients and optimizer state in fp32 (DeepSpeed's own bf16 mode stores
            the weights in bf16, which the invertible 1x1 convolutions cannot solve with).
        max_failures: worker-group restarts Ray Train attempts, each from the latest checkpoint.
        keep_checkpoints: checkpoints kept in storage (oldest deleted first).
        fault_injection: kill a rank once (see `FaultInjection`).
    """

    num_workers: int = 2
    cpus_per_worker: float = 0.5
    use_gpu: bool = False
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = "PACK"
    zero_stage: int = 1
    deepspeed_config: str | None = None
    precision: Literal["fp32", "bf16"] = "fp32"
    max_failures: int = 0
    keep_checkpoints: int = 2
    fault_injection: FaultInjection = field(default_factory=FaultInjection)

    def validate(self, path: str) -> None:
        _check(self.num_workers >= 1, f"{path}.num_workers must be >= 1, got {self.num_workers}")
        _check(self.cpus_per_worker > 0, f"{path}.cpus_per_worker must be > 0, got {self.cpus_per_worker}")
        _check(0 <= self.zero_stage <= 3, f"{path}.zero_stage must be 0, 1, 2 or 3, got {self.zero_stage}")
        _check(self.max_failures >= -1,
               f"{path}.max_failures must be >= -1 (-1: retry forever), got {self.max_failures}")
        _check(self.keep_checkpoints >= 1, f"{path}.keep_checkpoints must be >= 1, got {self.keep_checkpoints}")
        rank = self.fault_injection.rank
        _check(rank is None or rank < self.num_workers,
               f"{path}.fault_injection.rank must be < num_workers={self.num_workers}, got {rank}")
        _check(rank is None or self.max_failures != 0,
               f"{path}.fault_injection kills rank {rank}, but max_failures=0 lets nothing restart it: "
               f"set {path}.max_failures >= 1")

    def resolved_deepspeed_config(self) -> Path:
        """The DeepSpeed JSON path (relative paths are taken from the working directory)."""
        if self.deepspeed_config is None:
            return REPO_ROOT / "infra" / "deepspeed" / f"zero{self.zero_stage}.json"
        return Path(self.deepspeed_config)


@dataclass
class MlflowConfig:
    """Tracking and registry.

    Attributes:
        tracking_uri: MLflow tracking URI; None means $MLFLOW_TRACKING_URI, else a local SQLite
            store `sqlite:///<output_dir>/mlflow.db` with artifacts in `<output_dir>/mlartifacts`.
        artifact_location: artifact root of a newly created experiment (None: the local default
            above, or the server's default for a remote tracking URI).
        experiment: experiment name.
        registered_model: registered model name; null skips registration.
        alias: alias set on the new version.
        sample_grid: samples per grid logged during training (0 disables grids).
    """

    tracking_uri: str | None = None
    artifact_location: str | None = None
    experiment: str = "linearizer"
    registered_model: str | None = "linearizer-onestep"
    alias: str = "challenger"
    sample_grid: int = 16

    def validate(self, path: str) -> None:
        _check(bool(self.experiment), f"{path}.experiment must be a non-empty string")
        _check(self.registered_model is None or bool(self.registered_model),
               f"{path}.registered_model must be a non-empty string or null")
        _check(bool(re.match(r"^[A-Za-z0-9_-]+$", self.alias)),
               f"{path}.alias must contain only letters, digits, '_' and '-', got {self.alias!r}")
        _check(self.sample_grid >= 0, f"{path}.sample_grid must be >= 0, got {self.sample_grid}")


@dataclass
class JobConfig:
    """A whole training job.

    Attributes:
        name: run name: the Ray Train run, the run directory `<output_dir>/<name>` and the MLflow
            run. Resubmitting a job with the same name (and storage) resumes it.
        output_dir: local root of run directories (and of the default MLflow store).
        storage_path: Ray Train storage (checkpoints): a local path, NFS mount or `s3://` URI;
            None means `<output_dir>/ray_results`. Must be shared by all nodes of a cluster.
        imports: modules imported on the driver and on every worker before the model kind is
            looked up (a module that registers an extra kind with `linearizer.kinds.register_kind`).
    """

    name: str = "onestep-mnist"
    output_dir: str = "runs"
    storage_path: str | None = None
    imports: list[str] = field(default_factory=list)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)
    mlflow: MlflowConfig = field(default_factory=MlflowConfig)

    def validate(self, path: str) -> None:
        _check(bool(_NAME.match(self.name)),
               f"name must start with a letter or digit and contain only letters, digits, '_', '.' and '-' "
               f"(it names directories and runs), got {self.name!r}")
        world = self.distributed.num_workers
        _check(self.train.batch_size % world == 0,
               f"train.batch_size={self.train.batch_size} is not divisible by distributed.num_workers={world}: "
               f"every worker takes batch_size / num_workers samples per step")
        inject = self.distributed.fault_injection
        _check(inject.rank is None or inject.step <= self.train.steps,
               f"distributed.fault_injection.step={inject.step} is after the last step (train.steps="
               f"{self.train.steps}): the worker would never be killed")
        if self.data.source in ("mnist", "digits"):
            c, h, w = self.model.image_shape
            _check(c == 1 and h == w,
                   f"model.image_shape must be (1, S, S) for the grey, square {self.data.source} source, "
                   f"got {tuple(self.model.image_shape)}")

    @property
    def run_dir(self) -> Path:
        """Local directory of this run's config, exported model and report."""
        return Path(self.output_dir) / self.name

    def resolved_storage_path(self) -> str:
        """Ray Train storage: the configured path or URI, else `<output_dir>/ray_results` (absolute)."""
        if self.storage_path is not None:
            return self.storage_path if "://" in self.storage_path else str(Path(self.storage_path).resolve())
        return str((Path(self.output_dir) / "ray_results").resolve())


def deepspeed_settings(cfg: JobConfig) -> dict[str, Any]:
    """The DeepSpeed config dict for `cfg`: the JSON file with the pipeline-owned keys filled in.

    The file holds what only DeepSpeed knows (ZeRO options); batch sizes and clipping come from
    `train`, so they have a single source of truth. DeepSpeed's bf16/fp16 weight modes stay off:
    `distributed.precision=bf16` is autocast over fp32 weights (see `DistributedConfig`).

    Raises:
        ConfigError: the file is missing or not JSON, its ZeRO stage contradicts
            `distributed.zero_stage`, or it declares an optimizer (the pipeline passes a torch
            AdamW built from `train.lr` / `train.weight_decay`, which avoids a JIT-compiled one).
    """
    path = cfg.distributed.resolved_deepspeed_config()
    where = "distributed.deepspeed_config"
    if not path.is_file():
        raise ConfigError(f"{where}: DeepSpeed config file not found: {path} (zero_stage={cfg.distributed.zero_stage})")
    try:
        ds = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(f"{where}: {path} is not valid JSON: {e}") from e
    if not isinstance(ds, dict):
        raise ConfigError(f"{where}: {path} must hold a JSON object, got {type(ds).__name__}")
    ds = copy.deepcopy(ds)
    stage = ds.setdefault("zero_optimization", {}).setdefault("stage", cfg.distributed.zero_stage)
    if stage != cfg.distributed.zero_stage:
        raise ConfigError(f"{where}: {path} sets zero_optimization.stage={stage}, but distributed.zero_stage="
                          f"{cfg.distributed.zero_stage}; make them agree")
    if any(ds.get(key, {}).get("enabled") for key in ("bf16", "fp16")):
        raise ConfigError(f"{where}: {path} enables DeepSpeed bf16/fp16 weights; set distributed.precision=bf16 "
                          f"instead (bf16 autocast over fp32 weights: the Linearizer's triangular solves need fp32)")
    if "optimizer" in ds or "scheduler" in ds:
        raise ConfigError(f"{where}: {path} declares an optimizer/scheduler; remove it: the pipeline builds torch "
                          f"AdamW from train.lr and train.weight_decay")
    world = cfg.distributed.num_workers
    ds.update({
        "train_batch_size": cfg.train.batch_size,
        "train_micro_batch_size_per_gpu": cfg.train.batch_size // world,
        "gradient_accumulation_steps": 1,
        "gradient_clipping": cfg.train.grad_clip,
        # Weights, gradients and optimizer state stay fp32 in DeepSpeed; precision=bf16 is torch
        # autocast in the worker (see pipelines.train.worker.Trainer._precision).
        "bf16": {"enabled": False},
        "fp16": {"enabled": False},
    })
    return ds


def load_job_config(path: str | Path | None = None, overrides: list[str] | None = None,
                    base: dict[str, Any] | None = None) -> JobConfig:
    """Load and fully check a job config.

    Args:
        path: a YAML or JSON file; None starts from `base` (or the defaults).
        overrides: `dotted.key=value` strings applied last (values parsed as JSON).
        base: a plain mapping used when `path` is None (e.g. a job's embedded defaults).

    Returns:
        The validated config; its DeepSpeed file has been read and checked too.

    Raises:
        ConfigError: naming the offending key.
    """
    if path is not None and base is not None:
        raise ConfigError("give a config file or embedded defaults, not both")
    if path is not None:
        cfg = load_config(JobConfig, path, overrides)
    else:
        cfg = from_dict(JobConfig, base or {})
        cfg = apply_overrides(cfg, overrides) if overrides else cfg
    deepspeed_settings(cfg)
    return cfg


def job_from_dict(data: dict[str, Any]) -> JobConfig:
    """Rebuild a `JobConfig` from `to_dict` output (on workers: no file checks, which would look
    at paths of the worker's node)."""
    return from_dict(JobConfig, data)


# --------------------------------------------------------------------------------------------
# Redaction
# --------------------------------------------------------------------------------------------


def redact_uri(uri: str) -> str:
    """`uri` with its password (or bare token user) and secret query values replaced by `***`.

    Example:
        >>> redact_uri("postgresql://mlflow:hunter2@db:5432/mlflow")
        'postgresql://mlflow:***@db:5432/mlflow'
        >>> redact_uri("s3://bucket/runs?X-Amz-Signature=abc&region=eu")
        's3://bucket/runs?X-Amz-Signature=***&region=eu'
    """
    if "://" not in uri:
        return uri
    parts = urlsplit(uri)
    if "@" not in parts.netloc and not any(w in parts.query.lower() for w in _SECRET_WORDS):
        return uri  # nothing to mask; also keeps "sqlite:////abs/path" intact (urlunsplit would not)
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, host = netloc.rsplit("@", 1)
        user = userinfo.split(":", 1)[0] if ":" in userinfo else ""
        # "user:password@" keeps the user; a lone "token@" is itself the secret.
        netloc = f"{user}:{MASK}@{host}" if user else f"{MASK}@{host}"
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        query = urlencode([(k, MASK if any(w in k.lower() for w in _SECRET_WORDS) else v) for k, v in pairs],
                          safe="*")
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def redact(obj: Any) -> Any:
    """A copy of a JSON-like structure with every URI string passed through `redact_uri`."""
    if isinstance(obj, dict):
        return {k: redact(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [redact(v) for v in obj]
    if isinstance(obj, str):
        return redact_uri(obj)
    return obj



def public_dict(cfg: JobConfig) -> dict[str, Any]:
    """The resolved config as JSON-ready data with credentials in URIs masked (what is dumped,
    logged and hashed)."""
    return redact(to_dict(cfg))


def dump_job_config(cfg: JobConfig, path: str | Path) -> Path:
    """Write the resolved, redacted config as JSON (the record of what a run used)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(public_dict(cfg), indent=2, sort_keys=True) + "\n")
    return path


def config_hash(cfg: JobConfig) -> str:
    """A short, stable digest of the dumped config: sha256 of its canonical JSON, 16 hex digits."""
    text = json.dumps(public_dict(cfg), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]
