"""One-step sampling evaluation of "onestep" models.

Measures, through the kind's predict modes only (what a served model does):

- agreement: the same noises sampled in one step (`x = g_x^{-1}(B g_y(x0))`) and with the
  multi-step sampler that B collapses, as the PSNR of the pooled MSE
  (`linearizer.onestep.evaluation.agreement`, which `linearizer onestep evaluate` and the figures bench
  use too). An exact collapse agrees to float round-off; a stale B does not;
- FID of one-step samples against the MNIST test split, naming the feature network;
- throughput: one-step and multi-step samples per second, and their ratio;
- a sample grid and a one-step / multi-step comparison grid for the report.

Example:
    >>> result = run(model, model_cfg, cfg)
    >>> result.metrics["agreement_db"], result.info["fid_extractor"]
"""

from __future__ import annotations

import time

import torch
from torch import Tensor, nn

from linearizer.config import ModelConfig
from linearizer.kinds import get_kind
from linearizer.onestep.evaluation import agreement, in_batches
from linearizer.viz import make_grid

from .common import EvalResult, EvaluationError, fid_floor, fid_info, fid_vs_mnist, generator, make_checks
from .config import EvalConfig

KIND = "onestep"
HIGHER_IS_BETTER = {"fid": False, "agreement_db": True}


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def samples_per_second(sample, noise: Tensor, repeats: int) -> float:
    """Throughput of `sample(noise)` over `repeats` timed calls after one warm-up call."""
    sample(noise)
    _synchronize(noise.device)
    start = time.perf_counter()
    for _ in range(repeats):
        sample(noise)
    _synchronize(noise.device)
    return repeats * noise.shape[0] / (time.perf_counter() - start)


@torch.no_grad()
def run(model: nn.Module, model_cfg: ModelConfig, cfg: EvalConfig) -> EvalResult:
    """Evaluate one-step sampling (see the module docstring).

    Args:
        model: a loaded "onestep" model with its collapsed B built.
        model_cfg: its config (image shape, sampler).
        cfg: the evaluation config (`sampling`, `fid`, `seed`, `device`).

    Returns:
        Metrics `agreement_db`, `fid` (unless FID is off), `samples_per_s`,
        `multistep_samples_per_s`, `speedup`; the floors `sampling.min_agreement_db` and
        `sampling.max_fid` (see `fid_floor`); pictures "samples" and "one_vs_multistep".

    Raises:
        EvaluationError: the model has no collapsed B.
    """
    s, kind = cfg.sampling, get_kind(KIND)
    if not getattr(model, "has_B", False):
        raise EvaluationError("this onestep model has no collapsed operator B: it was registered before the kind's "
                              "finalize ran, so it cannot sample in one step")
    device = torch.device(cfg.device)
    model.to(device)
    steps = s.multistep_steps or model_cfg.sampler.steps
    shape = tuple(model_cfg.image_shape)

    def noise(n: int, offset: int) -> Tensor:
        return torch.randn(n, *shape, generator=generator(cfg.seed, offset)).to(device)

    def one_step(x0: Tensor) -> Tensor:
        return kind.predict(model, x0, {"mode": "sample"})

    def multi_step(x0: Tensor) -> Tensor:
        return kind.predict(model, x0, {"mode": "sample_multistep", "steps": steps})

    x0 = noise(s.agreement_n, 0)
    measured = agreement(model, x0, steps, s.batch_size)
    one, multi = measured.one, measured.many
    metrics = {"agreement_db": measured.db}

    metrics["samples_per_s"] = samples_per_second(one_step, noise(s.batch_size, 1), s.timing_batches)
    metrics["multistep_samples_per_s"] = samples_per_second(multi_step, x0[: min(8, s.agreement_n)], 1)
    metrics["speedup"] = metrics["samples_per_s"] / metrics["multistep_samples_per_s"]

    samples = in_batches(one_step, noise(s.n, 2), s.batch_size)
    info = {"multistep": f"{model_cfg.sampler.method}, {steps} steps", "n_samples": str(s.n),
            "n_agreement": str(s.agreement_n), "device": str(device)}
    scored = fid_vs_mnist(cfg, samples)
    if scored is not None:
        metrics["fid"] = scored.value
        info.update(fid_info(scored))

    primary = s.primary
    comparable = f"sampling/{primary}"
    if primary == "fid":
        comparable += f"/{info['fid_extractor']}/n{s.n}/real{info['fid_n_real']}"
    pair = torch.cat([one[:8], multi[:8]])
    return EvalResult(
        evaluation="sampling", metrics=metrics,
        checks=(make_checks(metrics, [("agreement_db", ">=", s.min_agreement_db)], "sampling")
                + fid_floor(cfg, s.max_fid, scored, "sampling.max_fid")),
        primary=primary, higher_is_better=HIGHER_IS_BETTER[primary], comparable=comparable,
        images={"samples": make_grid(samples[: s.grid].cpu()),
                "one_vs_multistep": make_grid(pair.cpu(), nrow=pair.shape[0] // 2)},
        info=info,
        notes=["Top row of `one_vs_multistep`: one step through B; bottom row: the same noises through the "
               f"{steps}-step sampler B collapses."],
    )
