"""A bare single-process training loop, generic over model kinds, and the recipe pieces it shares
with the distributed pipelines.

`fit` is the single-process path and the baseline the distributed pipelines are measured
against: AdamW, gradient-norm clipping, an optional warmup + cosine learning-rate schedule
(`lr_factor`), an optional exponential moving average of the weights (`WeightEMA`), a progress
bar, and a hard stop on a non-finite loss. It knows nothing about a model family; the kind's
`loss` hook (`linearizer.kinds`) does, exactly as in the Ray Train pipelines, whose workers use
the same `lr_factor` and `WeightEMA`.

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


def lr_factor(step: int, cfg: TrainConfig) -> float:
    """The multiplier of `cfg.lr` for optimiser step `step` (1-based) under `cfg`'s schedule.

    Linear warmup over `cfg.warmup_steps` steps (step k of the warmup uses `k / warmup_steps`),
    then `cfg.lr_schedule`: "constant" stays at 1, "cosine" decays from 1 to `cfg.min_lr_ratio`
    at step `cfg.steps`.

    Args:
        step: the step about to be taken, 1 to `cfg.steps` (later steps keep the final factor).
        cfg: the training config.

    Returns:
        A factor in `[min_lr_ratio, 1]` (or in `(0, 1]` during the warmup).

    Raises:
        ValueError: `step < 1`.
    """
    if step < 1:
        raise ValueError(f"lr_factor takes a 1-based step, got {step}")
    if step <= cfg.warmup_steps:
        return step / cfg.warmup_steps
    if cfg.lr_schedule == "constant":
        return 1.0
    decay_steps = max(cfg.steps - cfg.warmup_steps, 1)
    progress = min((step - cfg.warmup_steps) / decay_steps, 1.0)
    return cfg.min_lr_ratio + (1.0 - cfg.min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


class WeightEMA:
    """An exponential moving average of a model's floating-point parameters and buffers.

    Sampling from averaged weights is the standard cheap quality gain of generative training:
    the average smooths the last steps' noise that a decaying learning rate only partly removes.
    Non-floating buffers (e.g. ActNorm's `initialized` flags) and empty buffers (a one-step
    model's unbuilt `B`) are copied, not averaged. The decay warms up as
    `min(decay, (1 + n) / (10 + n))` after `n` updates, so a short run is not dominated by its
    first weights.

    Args:
        model: the model whose weights are averaged (read at every `update`).
        decay: the final decay, in [0, 1).

    Example:
        >>> ema = WeightEMA(model, decay=0.999)
        >>> for step in ...: optimizer.step(); ema.update()
        >>> ema.copy_to(model)                # sample or export with the averaged weights
    """

    def __init__(self, model: nn.Module, decay: float):
        if not 0 <= decay < 1:
            raise ValueError(f"EMA decay must lie in [0, 1), got {decay}")
        self.decay, self.updates = float(decay), 0
        self.shadow = {k: _shadow_copy(v) for k, v in model.state_dict().items()}

    def current_decay(self) -> float:
        """The decay the next `update` applies."""
        return min(self.decay, (1 + self.updates) / (10 + self.updates))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Fold the model's current weights into the average.

        Raises:
            ValueError: the model's state has keys or shapes the average was not built with.
        """
        decay = self.current_decay()
        state = model.state_dict()
        if state.keys() != self.shadow.keys():
            raise ValueError(f"WeightEMA.update got a model with other keys: "
                             f"{sorted(state.keys() ^ self.shadow.keys())[:5]}")
        for key, value in state.items():
            avg = self.shadow[key]
            if value.shape != avg.shape or not value.is_floating_point():
                self.shadow[key] = _shadow_copy(value)
            else:
                avg.lerp_(value.detach().to(avg.dtype), 1.0 - decay)
        self.updates += 1

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        """Load the averaged weights into `model` (the same architecture)."""
        model.load_state_dict({k: v.to(model.state_dict()[k].dtype) for k, v in self.shadow.items()})

    def state_dict(self) -> dict[str, Tensor]:
        """The averaged weights, keyed like `model.state_dict()` (for checkpoints and export)."""
        return dict(self.shadow)

    def load_state_dict(self, state: dict[str, Tensor], updates: int) -> None:
        """Resume an average saved by `state_dict` after `updates` updates.

        Raises:
            ValueError: `state` has other keys than the average.
        """
        if state.keys() != self.shadow.keys():
            raise ValueError(f"WeightEMA.load_state_dict got other keys: {sorted(state.keys() ^ self.shadow.keys())[:5]}")
        self.shadow = {k: _shadow_copy(v) for k, v in state.items()}
        self.updates = int(updates)


def _shadow_copy(value: Tensor) -> Tensor:
    """A detached copy to average into; half-precision weights are averaged in float32, since a
    bfloat16 average cannot move by the small steps `1 - decay` makes."""
    value = value.detach().clone()
    return value.float() if value.dtype in (torch.float16, torch.bfloat16) else value


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
        cfg: steps, lr and its schedule, weight decay, grad clipping, EMA, seed.
        on_step: called after every step with that step's record.
        progress: show a tqdm progress bar.

    Returns:
        One record per step: `step`, `loss`, the kind's loss terms, `grad_norm`, `lr` (the lr
        that step used). With `cfg.ema_decay > 0` the model ends holding the averaged weights.

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
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda done: lr_factor(done + 1, cfg))
    ema: WeightEMA | None = None
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
            lr = optimizer.param_groups[0]["lr"]
            optimizer.step()
            schedule.step()
            if cfg.ema_decay > 0:
                # built after the first step: data-dependent init has run by then
                ema = WeightEMA(model, cfg.ema_decay) if ema is None else ema
                ema.update(model)
            record = {"step": step, **terms, "loss": float(loss.detach()), "grad_norm": grad_norm, "lr": lr}
            history.append(record)
            if on_step is not None:
                on_step(record)
            if cfg.log_every and step % cfg.log_every == 0:
                bar.set_postfix(loss=f"{record['loss']:.4g}")
            bar.update(1)
    finally:
        bar.close()
    if ema is not None:
        ema.copy_to(model)
    model.eval()
    return history
