"""The MLflow registry contract: a pyfunc that rebuilds a Linearizer from safetensors + JSON.

A registered version holds the exported model directory (`config.json` + `model.safetensors`)
as the artifact "model" and is logged as *models from code*: MLflow stores a three-line Python
file that imports `LinearizerPyfunc` from this module, never a pickle. (MLflow 3 refuses to
unpickle a cloudpickled `python_model` unless `MLFLOW_ALLOW_PICKLE_DESERIALIZATION=true`, and a
pickle of a torch module is code execution on load.) `load_context` calls
`linearizer.io.load_model`, which rebuilds the model through its kind.

Serving: `predict(model_input, params)` takes a float32 array `[N, C, H, W]` (noise or images in
[0, 1], depending on the mode) and returns one; `params["mode"]` picks the kind's operation
(default: its first mode); other params are passed to `kind.predict`. The signature declares
"mode" and every request parameter of the kind's `KindSpec` (`linearizer.kinds.spec_of`) with its
type; MLflow drops undeclared params.

The version's pip requirements are the library's own dependencies pinned to the installed
versions, plus MLflow: all of them resolve from PyPI. The project itself is not published, so a
serving environment installs it from this repository (or its wheel) next to them.

Each version is tagged with the kind, the training run id and the config hash, and the alias
`mlflow.alias` ("challenger") moves to it.

Example:
    >>> model = mlflow.pyfunc.load_model("models:/linearizer-onestep@challenger")
    >>> x = model.predict(np.random.randn(16, 1, 32, 32).astype(np.float32), params={"mode": "sample"})
"""

from __future__ import annotations

import importlib
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import mlflow
import numpy as np
import torch

from linearizer.io import load_model, read_model_config
from linearizer.kinds import get_kind, spec_of

if TYPE_CHECKING:
    from .config import JobConfig
    from .tracking import TrackingRun

#: the models-from-code entry MLflow stores with every version (executed on load).
MODEL_CODE = '''"""MLflow models-from-code entry of a Linearizer: the model is rebuilt from safetensors + JSON."""
import mlflow

from pipelines.registry import LinearizerPyfunc

mlflow.models.set_model(LinearizerPyfunc())
'''
#: model_config key listing plugin modules to import before the kind is looked up. MLflow also
#: logs model_config entries as run params, so the key must not collide with a job config key.
IMPORTS_KEY = "pyfunc_imports"
_MLFLOW_TYPES = {int: "long", float: "double", str: "string", bool: "boolean", list: "string"}


class LinearizerPyfunc(mlflow.pyfunc.PythonModel):
    """An MLflow pyfunc serving any model kind through `kind.predict`."""

    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        """Import plugin kinds named in the model config, then rebuild the model."""
        for module in (context.model_config or {}).get(IMPORTS_KEY, []):
            importlib.import_module(module)
        self.model, self.cfg = load_model(context.artifacts["model"])
        self.kind = get_kind(self.cfg.kind)

    # `np.ndarray` is the one input hint MLflow 3 accepts without inferring a signature from it
    # (any other hint, or none, draws a warning); the signature of `signature_for` is the contract.
    def predict(self, context: Any, model_input: np.ndarray, params: dict[str, Any] | None = None) -> np.ndarray:
        """Run `kind.predict` on `model_input` (`[N, C, H, W]` float array) with `params`.

        Params MLflow filled with the signature's "not given" default (None, or an empty list
        for list params) are dropped, so the kind applies its own defaults.

        Returns:
            A float32 numpy array (images `[N, C, H, W]`, or noise for inversion modes).
        """
        params = {k: v for k, v in (params or {}).items() if v is not None and not _empty_list(v)}
        params.setdefault("mode", self.kind.modes[0])
        x = torch.as_tensor(np.asarray(model_input, dtype=np.float32))
        with torch.no_grad():
            y = self.kind.predict(self.model, x, params)
        return y.detach().float().cpu().numpy()


def _empty_list(value: Any) -> bool:
    return isinstance(value, (list, tuple, np.ndarray)) and len(value) == 0


