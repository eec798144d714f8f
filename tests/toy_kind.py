"""A tiny model kind ("toy") and tiny job configs for the pipeline tests.

`ToyKind`: a linear autoencoder on flattened images with a sigmoid output. It keeps one data-dependent
buffer (the mean image, set by the first training-mode forward) so that the pipeline's buffer
broadcast and the export of buffers are exercised as they are for ActNorm.

Registered on import: jobs name it with `imports: ["tests.toy_kind"]` and `model.kind: toy`.

`tiny_job`: a 2-worker job on 8x8 digits shards, a few steps, for the toy kind or the real
"onestep" kind at its smallest (`ONESTEP_MODEL`).
"""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from linearizer.config import ModelConfig
from linearizer.kinds import register_kind


class ToyAutoencoder(nn.Module):
    """`x -> sigmoid(W_dec W_enc (x - mean))`, with `mean` the first training batch's mean."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.image_shape = tuple(cfg.image_shape)
        d = math.prod(self.image_shape)
        self.hidden = cfg.flow.hidden
        self.encoder = nn.Linear(d, self.hidden)
        self.decoder = nn.Linear(self.hidden, d)
        self.register_buffer("mean", torch.zeros(d))
        self.register_buffer("initialized", torch.zeros((), dtype=torch.bool))

    def decode(self, z: Tensor) -> Tensor:
        return torch.sigmoid(self.decoder(z)).view(z.shape[0], *self.image_shape)

    def forward(self, x: Tensor) -> Tensor:
        flat = x.flatten(1)
        if self.training and not bool(self.initialized):
            with torch.no_grad():
                self.mean.copy_(flat.mean(0))
                self.initialized.fill_(True)
        return self.decode(self.encoder(flat - self.mean))


class ToyKind:
    """Hooks of `ToyAutoencoder`; modes "sample" (noise -> images) and "reconstruct"."""

    name = "toy"
    modes = ("sample", "reconstruct")
    batch_keys = ("image",)
    param_types = {"scale": float}

    def build(self, cfg: ModelConfig) -> ToyAutoencoder:
        return ToyAutoencoder(cfg)

    def loss(self, model: ToyAutoencoder, batch: dict[str, Tensor], generator: torch.Generator | None = None
             ) -> tuple[Tensor, dict[str, float]]:
        x = batch["image"]
        noise = torch.randn(x.shape, generator=generator, dtype=x.dtype)
        recon = model(x + 0.05 * noise)
        loss = (recon - x).pow(2).mean()
        return loss, {"mse": float(loss.detach())}

    @torch.no_grad()
    def samples(self, model: ToyAutoencoder, n: int, generator: torch.Generator | None = None) -> Tensor:
        z = torch.randn(n, model.hidden, generator=generator).to(model.decoder.weight.dtype)
        return model.decode(z)

    def finalize(self, model: ToyAutoencoder) -> None:
        """Nothing to precompute for this model."""

    @torch.no_grad()
    def predict(self, model: ToyAutoencoder, inputs: Tensor, params: dict[str, Any]) -> Tensor:
        mode = params.get("mode")
        if mode == "sample":
            z = inputs.flatten(1)[:, :model.hidden] * float(params.get("scale", 1.0))
            return model.decode(z)
        if mode == "reconstruct":
            return model(inputs)
        raise ValueError(f"params['mode'] must be one of {list(self.modes)}, got {mode!r}")


KIND = register_kind(ToyKind())

#: the toy kind on 8x8 images.
TOY_MODEL = {"kind": "toy", "image_shape": [1, 8, 8], "flow": {"hidden": 8}}
#: the real one-step Linearizer, as small as it gets: depth 1, hidden 8, rank 2, 8 RK4 steps.
ONESTEP_MODEL = {
    "kind": "onestep", "image_shape": [1, 8, 8],
    "flow": {"depth": 1, "hidden": 8},
    "operator": {"rank": 2, "time_embed_dim": 8, "hidden": 16},
    "sampler": {"steps": 8},
}


def tiny_job(tmp: Path, name: str, shards: Path, tracking_uri: str, artifact_location: str,
             model: dict[str, Any] = TOY_MODEL, overrides: list[str] | None = None, **sections: Any):
    """A 2-worker, 4-step job on the 8x8 digits shards in `shards` (written on first use).

    `sections` update the base config section by section, e.g. `train={"steps": 6}`;
    `overrides` are `key=value` strings applied last.
    """
    from pipelines.config import load_job_config

    base: dict[str, Any] = {
        "name": name,
        "output_dir": str(tmp),
        "imports": ["tests.toy_kind"],
        "data": {"shards": str(shards), "source": "digits", "heldout_split": None, "limit": 256, "maxcount": 64},
        "model": copy.deepcopy(model),
        "train": {"steps": 4, "batch_size": 16, "lr": 1e-3, "log_every": 1, "checkpoint_every": 2},
        "distributed": {"num_workers": 2, "cpus_per_worker": 0.5, "zero_stage": 1},
        "mlflow": {"tracking_uri": tracking_uri, "artifact_location": artifact_location, "experiment": name,
                   "registered_model": None, "sample_grid": 4},
    }
    for key, value in sections.items():
        if isinstance(value, dict):
            base.setdefault(key, {}).update(value)
        else:
            base[key] = value
    return load_job_config(base=base, overrides=overrides)
