"""The one-step model's evaluation, shared by `linearizer onestep evaluate`, the evaluation pipeline
(`pipelines.evaluate.sampling`) and the figures bench (`bench/onestep_figures.py`).

Each measures the same things the same way, through the kind's predict modes (what a served
model does):

- agreement: the same noises sampled in one step through B and with the multi-step sampler B
  collapses, as the PSNR of the pooled MSE (`agreement_db`). An exact collapse agrees to float
  round-off; a stale B (weights changed after `finalize`) does not;
- the reference's un-nested RK4 collapse on the same noises, for comparison (RK4 only);
- inversion: images -> noise -> images on held-out images, in dB.

Example:
    >>> a = agreement(model, x0, batch_size=256)
    >>> a.db, a.steps                                          # e.g. 138.0, 100
    >>> inversion_db(model, test_images)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from ..metrics import agreement_db
from .collapse import reference_collapse
from .kind import KIND
from .model import OneStepLinearizer


def in_batches(fn: Callable[[Tensor], Tensor], x: Tensor, batch_size: int, desc: str | None = None) -> Tensor:
    """`fn` over `x` in chunks of `batch_size` rows, concatenated (with a progress bar when `desc` is set)."""
    chunks = range(0, x.shape[0], batch_size)
    if desc is not None:
        from tqdm.auto import tqdm

        chunks = tqdm(chunks, desc=desc, unit="batch")
    with torch.no_grad():
        return torch.cat([fn(x[i:i + batch_size]) for i in chunks])


def require_B(model: OneStepLinearizer, what: str) -> None:
    """Raise a ValueError naming `what` when the model has no collapsed B to evaluate."""
    if not model.has_B:
        raise ValueError(f"{what} needs the collapsed operator B, which this model has not built (the 'onestep' "
                         f"kind's finalize builds it: `linearizer onestep train` does, or call model.build_B())")


def collapse_summary(model: OneStepLinearizer) -> dict[str, object]:
    """What the cached B collapses and its form: `{"method", "steps", "t_end", "form"}`."""
    require_B(model, "collapse_summary")
    info = model.B_info
    form = "dense" if model.B_W.numel() else f"identity + rank {model.B_P.shape[1]}"
    return {"method": info.method, "steps": info.steps, "t_end": info.t_end, "form": form}


@dataclass(frozen=True)
class Agreement:
    """One-step against multi-step samples of the same noises.

    Attributes:
        one: one-step samples `[N, C, H, W]` in [0, 1].
        many: multi-step samples of the same noises, in [0, 1].
        steps: the multi-step sampler's step count.
        db: `agreement_db(one, many)`.
    """

    one: Tensor
    many: Tensor
    steps: int
    db: float


def agreement(model: OneStepLinearizer, x0: Tensor, steps: int | None = None, batch_size: int = 256,
              progress: bool = False) -> Agreement:
    """Sample `x0` in one step and with the multi-step sampler of B's method; compare.

    Args:
        model: a "onestep" model with B built.
        x0: noise `[N, C, H, W]`.
        steps: the multi-step reference; None: the steps B collapses (at B's end time). Another
            count integrates to that count's default end time.
        batch_size: rows per forward pass.
        progress: show progress bars.

    Returns:
        The samples and their agreement in dB.

    Raises:
        ValueError: no B, or noise the kind's "sample" mode refuses.
    """
    require_B(model, "the one-step agreement")
    info = model.B_info
    steps = info.steps if steps is None else steps
    params = {"mode": "sample_multistep", "method": info.method, "steps": steps}
    if steps == info.steps:
        params["t_end"] = info.t_end
    one = in_batches(lambda b: KIND.predict(model, b, {"mode": "sample"}), x0, batch_size,
                     "one-step samples" if progress else None)
    many = in_batches(lambda b: KIND.predict(model, b, params), x0, batch_size,
                      f"{steps}-step samples" if progress else None)
    return Agreement(one, many, steps, agreement_db(one, many))


def reference_samples(model: OneStepLinearizer, x0: Tensor, batch_size: int = 256, progress: bool = False) -> Tensor:
    """One-step samples of `x0` through the reference's un-nested RK4 collapse of B's sampler
    (unclamped), to set beside the exact collapse's."""
    require_B(model, "the reference collapse")
    info = model.B_info
    ref = reference_collapse(model, info.steps, info.t_end).to(model.B_b.dtype)
    return in_batches(lambda b: model.decode_data(model.unflat(ref.apply(model.flat(model.encode_noise(b))))),
                      x0, batch_size, "reference collapse" if progress else None)


def inversion_db(model: OneStepLinearizer, images: Tensor, batch_size: int = 256, solve: str = "inverse",
                 progress: bool = False) -> float:
    """images -> noise -> images through B^-1 (or B^+) and B, as `agreement_db` against the images.

    Raises:
        ValueError: no B, or images the kind's "reconstruct" mode refuses (not in [0, 1], ...).
    """
    require_B(model, "inversion")
    back = in_batches(lambda b: KIND.predict(model, b, {"mode": "reconstruct", "solve": solve}), images, batch_size,
                      "inversion -> reconstruction" if progress else None)
    return agreement_db(back, images)
