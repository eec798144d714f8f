"""Validation inside the training loop: a held-out loss and, optionally, the FID of samples.

Both numbers are computed on every rank at every report (so they can steer ASHA) and must be
*honest* and *cheap*:

- `val_loss`: the kind's own training objective on the first `heldout_samples` images of the
  held-out shard set, which training never reads, with the noise of the objective drawn from a
  generator re-seeded at every evaluation. The same images and the same noise every time, so the
  number moves only when the weights do: two reports, or two trials, compare without sampling
  noise. It costs `heldout_samples / batch_size` forward passes (no backward).
- `val_fid`: FID between `fid_samples` samples of the model (`kind.samples`, fixed noise) and
  the first `fid_samples` held-out images, with the offline MNIST-classifier features
  (`linearizer.metrics`). For the one-step kind this is the one-step sampler's quality: the
  cached `B` is the exact collapse of the multi-step sampler that `samples` runs before
  `finalize`, so both give the same images up to round-off. Small sets bias FID upwards; the bias
  depends on the set size only, so values within a sweep compare. Needs 1x32x32 images.

Ranks split the held-out images and the samples evenly and combine them with collectives, so
every rank runs the same number of forward passes (which ZeRO-3 requires).

The training worker calls it from its report step when its loop config carries "validation":

    >>> validator = Validator.from_loop_config(config, job, kind, rank, world, device)   # or None
    >>> metrics.update(validator.evaluate(engine.module, precision=trainer_autocast))
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from linearizer.config import ConfigError
from linearizer.metrics.classifier import DEFAULT_STEPS as CLASSIFIER_STEPS

if TYPE_CHECKING:
    import torch
    from torch import Tensor, nn

    from linearizer.kinds import ModelKind

    from ..config import JobConfig

#: loop-config key under which the driver hands workers their `ValidationConfig` (as a dict).
LOOP_KEY = "validation"


@dataclass
class ValidationConfig:
    """What each evaluation computes.

    Attributes:
        heldout_samples: first N images of the held-out set scored by the loss (divisible by
            the number of workers).
        batch_size: images per forward pass (per rank).
        fid_samples: generated images scored by FID (0: no FID); also the number of held-out
            images of the reference statistics. Divisible by the number of workers.
        classifier_steps: training budget of the offline FID classifier if it is not cached yet
            (the sweep driver trains it once, before any trial starts).
        cache_dir: classifier cache root (None: $LINEARIZER_CACHE, else ~/.cache/linearizer);
            on a cluster, a directory every node sees.
        seed: seed of the objective's noise and of the sample noise.
    """

    heldout_samples: int = 256
    batch_size: int = 64
    fid_samples: int = 0
    classifier_steps: int = CLASSIFIER_STEPS
    cache_dir: str | None = None
    seed: int = 1234

    def validate(self, path: str) -> None:
        if self.heldout_samples < 1 or self.batch_size < 1:
            raise ConfigError(f"{path}.heldout_samples and {path}.batch_size must be >= 1, got "
                              f"{self.heldout_samples} and {self.batch_size}")
        if self.fid_samples != 0 and self.fid_samples < 2:
            raise ConfigError(f"{path}.fid_samples must be 0 (off) or >= 2 (a covariance needs two), "
                              f"got {self.fid_samples}")
        if self.classifier_steps < 1:
            raise ConfigError(f"{path}.classifier_steps must be >= 1, got {self.classifier_steps}")

    def check_job(self, job: JobConfig, path: str = "validation") -> None:
        """Raise `ConfigError` when this validation cannot run for `job`."""
        world = job.distributed.num_workers
        for name in ("heldout_samples", "fid_samples"):
            value = getattr(self, name)
            if value % world:
                raise ConfigError(f"{path}.{name}={value} is not divisible by job.distributed.num_workers={world}: "
                                  f"every rank scores the same number of images")
        limit = job.data.heldout_limit
        wanted = max(self.heldout_samples, self.fid_samples)
        if limit is not None and wanted > limit:
            raise ConfigError(f"validation needs {wanted} held-out images, but job.data.heldout_limit={limit}")
        if self.fid_samples and tuple(job.model.image_shape) != (1, 32, 32):
            raise ConfigError(f"{path}.fid_samples > 0 needs model.image_shape [1, 32, 32] (the offline FID "
                              f"classifier's input), got {list(job.model.image_shape)}; set fid_samples: 0")

    def extractor(self) -> Any:
        """The FID feature network (trains and caches the classifier on first use)."""
        from linearizer.metrics import get_extractor

        return get_extractor("mnist-classifier", cache_dir=self.cache_dir, steps=self.classifier_steps,
                             progress=False)


def heldout_images(job: JobConfig, n: int) -> dict[str, Tensor]:
    """The first `n` samples of the job's held-out shard set, in shard order, as tensors.

    Raises:
        ValueError: the set holds fewer than `n` samples.
    """
    from ..shards.format import load_manifest
    from ..shards.reader import make_webdataset, shard_urls

    directory, prefix = job.data.shards, job.data.heldout_prefix
    manifest = load_manifest(directory, prefix)
    if manifest.count < n:
        raise ValueError(f"held-out set {prefix!r} in {directory} has {manifest.count} samples, validation needs {n}")
    dataset = make_webdataset(shard_urls(directory, prefix), batch_size=n, shuffle=False, schema=manifest.schema)
    batch = next(iter(dataset))
    return {k: v for k, v in batch.items() if not k.startswith("__") and hasattr(v, "shape")}


class Validator:
    """One rank's share of the validation data and the code that scores a model on it.

    Args:
        cfg: what to compute.
        job: the trial's job (held-out shards, model kind).
        kind: the model kind (its `loss` and `samples` hooks are used).
        rank, world: this rank and the number of ranks.
        device: where the model lives.
    """

    def __init__(self, cfg: ValidationConfig, job: JobConfig, kind: ModelKind, rank: int, world: int,
                 device: torch.device):
        cfg.check_job(job)
        self.cfg, self.kind, self.rank, self.world, self.device = cfg, kind, rank, world, device
        data = heldout_images(job, max(cfg.heldout_samples, cfg.fid_samples))
        # Rank r keeps images r, r + world, ...: equal shares, every image scored once.
        self.batch = {k: v[:cfg.heldout_samples][rank::world] for k, v in data.items()}
        self.extractor, self.real_stats = None, None
        if cfg.fid_samples:
            from linearizer.metrics import feature_stats

            self.extractor = cfg.extractor()
            self.real_stats = feature_stats(self.extractor, data["image"][:cfg.fid_samples].float())

    @classmethod
    def from_loop_config(cls, config: dict[str, Any], job: JobConfig, kind: ModelKind, rank: int, world: int,
                         device: torch.device) -> Validator | None:
        """The validator the driver asked for in the worker's loop config, or None."""
        from linearizer.config import from_dict

        data = config.get(LOOP_KEY)
        return None if data is None else cls(from_dict(ValidationConfig, data), job, kind, rank, world, device)

    def evaluate(self, model: nn.Module, precision: AbstractContextManager | None = None) -> dict[str, float]:
        """Score `model` (a collective: every rank calls it at the same step).

        Args:
            model: the trained module (the engine's `module`); put back in train mode after.
            precision: the context the training forward runs in (e.g. the worker's bf16
                autocast); inputs are passed as float32, as in training.

        Returns:
            {"val_loss": ...} and, with FID on, {"val_fid": ...}: the same values on every rank.
        """
        import torch

        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                with precision or nullcontext():
                    out = {"val_loss": self._loss(model)}
                if self.extractor is not None:
                    out["val_fid"] = self._fid(model, precision)
        finally:
            model.train(was_training)
        return out

    def _generator(self, salt: int) -> torch.Generator:
        """A fresh generator per (seed, rank, salt): the same noise at every evaluation."""
        import torch

        return torch.Generator().manual_seed(self.cfg.seed * 1_000_003 + self.rank * 1009 + salt + 1)

    def _loss(self, model: nn.Module) -> float:
        import torch

        n = next(iter(self.batch.values())).shape[0]
        total = torch.zeros(2, dtype=torch.float64)  # [sum of loss * images, images]
        for i, start in enumerate(range(0, n, self.cfg.batch_size)):
            batch = {k: v[start:start + self.cfg.batch_size].to(self.device) for k, v in self.batch.items()}
            loss, _ = self.kind.loss(model, batch, self._generator(i))
            size = next(iter(batch.values())).shape[0]
            total += torch.tensor([float(loss) * size, size], dtype=torch.float64)
        _all_reduce(total)
        return float(total[0] / total[1])

    def _fid(self, model: nn.Module, precision: AbstractContextManager | None) -> float:
        import torch

        from linearizer.metrics import frechet_distance

        with precision or nullcontext():
            samples = self.kind.samples(model, self.cfg.fid_samples // self.world, self._generator(-1))
        # The feature network runs in float32 whatever the model's precision: FID values compare.
        feats = self.extractor(samples.float().cpu().clamp(0, 1)).double()
        everyone = _all_gather(feats)
        mu = everyone.mean(0)
        sigma = torch.cov(everyone.T)
        return frechet_distance(self.real_stats.mu, self.real_stats.sigma, mu.numpy(), sigma.numpy())


def _all_reduce(t: Tensor) -> None:
    import torch.distributed as dist

    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t)


def _all_gather(t: Tensor) -> Tensor:
    import torch
    import torch.distributed as dist

    if not dist.is_initialized() or dist.get_world_size() == 1:
        return t
    parts = [torch.empty_like(t) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, t.contiguous())
    return torch.cat(parts)
