"""One contract for every model kind, driven by each kind's `KindSpec`.

For each built-in kind: build a tiny model, train a few steps with `linearizer.training.fit`,
check the logged terms against the spec's loss weights, save and load it bit-exact, serve every
declared mode with valid params, and refuse bad requests with a ValueError that names the
problem. Then the spec's other readers: the MLflow signature, the evaluation registry, the CLI
options, and (slow) a served style model queried through MLflow in a fresh process.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import typing
from pathlib import Path

import numpy as np
import pytest
import torch

from linearizer.config import LEGACY_WEIGHT_FIELDS, ConfigError, ModelConfig, TrainConfig, from_dict
from linearizer.io import load_model, save_model
from linearizer.kinds import ImageKind, KindSpec, Mode, Param, builtin_kinds, evaluations, get_kind
from linearizer.training import TensorBatches, fit

REPO = Path(__file__).resolve().parents[1]
STYLES = ["grade", "pencil"]
#: the smallest model of each kind that still exercises every part of it.
CONFIGS: dict[str, dict] = {
    "onestep": {"kind": "onestep", "image_shape": [1, 8, 8], "flow": {"depth": 1, "hidden": 8},
                "operator": {"rank": 2, "time_embed_dim": 8, "hidden": 16}, "sampler": {"steps": 4}},
    "projective": {"kind": "projective", "image_shape": [1, 8, 8], "flow": {"depth": 1, "hidden": 8},
                   "operator": {"rank": 4}},
    "style": {"kind": "style", "image_shape": [3, 8, 8], "flow": {"depth": 1, "hidden": 4},
              "operator": {"styles": STYLES, "kernel_size": 2}},
    "fm_baseline": {"kind": "fm_baseline", "image_shape": [1, 8, 8], "flow": {"depth": 2, "hidden": 8},
                    "operator": {"time_embed_dim": 8}, "sampler": {"steps": 2, "method": "euler"}},
}
KINDS = list(builtin_kinds())
#: modes whose outputs are not images in [0, 1]: noise pre-images, and projections (clamped on request only).
UNCLAMPED = {("onestep", "invert"), ("projective", "project"), ("projective", "sample")}


def _batch(kind_name: str, n: int, seed: int = 0) -> dict[str, torch.Tensor]:
    shape = CONFIGS[kind_name]["image_shape"]
    g = torch.Generator().manual_seed(seed)
    batch = {"image": torch.rand(n, *shape, generator=g)}
    if kind_name == "style":
        batch["target"] = (batch["image"] * 0.8 + 0.1).flip(1)
        batch["style"] = torch.arange(n) % len(STYLES)
    return batch


def _trained(kind_name: str, steps: int = 3):
    """A tiny model of the kind, trained `steps` steps and finalized, with its history."""
    kind = get_kind(kind_name)
    cfg = from_dict(ModelConfig, CONFIGS[kind_name])
    torch.manual_seed(0)
    model = kind.build(cfg)
    data = _batch(kind_name, 16)
    kind.initialize(model, data)
    history = fit(kind, model, TensorBatches(data, 8, seed=0), TrainConfig(steps=steps, batch_size=8, lr=1e-3),
                  progress=False)
    kind.finalize(model)
    return kind, model.eval(), cfg, history


@pytest.fixture(scope="module", params=KINDS)
def trained(request):
    torch.set_num_threads(1)
    return _trained(request.param)


def _inputs(mode: Mode, shape, n: int = 2, seed: int = 3) -> torch.Tensor:
    n = mode.count or n
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, *shape, generator=g) if mode.inputs != "noise" else torch.randn(n, *shape, generator=g)


def _valid(mode: Mode) -> dict:
    return {"mode": mode.name, **mode.valid_params()}


# ----- the spec is the kind -------------------------------------------------------------------


@pytest.mark.parametrize("kind_name", KINDS)
def test_the_kind_is_what_its_spec_declares(kind_name):
    kind = get_kind(kind_name)
    spec = kind.spec
    assert isinstance(kind, ImageKind) and isinstance(spec, KindSpec) and spec.name == kind.name == kind_name
    assert kind.modes == spec.mode_names and kind.batch_keys == spec.batch_keys
    for mode in spec.modes:
        assert callable(getattr(kind, f"predict_{mode.name}"))
        for p in mode.params:  # every optional default passes its own check
            assert p.required or p.default is None or p.check(p.default) == p.default
    # the kind's loss section: weights named by the terms it logs, non-negative defaults
    assert set(spec.loss_weights) <= spec.logged_terms and all(w >= 0 for w in spec.loss_weights.values())
    assert set(spec.legacy_loss_weights) <= set(LEGACY_WEIGHT_FIELDS)
    assert set(spec.legacy_loss_weights.values()) == set(spec.loss_weights)


@pytest.mark.parametrize("kind_name", KINDS)
def test_a_config_holds_the_kinds_weights_and_refuses_others(kind_name):
    spec = get_kind(kind_name).spec
    cfg = from_dict(ModelConfig, CONFIGS[kind_name])
    assert cfg.loss.weights == dict(spec.loss_weights)  # every weight, the kind's defaults
    names = list(spec.loss_weights)
    if names:
        data = {**CONFIGS[kind_name], "loss": {"weights": {names[-1]: 0.25}}}
        assert from_dict(ModelConfig, data).loss.weights == {**spec.loss_weights, names[-1]: 0.25}
        with pytest.raises(ConfigError, match=rf"model.loss.weights.{names[-1]} must be >= 0"):
            from_dict(ModelConfig, {**CONFIGS[kind_name], "loss": {"weights": {names[-1]: -1.0}}}, "model")
    other = next(n for k in KINDS for n in get_kind(k).spec.loss_weights if n not in spec.loss_weights)
    with pytest.raises(ConfigError) as err:
        from_dict(ModelConfig, {**CONFIGS[kind_name], "loss": {"weights": {other: 1.0}}}, "model")
    assert f"'{other}' is not a loss weight of kind '{kind_name}'" in str(err.value)
    assert (", ".join(names) or "none") in str(err.value)


#: a saved model's loss section before the weights were named by the terms (every legacy field set).
LEGACY_LOSS = {"s": 0.2, "perceptual": "mse", "w_latent": 2.0, "w_noise": 3.0, "w_data": 4.0, "w_pred": 5.0,
               "w_prior": 0.0}
#: what each kind read from it.
LEGACY_READ = {"onestep": {"latent": 2.0, "noise": 3.0, "data": 4.0, "pred": 5.0},
               "projective": {"pixel": 4.0, "latent": 2.0, "prior_data": 0.0, "prior_noise": 3.0},
               "style": {"pred": 5.0, "latent": 2.0, "content_rec": 4.0, "styled_rec": 3.0, "identity": 0.0},
               "fm_baseline": {}}


@pytest.mark.parametrize("kind_name", KINDS)
def test_an_old_config_loads_with_the_weights_it_trained_with(kind_name, tmp_path):
    old = {**CONFIGS[kind_name], "loss": LEGACY_LOSS}
    cfg = from_dict(ModelConfig, old)
    assert cfg.loss.weights == LEGACY_READ[kind_name] and cfg.loss.s == 0.2
    # a legacy field left out had the value 1
    partial = from_dict(ModelConfig, {**CONFIGS[kind_name], "loss": {"w_latent": 0.5}})
    assert partial.loss.weights == {n: 0.5 if n == "latent" else 1.0 for n in get_kind(kind_name).spec.loss_weights}
    # a saved model with an old config.json loads, and its loss reads the translated weights
    kind = get_kind(kind_name)
    torch.manual_seed(0)
    model = kind.build(cfg)
    kind.initialize(model, _batch(kind_name, 8))
    model_dir = save_model(model, cfg, tmp_path / "model")
    saved = json.loads((model_dir / "config.json").read_text())
    (model_dir / "config.json").write_text(json.dumps({**saved, "loss": LEGACY_LOSS}))
    loaded, loaded_cfg = load_model(model_dir)
    assert loaded_cfg == cfg
    if LEGACY_READ[kind_name]:  # the loss weighs each term as the old config said
        loss, terms = kind.loss(loaded, _batch(kind_name, 4), torch.Generator().manual_seed(1))
        weighted = sum(w * terms[t] for t, w in LEGACY_READ[kind_name].items() if w > 0)
        assert float(loss.detach()) == pytest.approx(weighted, rel=1e-5)


def test_old_and_new_weight_fields_do_not_mix():
    with pytest.raises(ConfigError, match="not with the legacy fields"):
        from_dict(ModelConfig, {"kind": "onestep", "loss": {"w_data": 1.0, "weights": {"data": 1.0}}})
    with pytest.raises(ConfigError, match="registered model kind"):
        from_dict(ModelConfig, {"kind": "no_such_kind", "loss": {"w_data": 1.0}})


def test_a_spec_refuses_one_param_with_two_types_and_repeated_modes():
    with pytest.raises(ValueError, match="param 'n' has two types"):
        KindSpec("k", (Mode("a", "noise", (Param("n", int, 1),)), Mode("b", "noise", (Param("n", float, 1.0),))))
    with pytest.raises(ValueError, match="distinct names"):
        KindSpec("k", (Mode("a", "noise"), Mode("a", "images")))
    with pytest.raises(TypeError, match="type must be one of"):
        Param("x", dict)


# ----- build, train, save, load ---------------------------------------------------------------


def test_training_logs_exactly_the_declared_terms(trained):
    kind, _, _, history = trained
    assert len(history) == 3
    logged = set(history[-1]) - {"step", "grad_norm", "lr"}
    assert logged == set(kind.spec.logged_terms)
    assert all(math.isfinite(h["loss"]) for h in history)


def test_save_and_load_are_bit_exact(trained, tmp_path):
    kind, model, cfg, _ = trained
    loaded, loaded_cfg = load_model(save_model(model, cfg, tmp_path / "model"))
    assert loaded_cfg == cfg and type(loaded) is type(model)
    ours, theirs = model.state_dict(), loaded.state_dict()
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)
    for mode in kind.spec.modes:  # and the loaded model serves alike, bit for bit
        x, params = _inputs(mode, cfg.image_shape), _valid(mode)
        assert torch.equal(kind.predict(model, x, params), kind.predict(loaded, x, params))


# ----- predict ---------------------------------------------------------------------------------


def test_every_mode_serves_a_valid_request(trained):
    kind, model, cfg, _ = trained
    for mode in kind.spec.modes:
        x = _inputs(mode, cfg.image_shape)
        y = kind.predict(model, x, _valid(mode))
        assert y.dtype == torch.float32 and bool(torch.isfinite(y).all()), mode.name
        assert tuple(y.shape[1:]) == tuple(cfg.image_shape)
        if mode.name != "interpolate":
            assert y.shape[0] == x.shape[0]
        if (kind.name, mode.name) not in UNCLAMPED:
            assert 0.0 <= float(y.min()) and float(y.max()) <= 1.0


def test_defaults_are_what_an_explicit_request_gets(trained):
    kind, model, cfg, _ = trained
    for mode in kind.spec.modes:
        given = {p.name: p.default for p in mode.params if not p.required and p.default is not None}
        if not given:
            continue
        x = _inputs(mode, cfg.image_shape)
        assert torch.equal(kind.predict(model, x, _valid(mode)), kind.predict(model, x, {**_valid(mode), **given}))


def test_bad_requests_are_refused_naming_the_problem(trained):
    kind, model, cfg, _ = trained
    spec = kind.spec
    first = spec.modes[0]
    x = _inputs(first, cfg.image_shape)
    for params, named in [(None, "params must be a dict"), ({}, "mode"), ({"mode": "nope"}, "'nope'"),
                          ({**_valid(first), "stepz": 1}, "stepz")]:
        with pytest.raises(ValueError, match=named):
            kind.predict(model, x, params)
    for mode in spec.modes:
        x = _inputs(mode, cfg.image_shape)
        for p in mode.params:
            if p.required:
                with pytest.raises(ValueError, match=f"needs parameters \\['{p.name}'\\]"):
                    kind.predict(model, x, {k: v for k, v in _valid(mode).items() if k != p.name})
            for value in p.invalid_values():
                with pytest.raises(ValueError, match=p.name):
                    kind.predict(model, x, {**_valid(mode), p.name: value})
        for bad, named in [(x[:0], "N >= 1"), (x[0], "one image"), (x.to(torch.int64), "floating-point"),
                           (x.flatten(1), "shape"), (torch.full_like(x, math.nan), "NaN")]:
            with pytest.raises(ValueError, match=named):
                kind.predict(model, bad, _valid(mode))
        if mode.inputs == "images":
            with pytest.raises(ValueError, match=r"\[0, 1\]"):
                kind.predict(model, x + 1.5, _valid(mode))
        if mode.count:
            with pytest.raises(ValueError, match=f"exactly {mode.count}"):
                kind.predict(model, torch.cat([x, x[:1]]), _valid(mode))


def test_style_names_outside_the_model_are_refused_with_its_styles():
    kind, model, cfg, _ = _trained("style", steps=1)
    x = torch.rand(1, *cfg.image_shape)
    with pytest.raises(ValueError, match="unknown style 'nope'.*grade, pencil"):
        kind.predict(model, x, {"mode": "style", "style": "nope"})


# ----- the spec's other readers ----------------------------------------------------------------


@pytest.mark.parametrize("kind_name", KINDS)
def test_signature_params_are_the_spec_params(kind_name, tmp_path):
    from pipelines.registry import signature_for

    cfg = from_dict(ModelConfig, CONFIGS[kind_name])
    spec = get_kind(kind_name).spec
    model_dir = save_model(get_kind(kind_name).build(cfg), cfg, tmp_path / "model")
    declared = {p.name: p for p in signature_for(model_dir).params}
    assert declared.pop("mode").default == spec.mode_names[0]
    mlflow_types = {bool: "boolean", int: "long", float: "double", str: "string", list: "string"}
    assert {k: p.dtype.name for k, p in declared.items()} == {k: mlflow_types[t] for k, t in spec.param_types().items()}
    assert all((p.shape == (-1,)) == (spec.param_types()[k] is list) for k, p in declared.items())


def test_served_requirements_name_only_published_packages():
    from importlib.metadata import version

    from pipelines.registry import requirements

    pins = dict(r.split("==") for r in requirements())
    assert "linearizer" not in pins  # the project is not on PyPI: pip could not resolve it
    assert {"torch", "mlflow", "numpy", "safetensors", "pillow", "pyyaml", "tqdm"} <= set(pins)
    assert all(pins[name] == version(name).split("+")[0] for name in pins)


def test_the_evaluation_registry_is_read_from_the_specs():
    from pipelines.evaluate.config import EVALUATION_KINDS, EvalConfig
    from pipelines.evaluate.job import EVALUATIONS

    assert EVALUATION_KINDS == evaluations() == {"sampling": "onestep", "projection": "projective", "style": "style"}
    assert set(EVALUATIONS) == set(EVALUATION_KINDS)
    import importlib

    assert all(callable(importlib.import_module(m).run) for m in EVALUATIONS.values())
    # the config's closed set of names is the same set
    hint = typing.get_type_hints(EvalConfig)["evaluation"]
    assert set(typing.get_args(hint)) == {"auto", *EVALUATION_KINDS}


def test_cli_options_come_from_the_spec():
    from linearizer.cli import build_parser

    parser = build_parser()
    args = parser.parse_args(["onestep", "invert", "--model", "m", "--out", "o.png", "--solve", "pinv"])
    assert args.solve == "pinv"
    with pytest.raises(SystemExit):
        parser.parse_args(["onestep", "invert", "--model", "m", "--out", "o.png", "--solve", "lu"])
    args = parser.parse_args(["onestep", "sample", "--model", "m", "--out", "o.png"])
    assert args.method == "rk4" and args.t_end is None  # the CLI's own default, then the model's


def test_the_console_script_exits_with_the_shared_statuses(tmp_path, capsys):
    from linearizer.cli import EXIT_BAD_INPUT, EXIT_CANNOT_RUN, main

    _, model, cfg, _ = _trained("onestep", steps=1)
    model_dir = save_model(model, cfg, tmp_path / "model")
    assert main(["onestep", "sample", "--model", str(model_dir), "--n", "2", "--out", str(tmp_path / "ok.png")]) == 0
    assert main(["onestep", "sample", "--model", str(tmp_path / "none"), "--out", str(tmp_path / "a.png")]) \
        == EXIT_BAD_INPUT
    assert main(["onestep", "sample", "--model", str(model_dir), "--steps", "2", "--t-end", "1.5",
                 "--out", str(tmp_path / "b.png")]) == EXIT_BAD_INPUT
    (tmp_path / "file").write_text("")  # an output under a file: the command cannot run
    assert main(["onestep", "sample", "--model", str(model_dir), "--n", "2",
                 "--out", str(tmp_path / "file" / "c.png")]) == EXIT_CANNOT_RUN
    err = capsys.readouterr().err
    assert "linearizer onestep sample: error:" in err and "linearizer onestep sample: could not run:" in err
    assert "Traceback" not in err


# ----- served through MLflow, in a fresh process ---------------------------------------------

CLIENT = """
import json, sys
import mlflow
import numpy as np

