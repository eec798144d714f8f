"""Evaluation pipelines: a registered model version in, metrics, a report and a promotion decision out.

    python -m pipelines.evaluate --model linearizer-onestep --alias challenger
    python -m pipelines.evaluate --model linearizer-onestep --version 3 --force --set sampling.max_fid=40

| evaluation | kind | measures |
|---|---|---|
| `sampling` | onestep | one-step vs multi-step agreement, FID (extractor named), samples/s, grids |
| `projection` | projective | idempotency (noise, corrupted, out-of-distribution), fixed-point error, |
| | | denoising / inpainting PSNR, FID of projected noise, before/after grid |
| `style` | style | per-style PSNR / SSIM on held-out content, interpolation strips, composition |

Modules: `config` (the typed job config), `common` (results, registry access), `sampling`,
`projection`, `style` (one evaluation each), `promotion` (claims, champion / challenger rule,
the registry lock), `report` (Markdown + HTML), `job` (the whole job), `__main__` (command line).
See docs/jobs.md.
"""

from .config import EvalConfig, load_eval_config
from .job import EVALUATIONS, EvalOutcome, evaluate, evaluate_version

__all__ = ["EVALUATIONS", "EvalConfig", "EvalOutcome", "evaluate", "evaluate_version", "load_eval_config"]
