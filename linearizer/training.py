"""A bare single-process training loop, generic over model kinds.

`fit` is the single-process path and the baseline the distributed pipelines are measured
against: AdamW, gradient-norm clipping, a progress bar, and a hard stop on a non-finite loss.
It knows nothing about a model family; the kind's `loss` hook (`linearizer.kinds`) does, exactly
as in the Ray Train pipelines.

Example:
    >>> kind = get_kind("onestep")
    >>> model = kind.build(cfg)
    >>> history = fit(kind, model, TensorBatches({"image": images}, batch_size=64), TrainConfig(steps=500))
    >>> kind.finalize(model)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from .config import TrainConfig
from .kinds import ModelKind, get_kind


class TensorBatches:
    """Shuffled mini-batches of in-memory tensors, re-iterable (one pass per epoch).

    Args:
        tensors: batch key -> `[N, ...]` tensor (e.g. `{"image": images, "label": labels}`).
        batch_size: samples per batch; the last, smaller batch of an epoch is dropped so every
            step sees the same batch size.
        seed: seed of the shuffling; epoch e uses `seed + e`.

    Example:
        >>> for batch in TensorBatches({"image": x}, batch_size=16):
        ...     batch["image"].shape
        torch.Size([16, 1, 32, 32])
    """

    def __init__(self, tensors: dict[str, Tensor], batch_size: int, seed: int = 0):
        sizes = {k: v.shape[0] for k, v in tensors.items()}
        if not tensors or len(set(sizes.values())) != 1:
            raise ValueError(f"tensors must be a non-empty dict of tensors with one common length, got {sizes}")
        self.n = next(iter(sizes.values()))
        if not 1 <= batch_size <= self.n:
            raise ValueError(f"batch_size must lie in [1, {self.n}] (the number of samples), got {batch_size}")
        self.tensors, self.batch_size, self.seed, self.epoch = tensors, batch_size, seed, 0

    def __len__(self) -> int:
        return self.n // self.batch_size

    def __iter__(self) -> Iterator[dict[str, Tensor]]:
        order = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed + self.epoch))
        self.epoch += 1
        for i in range(len(self)):
            idx = order[i * self.batch_size:(i + 1) * self.batch_size]
            yield {k: v[idx] for k, v in self.tensors.items()}


def _batches_forever(batches: Iterable[dict[str, Tensor]]) -> Iterator[dict[str, Tensor]]:
    """Cycle through `batches` epoch after epoch; a one-shot iterator simply runs out."""
    epoch = 0
    while True:
        seen = 0
        for batch in batches:
            seen += 1
            yield batch
        if seen == 0:
            if epoch == 0:
                raise ValueError("fit got no batches: the batch iterable is empty")
            return
        epoch += 1


def _model_device(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def fit(kind: ModelKind | str, model: nn.Module, batches: Iterable[dict[str, Tensor]], cfg: TrainConfig,
        on_step: Callable[[dict[str, float]], None] | None = None, progress: bool = True) -> list[dict[str, float]]:
    """Train `model` for `cfg.steps` optimiser steps on `batches` with its kind's loss.

    Args:
        kind: the model kind (or its registered name); `kind.loss(model, batch, generator)`
            gives the loss.
        model: the model, on the device its batches should go to.
        batches: an iterable of dict batches (`kind.batch_keys`); re-iterated for more epochs
            (a one-shot iterator ends training early when it runs out).
        cfg: steps, lr, weight decay, grad clipping, seed.
        on_step: called after every step with that step's record.
        progress: show a tqdm progress bar.

    Returns:
        One record per step: `step`, `loss`, the kind's loss terms, `grad_norm`, `lr`.

    Raises:
        FloatingPointError: the loss or the gradient norm is NaN or infinite (the message names
            the step and the loss terms); the weights are not updated by that step.
        ValueError: a batch lacks a key the kind needs, or there are no batches.
    """
    kind = get_kind(kind) if isinstance(kind, str) else kind
    device = _model_device(model)
    generator = torch.Generator(device=device).manual_seed(cfg.seed)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    history: list[dict[str, float]] = []
    model.train()
    bar = tqdm(total=cfg.steps, disable=not progress, desc=f"train {kind.name}", unit="step")
    try:
        stream = _batches_forever(batches)
        for step in range(1, cfg.steps + 1):
            batch = next(stream, None)
            if batch is None:
                break
            missing = [k for k in kind.batch_keys if k not in batch]
            if missing:
                raise ValueError(f"batch lacks keys {missing} that kind {kind.name!r} needs "
                                 f"(batch_keys {list(kind.batch_keys)}), got keys {sorted(batch)}")
            batch = {k: v.to(device) if isinstance(v, Tensor) else v for k, v in batch.items()}
            loss, terms = kind.loss(model, batch, generator)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"non-finite loss {float(loss.detach())} at step {step}; terms: {terms}")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            max_norm = cfg.grad_clip if cfg.grad_clip > 0 else math.inf
            grad_norm = float(torch.nn.utils.clip_grad_norm_(params, max_norm))
            if not math.isfinite(grad_norm):
                raise FloatingPointError(f"non-finite gradient norm {grad_norm} at step {step}; terms: {terms}")
            optimizer.step()
            record = {"step": step, **terms, "loss": float(loss.detach()), "grad_norm": grad_norm,
                      "lr": optimizer.param_groups[0]["lr"]}
            history.append(record)
            if on_step is not None:
                on_step(record)
            if cfg.log_every and step % cfg.log_every == 0:
                bar.set_postfix(loss=f"{record['loss']:.4g}")
            bar.update(1)
    finally:
        bar.close()
    model.eval()
    return history
