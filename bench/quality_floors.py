"""Where the default quality floors come from: reference image sets and reference models measured
exactly as the evaluations measure versions.

One-step FID floor. FIDs of reference image sets that span "real digits" to "noise", in the
features of the evaluation's default offline classifier.

Promotion refuses a first champion whose FID is above the floor of its feature network
(`fid.floors` of the evaluation config). The floor must let recognisable digits through and stop
blobs and noise; this bench measures, with exactly the evaluation's settings (the classifier
budget of `FidConfig`, `fid.n_real` test digits, `sampling.n` samples), the FID of:

- held-out real digits (the validation split: what a perfect model scores at this n);
- real digits blurred (Gaussian, sigma 1 and 2 px) or with added noise: degraded but readable;
- samples of one Gaussian fitted to the training digits (full covariance): digit-shaped blobs
  that are mostly not readable digits;
- the mean digit repeated, uniform noise, clamped Gaussian noise;
- an untrained one-step model of the main job's architecture (what a failed run draws).

A grid of each set (a row each) shows where the floor falls by eye.

Projective floors. The projection evaluation (`pipelines.evaluate.projection`, FID off, the
defaults of `projection.*` with n = 64) of reference projective models: a projector fitted to
noise (what an untrained model has) and projectors onto the top-k principal directions of 512
digits' codes, a classical linear model, for k = 8 ... 64.

Run:
    python -m bench.quality_floors --json docs/results/quality_floors.json --grid docs/img/fid_floors.png
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from linearizer.config import ModelConfig, from_dict
from linearizer.data.mnist import load_mnist
from linearizer.kinds import get_kind
from linearizer.metrics import feature_stats, fid, get_extractor
from linearizer.viz import save_grid
from pipelines.evaluate import load_eval_config
from pipelines.evaluate.config import FidConfig, SamplingEvalConfig

from .common import base_parser, machine_line


def blur(x: Tensor, sigma: float) -> Tensor:
    """Separable Gaussian blur with a kernel of +-3 sigma."""
    r = max(1, int(3 * sigma))
    k = torch.exp(-torch.arange(-r, r + 1, dtype=x.dtype) ** 2 / (2 * sigma**2))
    k = k / k.sum()
    x = F.conv2d(F.pad(x, (r, r, 0, 0), mode="replicate"), k.view(1, 1, 1, -1))
    return F.conv2d(F.pad(x, (0, 0, r, r), mode="replicate"), k.view(1, 1, -1, 1))


def gaussian_model(train: Tensor, n: int, g: torch.Generator) -> Tensor:
    """Samples of the Gaussian with the training digits' mean and full covariance."""
    flat = train.flatten(1).double()
    mu = flat.mean(0)
    cov = torch.cov(flat.T) + 1e-6 * torch.eye(flat.shape[1], dtype=flat.dtype)
    z = torch.randn(n, flat.shape[1], generator=g, dtype=flat.dtype)
    return (mu + z @ torch.linalg.cholesky(cov).T).float().view(n, *train.shape[1:]).clamp(0, 1)


def untrained_onestep(n: int, seed: int) -> Tensor:
    """One-step samples of the main job's architecture with its initial weights."""
    from pipelines.main import EMBEDDED

    kind = get_kind("onestep")
    cfg = from_dict(ModelConfig, EMBEDDED["model"])
    torch.manual_seed(seed)
    model = kind.build(cfg)
    model.initialize(load_mnist("train", limit=256)[0])
    kind.finalize(model)
    with torch.no_grad():
        return kind.predict(model, torch.randn(n, *cfg.image_shape), {"mode": "sample"}).clamp(0, 1)


def reference_sets(n: int, seed: int) -> dict[str, Callable[[], Tensor]]:
    g = torch.Generator().manual_seed(seed)
    train = load_mnist("train", limit=10000)[0]
    digits = load_mnist("val", limit=n)[0]
    return {
        "real digits (val split)": lambda: digits,
        "real, blurred sigma 1 px": lambda: blur(digits, 1.0),
        "real + noise sigma 0.2": lambda: (digits + 0.2 * torch.randn(digits.shape, generator=g)).clamp(0, 1),
        "real, blurred sigma 2 px": lambda: blur(digits, 2.0),
        "Gaussian fit of the digits": lambda: gaussian_model(train, n, g),
        "mean digit, repeated": lambda: train.mean(0, keepdim=True).expand(n, -1, -1, -1).contiguous(),
        "untrained one-step model": lambda: untrained_onestep(n, seed),
        "uniform noise": lambda: torch.rand(digits.shape, generator=g),
        "Gaussian noise 0.5 + 0.25 N": lambda: (0.5 + 0.25 * torch.randn(digits.shape, generator=g)).clamp(0, 1),
    }


def projective_references(seed: int) -> list[dict[str, float | str]]:
    """The projection evaluation's metrics of a noise-fitted projector and of PCA projectors."""
    from linearizer.projective.defaults import projective_config
    from pipelines.evaluate import projection

    cfg = load_eval_config(None, ["fid.extractor=off", "ray.enabled=false", f"seed={seed}"])
    digits = load_mnist("train", limit=512)[0]
    rows = []
    for label, k, data in [("projector fitted to noise, k = 4", 4, torch.rand(8, 1, 32, 32)),
                           *[(f"PCA of digit codes, k = {k}", k, digits) for k in (8, 16, 32, 64)]]:
        model_cfg = projective_config(rank=k, depth=1, hidden=4)
        torch.manual_seed(seed)
        model = get_kind("projective").build(model_cfg)
        model.initialize(data)
        result = projection.run(model, model_cfg, cfg)
        row = {"model": label, **{m: result.metrics[m] for m in ("fixed_point_error", "denoise_psnr", "noisy_psnr",
                                                                  "denoise_gain_db", "idempotency_max")},
               "passes_default_floors": result.passed}
        rows.append(row)
        print(f"{row['fixed_point_error']:8.3f} {row['denoise_gain_db']:+7.2f} dB  {'pass' if result.passed else 'FAIL'}"
              f"  {label}", flush=True)
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    parser.add_argument("--grid", type=Path, default=None, help="write a grid of every set here (a row each)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    fid_cfg, n = FidConfig(), SamplingEvalConfig().n
    extractor = get_extractor("mnist-classifier", cache_dir=fid_cfg.cache_dir, steps=fid_cfg.classifier_steps,
                              limit=fid_cfg.classifier_limit)
    real = feature_stats(extractor, load_mnist("test", limit=fid_cfg.n_real)[0])
    rows, grids = [], []
    for name, make in reference_sets(n, args.seed).items():
        images = make()
        result = fid(real, images, extractor)
        rows.append({"set": name, "fid": result.value})
        grids.append(images[:16])
        print(f"{result.value:10.2f}  {name}", flush=True)
    print(f"extractor {result.key}, {fid_cfg.n_real} test digits vs {n} images per set")
    print("fixed-point error, denoising gain, default projective floors:")
    out = {"command": "python -m bench.quality_floors " + " ".join(argv if argv is not None else sys.argv[1:]),
           "machine": machine_line("cpu"),
           "fid": {"extractor": result.key, "n_real": fid_cfg.n_real, "n_fake": n, "real_split": "test", "sets": rows},
           "projective": projective_references(args.seed)}
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=2) + "\n")
    if args.grid is not None:
        save_grid(torch.cat(grids), args.grid, nrow=16)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
