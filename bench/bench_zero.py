"""ZeRO-3 with CPU offload against ZeRO-1 on a CelebA-size one-step model: peak memory per worker, images/s.

The model is `bench.gpu_check`'s "celeba" case: a one-step Linearizer on 3x64x64 images, flow
depth 4 (hidden 32), rank 8, so d = 12288 and 26.1 M parameters (25.4 M of them in the MLP that
emits A(t)'s factors). The data are an image folder of 64x64 RGB crops of scikit-image's and
scikit-learn's photos (`photo_folder`; CelebA itself is not available offline), written as
WebDataset shards by `pipelines.shards.write_shards` from `folder_samples`, as
`python -m pipelines.shards write --source folder` would.

Per DeepSpeed configuration (`infra/deepspeed/<name>.json`), the pipeline job
(`pipelines.train.train`: Ray Train, 2 workers x 0.5 CPU, gloo, MLflow in a throwaway SQLite
store, no registry, no sample grids) runs `2 N` steps with `train.log_every = N`:

- images/s: the worker-reported `samples_per_s` of the window N+1..2N (steady state: Ray and
  DeepSpeed start-up, ActNorm's data-dependent init and the first steps fall in the first window);
- peak memory per worker: the `peak_rss_mib` metric at step 2N, the largest worker's peak
  resident set so far (`getrusage`; it includes the interpreter, torch, DeepSpeed and Ray, the
  same in every configuration);
- the whole job's wall time (start-up, checkpoint, export with the sampler's collapse).

On a host without a GPU, "offload to CPU" moves nothing across a bus: the figures say what the
offload code path costs and what partitioning the weights, gradients and optimizer state over
the workers saves in each worker's memory.

Run:
    python -m bench.bench_zero                                    # N = 5, zero1 zero3 zero3_offload
    python -m bench.bench_zero --steps 10 --configs zero1 zero3_offload --json docs/results/zero_bench.json
    python -m bench.bench_zero --make-folder data/photos64 --count 2048    # only the image folder
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .common import add_json_flag, fmt_ratio, fmt_seconds, machine_line, table, warm_up, write_results

ROOT = Path(__file__).resolve().parent.parent
PREFIX = "photos64-train"
#: the CelebA-size model (`bench.gpu_check`'s "celeba" case) as a config section.
CELEBA_MODEL: dict[str, Any] = {"kind": "onestep", "image_shape": [3, 64, 64], "flow": {"depth": 4, "hidden": 32},
                                "operator": {"rank": 8}}
#: scikit-image photos that load offline (RGB uint8).
SKIMAGE_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "cat", "immunohistochemistry", "hubble_deep_field",
                  "colorwheel", "retina")
CONFIGS = ("zero1", "zero3", "zero3_offload")
#: `python -m bench.run_all --quick`: a smoke test of every stage, not a measurement.
QUICK_ARGS = ["--steps", "1", "--configs", "zero1", "--count", "64", "--batch", "2"]


def photos() -> list[np.ndarray]:
    """The offline RGB photos: scikit-image's `SKIMAGE_PHOTOS` and scikit-learn's two samples."""
    import skimage.data
    from sklearn.datasets import load_sample_images

    return [getattr(skimage.data, name)() for name in SKIMAGE_PHOTOS] + list(load_sample_images().images)


def photo_folder(root: str | Path, count: int, size: int = 64, seed: int = 0) -> Path:
    """Write `count` random `size` x `size` RGB crops of `photos()` as PNG files under `root`.

    Each crop picks a photo, a square side between `size` and half the photo's short side (so
    crops range from close-ups to wide views), a position and a horizontal flip, and is resized
    to `size` (Lanczos). A folder that already holds `count` PNG files is left as it is.

    Args:
        root: the folder (created if needed).
        count: images to write.
        size: the side of the written images.
        seed: the crops' random seed.

    Returns:
        `root` as a Path.

    Raises:
        ValueError: `count` or `size` is not positive.
    """
    from PIL import Image

    if count < 1 or size < 1:
        raise ValueError(f"count and size must be positive, got {count} and {size}")
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    if len(list(root.glob("*.png"))) == count:
        return root
    rng = np.random.default_rng(seed)
    sources = photos()
    for i in range(count):
        photo = sources[rng.integers(len(sources))]
        h, w = photo.shape[:2]
        side = int(rng.integers(size, max(size + 1, min(h, w) // 2 + 1)))
        top, left = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
        crop = Image.fromarray(photo[top:top + side, left:left + side, :3])
        if rng.random() < 0.5:
            crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        crop.resize((size, size), Image.Resampling.LANCZOS).save(root / f"{i:06d}.png")
    return root


def photo_shards(folder: str | Path, shards: str | Path, maxcount: int, size: int = 64) -> int:
    """The folder as the shard set `PREFIX` in `shards` (written once); returns its sample count."""
    from pipelines.shards import folder_samples, read_manifests, write_shards

    existing = read_manifests(shards).get(PREFIX)
    if existing is not None:
        return existing.count
    source = {"name": "folder", "root": str(folder), "size": size, "channels": 3}
    return write_shards(folder_samples(str(folder), size, 3), shards, PREFIX, maxcount, source=source).count


def bench_job(root: Path, shards: Path, config: str, steps: int, batch: int, seed: int) -> Any:
    """The job of one configuration: 2 workers, `2 * steps` steps, logs every `steps`."""
    from pipelines.config import load_job_config

    name = f"bench-zero-{config}"
    store = root / "mlflow"
    store.mkdir(exist_ok=True)
    stage = int(config[len("zero")])
    return load_job_config(base={
        "name": name,
        "output_dir": str(root / "runs"),
        "data": {"shards": str(shards), "source": "none", "prefix": PREFIX, "heldout_split": None, "verify": "off"},
        "model": {**CELEBA_MODEL, "sampler": {"steps": 10}},  # the export's collapse is not what is measured
        "train": {"steps": 2 * steps, "batch_size": batch, "seed": seed, "log_every": steps, "sample_every": 0,
                  "checkpoint_every": 0},
        "distributed": {"num_workers": 2, "cpus_per_worker": 0.5, "zero_stage": stage,
                        "deepspeed_config": str(ROOT / "infra" / "deepspeed" / f"{config}.json")},
        "mlflow": {"tracking_uri": f"sqlite:///{store / 'mlflow.db'}", "artifact_location": (store / "art").as_uri(),
                   "experiment": name, "registered_model": None, "sample_grid": 0},
    })


def measure(root: Path, shards: Path, config: str, steps: int, batch: int, seed: int) -> dict[str, Any]:
    """Run one configuration's job; its steady-state images/s, peak worker RSS and wall time."""
    from pipelines.train import train

    outcome = train(bench_job(root, shards, config, steps, batch, seed))
    metrics = outcome.metrics
    if int(metrics.get("step", -1)) != 2 * steps:
        raise RuntimeError(f"{config}: the last report is of step {metrics.get('step')}, expected {2 * steps}")
    return {"config": config, "images_per_s": float(metrics["samples_per_s"]),
            "peak_rss_mib": float(metrics["peak_rss_mib"]), "job_seconds": outcome.seconds,
            "loss": float(metrics["loss"])}


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Measure every configuration and print the table; returns the figures (for `--json`)."""
    warm_up()
    with tempfile.TemporaryDirectory(prefix="bench-zero-") as tmp:
        root = Path(tmp)
        folder = photo_folder(args.data / "photos64" if args.data else root / "photos64", args.count, seed=args.seed)
        shards = args.data / "shards" if args.data else root / "shards"
        count = photo_shards(folder, shards, args.maxcount)
        print(machine_line())
        print(f"# onestep 3x64x64, flow depth 4, hidden 32, rank 8 (d = 12288); {count} photo crops in shards of "
              f"{args.maxcount}; global batch {args.batch} on 2 workers; N = {args.steps} steady-state steps")
        results = [measure(root, shards, c, args.steps, args.batch, args.seed) for c in args.configs]
    base = results[0]
    rows = [[r["config"], f"{r['images_per_s']:.2f}", fmt_ratio(r["images_per_s"] / base["images_per_s"]),
             f"{r['peak_rss_mib']:.0f}", fmt_ratio(r["peak_rss_mib"] / base["peak_rss_mib"]),
             fmt_seconds(r["job_seconds"])] for r in results]
    print(table(["DeepSpeed config", "images/s", f"vs {base['config']}", "peak RSS / worker (MiB)",
                 f"vs {base['config']}", "whole job"], rows))
    print(machine_line())
    return {"samples": count, "configs": results,
            "ratios": {r["config"]: {"images_per_s": r["images_per_s"] / base["images_per_s"],
                                     "peak_rss_mib": r["peak_rss_mib"] / base["peak_rss_mib"]} for r in results}}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=5, help="steady-state steps N per configuration (default: 5)")
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=CONFIGS,
                        help="infra/deepspeed configurations; the first is the baseline (default: all)")
    parser.add_argument("--batch", type=int, default=8, help="global batch size (default: 8)")
    parser.add_argument("--count", type=int, default=512, help="photo crops written (default: 512)")
    parser.add_argument("--maxcount", type=int, default=128, help="samples per shard (default: 128)")
    parser.add_argument("--data", type=Path, help="keep the folder and shards here (default: a temporary directory)")
    parser.add_argument("--make-folder", type=Path, metavar="DIR", help="only write --count crops to DIR and exit")
    parser.add_argument("--seed", type=int, default=0)
    add_json_flag(parser)
    args = parser.parse_args(argv)
    if args.make_folder is not None:
        photo_folder(args.make_folder, args.count, seed=args.seed)
        print(f"{args.count} crops of 64x64 in {args.make_folder}")
        return 0
    if args.steps < 1 or args.batch < 2 or args.batch % 2:
        parser.error(f"--steps must be >= 1 and --batch even (2 workers), got {args.steps} and {args.batch}")
    figures = run(args)
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "json"}
    write_results(args.json, "bench.bench_zero", argv, {"settings": settings, **figures})
    return 0


if __name__ == "__main__":
    from pipelines.runtime import prepare_environment

    prepare_environment()  # before Ray is imported anywhere
    os.environ.setdefault("PYTHONPATH", str(ROOT))
    sys.exit(main())