uri, x_path, params = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
model = mlflow.pyfunc.load_model(uri)
print(json.dumps(model.predict(np.load(x_path), params=params).tolist()))
"""


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_served_style_model_takes_its_params_through_mlflow(mlflow_store, tmp_path):
    from tests.registry_models import register, style_model

    model, cfg = style_model()
    version = register(mlflow_store, "kinds-style", model, cfg, tmp_path)
    x = np.random.default_rng(0).random((2, *cfg.image_shape), dtype=np.float32)
    np.save(tmp_path / "x.npy", x)
    kind = get_kind("style")
    env = {"MLFLOW_TRACKING_URI": mlflow_store.tracking_uri, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO),
           "PATH": "/usr/bin:/bin"}
    for params in ({"mode": "style", "style": "pencil", "strength": 0.5},
                   {"mode": "interpolate", "style_a": "grade", "style_b": "pencil", "alpha": 0.25},
                   {"mode": "compose", "styles": ["pencil", "grade"], "how": "sequential"}):
        out = subprocess.run([sys.executable, "-c", CLIENT, f"models:/kinds-style/{version}", str(tmp_path / "x.npy"),
                              json.dumps(params)], capture_output=True, text=True, env=env, cwd=REPO, timeout=240)
        assert out.returncode == 0, out.stderr[-3000:]
        served = np.asarray(json.loads(out.stdout.strip().splitlines()[-1]), dtype=np.float32)
        expected = kind.predict(model, torch.from_numpy(x), params).numpy()
        np.testing.assert_allclose(served, expected, rtol=0, atol=1e-6)
    # and the styles differ: the params reached the model
    plain = kind.predict(model, torch.from_numpy(x), {"mode": "style", "style": "grade"}).numpy()
    assert np.abs(plain - expected).max() > 1e-3


# ----- the one-step model as a Linearizer ------------------------------------------------------


def _onestep64():
    kind, model, cfg, _ = _trained("onestep", steps=2)
    return model.double(), cfg


def test_onestep_as_linearizer_is_one_step_sampling_and_has_its_algebra():
    model, cfg = _onestep64()
    model.build_B()  # in float64
    x0 = torch.randn(3, *cfg.image_shape, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    L = model.as_linearizer()
    assert L.g_x is model.g_y and L.g_y is model.g_x  # shared modules, not copies
    torch.testing.assert_close(L(x0), model.sample(x0), rtol=0, atol=1e-12)
    # transpose: <f(x), y>_Y = <x, f^T(y)>_X in the induced inner products
    y = torch.rand(3, *cfg.image_shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    lhs, rhs = L.Y.inner(L(x0), y), L.X.inner(x0, L.T(y))
    torch.testing.assert_close(lhs, rhs, rtol=1e-10, atol=1e-10)
    # pinv: B is invertible, so f^+ inverts one-step sampling
    torch.testing.assert_close(L.pinv()(L(x0)), x0, rtol=1e-8, atol=1e-8)
    # svd: the top singular values are B's, and f maps each v_i to s_i (.) u_i
    svd = L.svd(3)
    torch.testing.assert_close(svd.s, torch.linalg.svdvals(model.B_operator().materialize())[:3], rtol=1e-10,
                               atol=1e-10)
    torch.testing.assert_close(L(svd.v), L.Y.scale(svd.s, svd.u), rtol=1e-8, atol=1e-8)


def test_onestep_as_linearizer_at_t_applies_A_of_t():
    model, cfg = _onestep64()
    x0 = torch.randn(2, *cfg.image_shape, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    L = model.as_linearizer(0.0)
    expected = model.decode_data(model.unflat(model.A.apply(model.flat(model.encode_noise(x0)), 0.0)))
    torch.testing.assert_close(L(x0), expected, rtol=0, atol=1e-12)
    U, S, V = L.A.svd()
    assert S.shape[0] <= cfg.operator.rank  # A(t) has the model's rank


def test_the_shared_onestep_evaluation_measures_through_predict():
    from linearizer.metrics import agreement_db
    from linearizer.onestep.evaluation import agreement, collapse_summary, inversion_db

    kind, model, cfg, _ = _trained("onestep", steps=2)
    x0 = torch.randn(5, *cfg.image_shape, generator=torch.Generator().manual_seed(4))
    a = agreement(model, x0, batch_size=2)
    assert a.steps == model.B_info.steps == cfg.sampler.steps
    torch.testing.assert_close(a.one, kind.predict(model, x0, {"mode": "sample"}), rtol=0, atol=1e-6)
    assert a.db == agreement_db(a.one, a.many) and a.db > 60  # B is the exact collapse
    assert collapse_summary(model)["steps"] == cfg.sampler.steps
    images = torch.rand(4, *cfg.image_shape, generator=torch.Generator().manual_seed(5))
    back = kind.predict(model, images, {"mode": "reconstruct"})
    assert inversion_db(model, images, batch_size=4) == agreement_db(back, images)  # one batch: the same floats
    model.clear_B()
    with pytest.raises(ValueError, match="collapsed operator B"):
        agreement(model, x0)
