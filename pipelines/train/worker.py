"""The training loop every Ray Train worker runs: DeepSpeed on a model kind, fed from shards.

Per rank: build the model through its kind, wrap it in a DeepSpeed engine (the process group
Ray Train set up is reused: gloo on CPU, NCCL on GPU), read `batch_size / world` samples per step
from the WebDataset shards, and step. The schedule depends only on the step counter, so every
rank reaches every collective (loss check, checkpoint, report) the same number of times; a rank
that skipped one would leave the others waiting forever.

Checkpoints: every `train.checkpoint_every` steps and at the end, each rank writes its part of a
DeepSpeed checkpoint into a temporary directory and hands it to `ray.train.report`, which merges
the parts into one directory in storage. A restarted or resubmitted run resumes from the latest
one (`ray.train.get_checkpoint()`): engine state, optimizer partitions and the step counter.
A checkpoint counts once Ray Train's controller has collected every rank's report (it polls
every few seconds); a crash before that falls back to the checkpoint before.

Rank 0 alone writes to MLflow, through `tracking.RankZero`. DeepSpeed keeps weights, gradients
and optimizer state in fp32; `precision=bf16` is autocast around the kind's hooks.

The recipe of `train` (`linearizer.config.TrainConfig`) is the single-process loop's: the lr of
step k is `lr * lr_factor(k)` (warmup, cosine), set from the step counter, so a resumed run
continues the schedule; with `train.ema_decay > 0` rank 0 keeps an exponential moving average
of the weights (`linearizer.training.WeightEMA`), saves it into every checkpoint as
`ema_weights.safetensors` (restored on resume), and the export uses it.
"""

from __future__ import annotations

import importlib
import itertools
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from linearizer.kinds import ModelKind, get_kind
from linearizer.training import WeightEMA, lr_factor

from ..config import JobConfig, config_hash, job_from_dict, public_dict
from ..tracking import RankZero
from .validation import Validator

#: written by rank 0 into every checkpoint: what a resuming run must agree with.
STATE_FILE = "linearizer_state.json"
#: written by rank 0 into every checkpoint when `train.ema_decay > 0`: the averaged weights.
EMA_FILE = "ema_weights.safetensors"


def _seed(*parts: int) -> int:
    """One 63-bit seed from several integers (distinct tuples give distinct streams)."""
    h = 1469598103934665603
    for p in parts:
        h = ((h ^ (p & 0xFFFFFFFFFFFFFFFF)) * 1099511628211) & 0x7FFFFFFFFFFFFFFF
    return h


def _to(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """Move the tensors of a batch to `device` (images stay float32; see `Trainer._precision`)."""
    return {k: v.to(device) if isinstance(v, Tensor) else v for k, v in batch.items()}


def check_finite(loss: Tensor, terms: dict[str, float], step: int, last_checkpoint: str | None) -> None:
    """Raise on every rank if the loss is NaN or infinite on any rank.

    The flags are summed across ranks so that all ranks raise together: a lone rank raising
    would leave the others blocked in the next collective.

    Raises:
        FloatingPointError: naming the step, the ranks, the loss terms and the checkpoint that
            stays the latest good one.
    """
    world = dist.get_world_size() if dist.is_initialized() else 1
    rank = dist.get_rank() if dist.is_initialized() else 0
    bad = torch.zeros(world)
    bad[rank] = float(not bool(torch.isfinite(loss.detach()).all()))
    if world > 1:
        dist.all_reduce(bad)
    if bool(bad.any()):
        ranks = bad.nonzero().flatten().tolist()
        raise FloatingPointError(
            f"non-finite loss at step {step} on rank(s) {ranks} (this rank: loss={float(loss):.6g}, terms={terms}); "
            f"the latest good checkpoint is {last_checkpoint or 'none (no checkpoint yet)'}; "
            f"lower train.lr, keep train.grad_clip > 0 or check the data")


def mean_across_ranks(values: dict[str, float]) -> dict[str, float]:
    """Average scalar logs over ranks (a collective: every rank must call it at the same step)."""
    if not dist.is_initialized() or dist.get_world_size() == 1 or not values:
        return dict(values)
    keys = sorted(values)
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64)
    dist.all_reduce(t)
    return dict(zip(keys, (t / dist.get_world_size()).tolist()))