def signature_for(model_dir: str | Path) -> mlflow.models.ModelSignature:
    """Tensor in, tensor out (`[-1, C, H, W]` float32), plus the kind's params from its spec.

    Every param defaults to "not given" (None; an empty list for list params, which MLflow
    cannot default to None), so the kind's own defaults apply.

    Raises:
        ValueError: a param type MLflow cannot declare.
    """
    from mlflow.types import ParamSchema, ParamSpec, Schema, TensorSpec

    cfg = read_model_config(model_dir)
    spec = spec_of(get_kind(cfg.kind))
    shape = (-1, *cfg.image_shape)
    specs = [ParamSpec("mode", "string", spec.mode_names[0])]
    for name, tp in sorted(spec.param_types().items()):
        if tp not in _MLFLOW_TYPES:
            raise ValueError(f"kind {spec.name!r} param {name!r} has type {tp!r}; "
                             f"expected one of int, float, str, bool, list")
        if tp is list:
            specs.append(ParamSpec(name, _MLFLOW_TYPES[tp], [], shape=(-1,)))
        else:
            specs.append(ParamSpec(name, _MLFLOW_TYPES[tp], None))
    tensor = Schema([TensorSpec(np.dtype(np.float32), shape)])
    return mlflow.models.ModelSignature(inputs=tensor, outputs=tensor, params=ParamSchema(specs))


def requirements() -> list[str]:
    """pip requirements of a served model: the library's dependencies at their installed versions, and MLflow.

    The project itself is not on PyPI, so it is not listed: a requirement pip cannot resolve
    would make every environment MLflow builds for the model fail.
    """
    from importlib.metadata import PackageNotFoundError, version

    import safetensors

    pinned = {"torch": torch.__version__.split("+")[0], "mlflow": mlflow.__version__, "numpy": np.__version__,
              "safetensors": safetensors.__version__}
    for name in ("pillow", "pyyaml", "tqdm"):  # the rest of linearizer's own dependencies (pyproject.toml)
        try:
            pinned[name] = version(name)
        except PackageNotFoundError:
            continue
    return [f"{name}=={v}" for name, v in pinned.items()]


def log_pyfunc(model_dir: str | Path, imports: list[str] | None = None, name: str = "model",
               registered_model: str | None = None) -> Any:
    """Log `model_dir` as a pyfunc model into the active MLflow run (optionally registering it).

    Returns:
        MLflow's `ModelInfo` (`model_uri`, `registered_model_version`, ...).
    """
    cfg = read_model_config(model_dir)
    example = torch.rand(2, *cfg.image_shape, generator=torch.Generator().manual_seed(0)).numpy()
    with tempfile.TemporaryDirectory() as tmp:
        code = Path(tmp) / "linearizer_model.py"
        code.write_text(MODEL_CODE)
        return mlflow.pyfunc.log_model(
            name=name, python_model=str(code), artifacts={"model": str(model_dir)},
            model_config={IMPORTS_KEY: list(imports or [])}, signature=signature_for(model_dir),
            input_example=example, pip_requirements=requirements(),
            registered_model_name=registered_model,
        )


def register_model(model_dir: str | Path, cfg: JobConfig, run: TrackingRun, imports: list[str] | None = None) -> str:
    """Log the exported model into the job's run, register a new version, tag it and move the alias.

    Returns:
        The new version number (as a string).
    """
    from mlflow.tracking import MlflowClient

    from .config import config_hash

    name = cfg.mlflow.registered_model
    if not name:
        raise ValueError("mlflow.registered_model is not set: nothing to register")
    mlflow.set_tracking_uri(run.tracking_uri)
    with mlflow.start_run(run_id=run.run_id):
        info = log_pyfunc(model_dir, imports, registered_model=name)
    version = str(info.registered_model_version)
    client = MlflowClient(run.tracking_uri)
    for key, value in {"kind": cfg.model.kind, "run_id": run.run_id, "config_hash": config_hash(cfg)}.items():
        client.set_model_version_tag(name, version, key, value)
    client.set_registered_model_alias(name, cfg.mlflow.alias, version)
    return version


def load_registered(name: str, alias: str = "challenger", tracking_uri: str | None = None) -> Any:
    """`mlflow.pyfunc.load_model("models:/<name>@<alias>")` against `tracking_uri`."""
    if tracking_uri:
        mlflow.set_tracking_uri(tracking_uri)
    return mlflow.pyfunc.load_model(f"models:/{name}@{alias}")