def reset_peak_rss() -> None:
    """Start a new peak-resident-memory window for this process (Linux: `/proc/self/clear_refs`).

    Where that is not available the window is the process's lifetime (see `peak_rss_mib`).
    """
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def peak_rss_mib() -> float:
    """Peak resident memory of this process in MiB: since `reset_peak_rss` on Linux (`VmHWM`),
    else since the process started (`getrusage`: KiB on Linux, bytes on macOS)."""
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def max_across_ranks(value: float) -> float:
    """The largest of every rank's `value` (a collective: every rank must call it at the same step)."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return value
    t = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t.item())


def broadcast_state(model: nn.Module) -> None:
    """Copy rank 0's parameters and buffers to every rank.

    Data-dependent initialisation (ActNorm) gives each rank statistics of its own batch;
    DeepSpeed broadcasts parameters when it wraps the model, but not buffers.
    """
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return
    with torch.no_grad():
        for tensor in itertools.chain(model.parameters(), model.buffers()):
            if tensor.numel():
                dist.broadcast(tensor.data, src=0)


def gather_placement(rank: int) -> list[dict[str, Any]]:
    """Where every rank runs (node id, address, host, pid), in rank order; a collective."""
    from ..runtime import node_placement

    mine = {"rank": rank, **node_placement()}
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return [mine]
    everyone: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, mine)
    return everyone


def check_resumable(state: dict[str, Any], job: JobConfig, where: str) -> None:
    """A ZeRO checkpoint only loads at the world size and stage that wrote it."""
    want = {"world_size": job.distributed.num_workers, "zero_stage": job.distributed.zero_stage,
            "kind": job.model.kind}
    have = {k: state.get(k) for k in want}
    if have != want:
        raise ValueError(f"checkpoint {where} was written with {have}, this run has {want}: a ZeRO checkpoint "
                         f"cannot be resumed at another world size or stage; use a new run name (or convert it "
                         f"with DeepSpeed's universal checkpoint tools)")


class Trainer:
    """One rank's training state: the engine, the step counter and the side-effect helpers.

    Args:
        config: the driver's `train_loop_config` (see `pipelines.train.loop_config`).
    """

    def __init__(self, config: dict[str, Any]):
        import deepspeed  # ~4 s: paid by workers only
        import ray.train

        logging.getLogger("DeepSpeed").setLevel(logging.WARNING)
        self.job = job_from_dict(config["job"])
        for module in self.job.imports:
            importlib.import_module(module)
        self.kind: ModelKind = get_kind(self.job.model.kind)
        ctx = ray.train.get_context()
        self.rank, self.world = ctx.get_world_rank(), ctx.get_world_size()
        self.device = (torch.device("cuda", ctx.get_local_rank()) if self.job.distributed.use_gpu
                       else torch.device("cpu"))
        self.log = RankZero(self.rank, config.get("tracking_uri"), config.get("run_id"))
        self.fault_marker = config.get("fault_marker")
        self.last_checkpoint: str | None = None
        t = self.job.train
        self.micro_batch = t.batch_size // self.world

        checkpoint = ray.train.get_checkpoint()
        torch.manual_seed(t.seed)  # the same initial weights on every rank
        model = self.kind.build(self.job.model).to(self.device)
        self.start_step = 0
        self.batches = None
        if checkpoint is None:
            self.batches = self._batches(0)
            first = next(self.batches)
            self._initialize(model, first)
            self.batches = itertools.chain([first], self.batches)
        optimizer = torch.optim.AdamW(model.parameters(), lr=t.lr, weight_decay=t.weight_decay)
        self.engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, config=config["deepspeed"])
        self.validator = Validator.from_loop_config(config, self.job, self.kind, self.rank, self.world, self.device)
        if t.ema_decay > 0 and self.job.distributed.zero_stage == 3:
            raise ValueError("train.ema_decay needs distributed.zero_stage <= 2: ZeRO-3 partitions the weights, "
                             "so no rank holds the whole model to average")
        # rank 0 alone averages: only it writes the average into checkpoints, and no collective is involved
        self.ema = WeightEMA(self.engine.module, t.ema_decay) if t.ema_decay > 0 and self.rank == 0 else None
        if checkpoint is not None:
            with checkpoint.as_directory() as directory:
                self.start_step = self._restore(directory)
            self.last_checkpoint = checkpoint.path
            self.batches = self._batches(self.start_step)

    # ----- set-up -----

    def _batches(self, start_step: int):
        from ..shards.reader import iter_batches

        remaining = self.job.train.steps - start_step
        if remaining <= 0:
            return iter(())
        # A resumed run draws a fresh stream seeded by where it resumes: deterministic, no replay.
        return iter_batches(self.job.data.shards, self.job.data.train_prefix, self.micro_batch, self.rank, self.world,
                            seed=_seed(self.job.train.seed, start_step) % (2**31), steps=remaining,
                            max_skipped=self.job.data.max_skipped)

    def _initialize(self, model: nn.Module, batch: dict[str, Any]) -> None:
        """Run the kind's loss once without gradients so data-dependent layers initialise, then
        make every rank hold rank 0's result."""
        generator = torch.Generator().manual_seed(_seed(self.job.train.seed, self.rank, 7))
        model.train()
        with torch.no_grad():
            self.kind.loss(model, _to(batch, self.device), generator)
        broadcast_state(model)

    def _restore(self, directory: str) -> int:
        state_path = Path(directory) / STATE_FILE
        if not state_path.is_file():
            raise ValueError(f"checkpoint {directory} has no {STATE_FILE}: not written by this pipeline")
        check_resumable(json.loads(state_path.read_text()), self.job, directory)
        path, client_state = self.engine.load_checkpoint(directory, load_optimizer_states=True,
                                                         load_lr_scheduler_states=False)
        if path is None:
            raise ValueError(f"DeepSpeed found no checkpoint to load in {directory}")
        step = int(client_state["step"])
        if self.ema is None:
            return step
        # a checkpoint without an average (EMA switched on for the resumed run) starts it here
        self.ema = WeightEMA(self.engine.module, self.job.train.ema_decay)
        ema_path = Path(directory) / EMA_FILE
        if ema_path.is_file():
            from safetensors import safe_open
            from safetensors.torch import load_file

            with safe_open(str(ema_path), framework="pt") as f:
                updates = int((f.metadata() or {}).get("updates", step))
            self.ema.load_state_dict(load_file(str(ema_path)), updates)
        return step

    def _precision(self) -> torch.autocast:
        """bf16 runs: torch autocast over fp32 weights. Weights, gradients and optimizer state stay
        fp32 in DeepSpeed (its own bf16 mode is off, see `pipelines.config`: the invertible 1x1
        convolutions' triangular solves need fp32); autocast runs matmuls and convolutions in
        bf16, while numerically delicate ops (solves, logs) stay in fp32."""
        return torch.autocast(self.device.type, dtype=torch.bfloat16,
                              enabled=self.job.distributed.precision == "bf16")

    # ----- side effects at fixed steps (the same on every rank) -----

    def _save(self, step: int, metrics: dict[str, Any]) -> None:
        import ray.train

        if self.validator is not None:  # every report carries validation metrics (they steer Tune)
            scores = self.validator.evaluate(self.engine.module, self._precision())
            self.log.log_metrics(scores, step)
            metrics = {**metrics, **scores}
        with tempfile.TemporaryDirectory(prefix="ds-ckpt-") as tmp:
            self.engine.save_checkpoint(tmp, tag=f"step{step:08d}", client_state={"step": step})
            if self.rank == 0:
                state = {"step": step, "world_size": self.world, "zero_stage": self.job.distributed.zero_stage,
                         "precision": self.job.distributed.precision, "kind": self.job.model.kind,
                         "config_hash": config_hash(self.job)}
                (Path(tmp) / STATE_FILE).write_text(json.dumps(state, indent=2) + "\n")
                if self.ema is not None:
                    from safetensors.torch import save_file

                    save_file({k: v.contiguous() for k, v in self.ema.state_dict().items()},
                              str(Path(tmp) / EMA_FILE), metadata={"updates": str(self.ema.updates)})
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp),
                             checkpoint_dir_name=f"checkpoint_{step:08d}")
        self.last_checkpoint = f"checkpoint_{step:08d}"

    def _samples(self, step: int) -> None:
        """Log a grid of samples (same noise every time, so grids show training progress)."""
        n = self.job.mlflow.sample_grid
        if n <= 0 or self.log.run_id is None:
            return
        if self.rank != 0 and self.job.distributed.zero_stage < 3:
            return  # under ZeRO-3 every rank must take part in the parameter gathers of a forward
        module = self.engine.module
        module.eval()
        with self._precision():
            images = self.kind.samples(module, n, torch.Generator().manual_seed(self.job.train.seed))
        module.train()
        self.log.log_images(images.float(), key="samples", step=step)

    def _maybe_die(self, step: int) -> None:
        """Fault injection: the configured rank exits hard at the configured step, once."""
        inject = self.job.distributed.fault_injection
        if inject.rank != self.rank or inject.step != step or not self.fault_marker:
            return
        marker = Path(self.fault_marker)
        if marker.exists():
            return
        import ray.train

        # A reported checkpoint counts only once the controller has collected every rank's
        # report (it polls every few seconds). Dying earlier would make the restart point depend
        # on timing; a drill should die after the last checkpoint is committed.
        ray.train.get_all_reported_checkpoints(consistency_mode=ray.train.CheckpointConsistencyMode.COMMITTED,
                                               timeout_s=120)
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text(json.dumps({"rank": self.rank, "step": step, "pid": os.getpid()}) + "\n")
        os._exit(1)  # no cleanup, no exception: what a crashed or preempted worker looks like

    # ----- the loop -----

    def run(self) -> None:
        t, job = self.job.train, self.job
        placement = gather_placement(self.rank)
        nodes = len({p["node_id"] for p in placement})
        self.log.log_params(public_dict(job))  # RankZero: a no-op on every other rank
        self.log.set_tags({"linearizer.kind": job.model.kind, "linearizer.world_size": self.world,
                           "linearizer.zero_stage": job.distributed.zero_stage, "linearizer.nodes": nodes})
        self.log.log_dict({"workers": placement}, "placement.json")
        common = {"world_size": self.world, "start_step": self.start_step, "nodes": nodes,
                  "placement": json.dumps(placement)}
        self.engine.train()
        reset_peak_rss()
        window_start, window_steps = time.perf_counter(), 0
        metrics: dict[str, Any] = {"step": self.start_step, **common}
        skipped = 0  # damaged samples this rank skipped since it started (data.max_skipped)
        for step in range(self.start_step + 1, t.steps + 1):
            self._maybe_die(step)
            batch = _to(next(self.batches), self.device)
            skipped += batch.pop("__skipped__", 0)
            generator = torch.Generator().manual_seed(_seed(t.seed, self.rank, step))
            with self._precision():
                loss, terms = self.kind.loss(self.engine.module, batch, generator)
            check_finite(loss, terms, step, self.last_checkpoint)
            self.engine.backward(loss)
            for group in self.engine.optimizer.param_groups:
                group["lr"] = t.lr * lr_factor(step, t)
            self.engine.step()
            if self.ema is not None:
                self.ema.update(self.engine.module)
            window_steps += 1
            last = step == t.steps
            if (t.log_every and step % t.log_every == 0) or last:
                logs = {"loss": float(loss.detach()), **terms}
                if job.data.max_skipped:
                    logs["data_skipped"] = float(skipped)
                logs = mean_across_ranks(logs)
                if "data_skipped" in logs:  # a sum over ranks, not a mean
                    logs["data_skipped"] = round(logs["data_skipped"] * self.world)
                elapsed = time.perf_counter() - window_start
                logs["samples_per_s"] = window_steps * t.batch_size / max(elapsed, 1e-9)
                grad_norm = self.engine.get_global_grad_norm()
                if grad_norm is not None:
                    logs["grad_norm"] = float(grad_norm)
                logs["lr"] = t.lr * lr_factor(step, t)
                # the largest worker's peak since its loop began (the engine built, a checkpoint loaded):
                # what the ZeRO stage and offload change, without the set-up's full copy of the model
                logs["peak_rss_mib"] = max_across_ranks(peak_rss_mib())
                self.log.log_metrics(logs, step)
                metrics = {"step": step, **logs, **common}
                window_start, window_steps = time.perf_counter(), 0
            if (t.sample_every and step % t.sample_every == 0) or last:
                self._samples(step)
            if (t.checkpoint_every and step % t.checkpoint_every == 0) or last:
                self._save(step, {**metrics, "step": step})


def worker_loop(config: dict[str, Any]) -> None:
    """Ray Train's per-worker function (`TorchTrainer(worker_loop, train_loop_config=...)`)."""
    Trainer(config).run()
