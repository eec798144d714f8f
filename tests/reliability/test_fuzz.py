"""Fuzzing the entry points: hundreds of seeded bad inputs, each must get a clean error.

Targets: `kind.predict` of every built-in kind (cases read from its `KindSpec`), the served
pyfunc model (loaded from the MLflow registry), and the job and evaluation config loaders
(mappings, YAML files and `--set` overrides). Every input is a valid one with exactly one thing broken, so each must be refused;
"clean" is defined in `fuzzing.judge` (a ValueError / TypeError / ConfigError with a message,
raised from linearizer/ or pipelines/ code). A test-level timeout guards against hangs.
"""

from __future__ import annotations

import random
from collections import Counter

import numpy as np
import pytest
import torch
import yaml

from linearizer.config import ModelConfig, from_dict, to_dict
from linearizer.kinds import builtin_kinds, get_kind
from pipelines.config import JobConfig, load_job_config
from pipelines.evaluate.config import EvalConfig, load_eval_config
from tests.registry_models import onestep_model, projective_model, register, style_model
from tests.reliability.fuzzing import OWN_CODE, ModeSpec, bad_array, bad_request, judge, mutate_config, valid_inputs

CASES_PER_KIND = 300
CONFIG_CASES = 400
EVAL_CONFIG_CASES = 150
PYFUNC_CASES = 200

#: bad values the declarations cannot know: names the model does not have.
UNKNOWN_NAMES = {"style": ["nope"], "style_a": ["nope"], "style_b": ["nope"], "styles": [["nope"], ["grade", "q"]]}
FUZZED = builtin_kinds()


def mode_specs(kind_name: str) -> list[ModeSpec]:
    """The fuzz cases of a kind, read from its `KindSpec`: every mode with valid params, and
    for each param the values its declaration refuses (plus unknown names)."""
    spec = get_kind(kind_name).spec
    return [ModeSpec(mode.name, mode.inputs == "images", mode.count, mode.valid_params(),
                     {p.name: p.invalid_values() + UNKNOWN_NAMES.get(p.name, []) for p in mode.params})
            for mode in spec.modes]


SPECS = {name: mode_specs(name) for name in FUZZED}


def fm_baseline_model():
    cfg = from_dict(ModelConfig, {"kind": "fm_baseline", "image_shape": [1, 8, 8], "flow": {"depth": 2, "hidden": 8},
                                  "operator": {"time_embed_dim": 8}, "sampler": {"steps": 2, "method": "euler"}})
    torch.manual_seed(0)
    return get_kind("fm_baseline").build(cfg), cfg


BUILDERS = {"onestep": lambda: onestep_model(0), "projective": projective_model, "style": style_model,
            "fm_baseline": fm_baseline_model}


def _report(verdicts, what: str) -> str:
    bad = [v for v in verdicts if not v.clean]
    reasons = Counter(v.why.split(":")[0] for v in bad)
    examples = "\n".join(f"  - {v.case}: {v.why[:300]}" for v in bad[:12])
    return f"{len(bad)} of {len(verdicts)} bad {what} got no clean error; by reason {dict(reasons)}:\n{examples}"


# --------------------------------------------------------------------------------------------
# kind.predict
# --------------------------------------------------------------------------------------------


@pytest.mark.timeout(300)
@pytest.mark.parametrize("kind_name", list(SPECS))
def test_predict_refuses_every_bad_request_cleanly(kind_name, figures):
    model, cfg = BUILDERS[kind_name]()
    kind = get_kind(kind_name)
    shape = tuple(cfg.image_shape)
    for spec in SPECS[kind_name]:  # each valid request works: the defects below are what is refused
        x = valid_inputs(shape, spec, random.Random(0))
        y = kind.predict(model, x, {"mode": spec.mode, **spec.params})
        assert bool(y.isfinite().all())
    rng = random.Random(f"predict-{kind_name}")
    verdicts = []
    for i in range(CASES_PER_KIND):
        spec = rng.choice(SPECS[kind_name])
        x, params, what = bad_request(shape, spec, rng)
        verdicts.append(judge(f"#{i} {kind_name}/{spec.mode}: {what}", lambda: kind.predict(model, x, params)))
    figures.count("bad_predict_inputs_tried", len(verdicts))
    figures.count("bad_predict_inputs_clean", sum(v.clean for v in verdicts))
    assert all(v.clean for v in verdicts), _report(verdicts, "predict requests")


def test_style_predict_refuses_params_that_are_not_a_dict():
    model, _ = style_model()
    with pytest.raises(ValueError, match="params must be a dict"):
        get_kind("style").predict(model, torch.rand(1, 3, 16, 16), None)


def test_onestep_interpolate_validates_solve_in_every_space():
    model, _ = onestep_model(0)
    with pytest.raises(ValueError, match="'solve' must be one of"):
        get_kind("onestep").predict(model, torch.rand(2, 1, 32, 32), {"mode": "interpolate", "solve": "lu"})


# --------------------------------------------------------------------------------------------
# The served model
# --------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_served_pyfunc_refuses_every_bad_request_cleanly(mlflow_store, tmp_path, figures):
    """The registry's pyfunc, loaded as a client would (`models:/name@challenger`). Besides the
    project's own errors, MLflow's schema enforcement may refuse a request first: an
    `MlflowException` raised by MLflow's model-input checks is the serving contract working."""
    import mlflow
    from mlflow.exceptions import MlflowException

    from pipelines.registry import load_registered

    model, cfg = onestep_model(0)
    register(mlflow_store, "reliability-fuzz", model, cfg, tmp_path)
    served = load_registered("reliability-fuzz", "challenger", mlflow_store.tracking_uri)
    shape = tuple(cfg.image_shape)
    ok = served.predict(np.random.default_rng(0).standard_normal((2, *shape)).astype(np.float32),
                        params={"mode": "sample"})
    assert ok.shape == (2, *shape) and np.isfinite(ok).all()

    mlflow_dir = str(mlflow.__file__).rsplit("/", 1)[0] + "/"
    rng = random.Random("pyfunc")
    verdicts = []
    for i in range(PYFUNC_CASES):
        if rng.random() < 0.7:
            x, what = bad_array(shape, rng)
            mode = rng.choice(["invert", "reconstruct"]) if "outside [0, 1]" in what else rng.choice(
                ["sample", "invert", "reconstruct"])
            params = {"mode": mode}
        else:
            x = np.random.default_rng(i).random((2, *shape), dtype=np.float32)
            params = {"mode": rng.choice(["generate", "", "SAMPLE", "interpolat"])}
            what = f"mode {params['mode']!r}"
        verdicts.append(judge(f"#{i} pyfunc {params}: {what}", lambda: served.predict(x, params=params),
                              allowed=(ValueError, TypeError, MlflowException),
                              own_code=(*OWN_CODE, mlflow_dir)))
    figures.count("bad_served_inputs_tried", len(verdicts))
    figures.count("bad_served_inputs_clean", sum(v.clean for v in verdicts))
    figures.note("served_refusals_by_type", dict(Counter(type(v.error).__name__ for v in verdicts)))
    assert all(v.clean for v in verdicts), _report(verdicts, "served requests")


# --------------------------------------------------------------------------------------------
# Config loaders
# --------------------------------------------------------------------------------------------

JOB_RANGE = [
    ("train.steps", lambda r: -r.randint(0, 9)), ("train.batch_size", 0), ("train.lr", lambda r: -r.random()),
    ("train.lr", 0.0), ("train.grad_clip", -1.0), ("train.log_every", -1), ("train.checkpoint_every", -2),
    ("distributed.num_workers", 0), ("distributed.cpus_per_worker", 0.0),
    ("distributed.zero_stage", lambda r: r.choice([-1, 4, 7])),
    ("distributed.max_failures", -2), ("distributed.keep_checkpoints", 0), ("model.flow.depth", 0),
    ("model.flow.hidden", -4), ("model.flow.clamp", 0.0), ("model.operator.rank", 0),
    ("model.operator.time_embed_dim", 7),
    ("model.operator.kernel_size", 0), ("model.operator.styles", ["a", "a"]), ("model.sampler.steps", 0),
    ("model.sampler.t_end", lambda r: r.choice([0.0, 1.0, 1.5, -0.5])), ("model.sampler.compress_tol", -1e-3),
    ("model.loss.s", -0.1), ("model.loss.weights.pred", -1.0), ("model.image_shape", [1, 0, 32]),
    ("data.maxcount", 0), ("data.limit", 0), ("data.heldout_limit", -1), ("data.shards", ""),
    ("mlflow.sample_grid", -1), ("mlflow.alias", lambda r: r.choice(["a b", "x/y", "", "café"])),
    ("mlflow.experiment", ""), ("name", lambda r: r.choice(["", "../etc", "a b", "-x", "x" * 200, "runs/x"])),
]
JOB_COMBOS = [
    ({"train.batch_size": lambda r: r.choice([3, 5, 7, 33, 65]), "distributed.num_workers": 2}, "not divisible"),
    ({"train.batch_size": 64, "distributed.num_workers": lambda r: r.choice([3, 5, 7, 12])}, "not divisible"),
    ({"distributed.fault_injection.rank": lambda r: r.randint(2, 9), "distributed.num_workers": 2,
      "distributed.max_failures": 1}, "fault_injection.rank"),
    ({"distributed.fault_injection.rank": 0, "distributed.max_failures": 0}, "max_failures"),
    ({"distributed.fault_injection.rank": 0, "distributed.max_failures": 1, "distributed.fault_injection.step": 5000,
      "train.steps": 10}, "fault_injection.step"),
    ({"model.image_shape": lambda r: r.choice([[3, 32, 32], [1, 32, 16]])}, "image_shape"),
    ({"data.source": "digits", "data.heldout_split": "test"}, "digits"),
    ({"data.source": "none", "data.prefix": None}, "prefix"),
    ({"distributed.deepspeed_config": "infra/deepspeed/zero2.json", "distributed.zero_stage": 1},
     "zero_optimization.stage"),
    ({"distributed.deepspeed_config": "no/such/deepspeed.json"}, "not found"),
]
EVAL_RANGE = [
    ("sampling.n", 1), ("sampling.agreement_n", 0), ("sampling.max_fid", lambda r: -r.random()), ("fid.n_real", 1),
    ("promotion.max_attempts", 0), ("promotion.lock_timeout_s", 0.0), ("promotion.min_improvement", -1.0),
    ("mlflow.version", 0), ("mlflow.request_timeout_s", 0.0), ("mlflow.alias", "a b"), ("ray.num_cpus", 0.0),
    ("projection.sigma", 0.0), ("style.strip_steps", 1), ("promotion.champion_alias", "x y"),
]
EVAL_COMBOS = [
    ({"promotion.champion_alias": "challenger", "mlflow.alias": "challenger"}, "distinct aliases"),
    ({"mlflow.alias": None, "mlflow.version": None}, "mlflow.alias or mlflow.version"),
]


def _load_job(data, channel: str, tmp_path, i: int):
    if channel == "file":
        path = tmp_path / f"job{i}.yaml"
        path.write_text(yaml.safe_dump(data))
        return lambda: load_job_config(path)
    return lambda: load_job_config(base=data)


@pytest.mark.timeout(300)
def test_job_config_loader_refuses_every_bad_config_cleanly(tmp_path, figures):
    base = to_dict(JobConfig())
    load_job_config(base=base)  # the starting point is valid
    rng = random.Random("job-config")
    verdicts, unnamed = [], []
    for i in range(CONFIG_CASES):
        data, what, fragment = mutate_config(base, JobConfig, rng, JOB_RANGE, JOB_COMBOS)
        channel = rng.choice(["mapping", "file"])
        verdict = judge(f"#{i} {channel}: {what}", _load_job(data, channel, tmp_path, i))
        verdicts.append(verdict)
        if verdict.clean and fragment not in str(verdict.error):
            unnamed.append(f"#{i} {what}: message does not name {fragment!r}: {verdict.error}")
    figures.count("bad_configs_tried", len(verdicts))
    figures.count("bad_configs_clean", sum(v.clean for v in verdicts))
    assert all(v.clean for v in verdicts), _report(verdicts, "job configs")
    assert not unnamed, "\n".join(unnamed[:10])


@pytest.mark.timeout(120)
def test_overrides_refuse_every_bad_setting_cleanly(figures):
    """`--set key=value` as the command lines pass it: values parsed as JSON, keys must exist."""
    rng = random.Random("overrides")
    cases = ["train.steps", "train.steps=", "=3", "train.stepz=3", "train.steps.x=3", "nothing=1", "train=3",
             "model.flow.depth=two", "distributed.zero_stage=9", "model.image_shape=[1,8]", "train.lr=-1",
             "mlflow.registered_model=", "distributed.precision=fp64", "data.verify=maybe", "name=a/b"]
    sections, keys = ["train", "model.flow", "distributed"], ["x", "steps_", "Depth"]
    cases += [f"{rng.choice(sections)}.{rng.choice(keys)}={rng.randint(0, 9)}" for _ in range(35)]
    verdicts = [judge(f"--set {c}", lambda c=c: load_job_config(None, [c])) for c in cases]
    figures.count("bad_configs_tried", len(verdicts))
    figures.count("bad_configs_clean", sum(v.clean for v in verdicts))
    assert all(v.clean for v in verdicts), _report(verdicts, "overrides")


@pytest.mark.timeout(120)
def test_eval_config_loader_refuses_every_bad_config_cleanly(figures):
    base = to_dict(EvalConfig())
    load_eval_config(base=base)
    rng = random.Random("eval-config")
    verdicts = []
    for i in range(EVAL_CONFIG_CASES):
        data, what, _ = mutate_config(base, EvalConfig, rng, EVAL_RANGE, EVAL_COMBOS)
        verdicts.append(judge(f"#{i}: {what}", lambda data=data: load_eval_config(base=data)))
    figures.count("bad_configs_tried", len(verdicts))
    figures.count("bad_configs_clean", sum(v.clean for v in verdicts))
    assert all(v.clean for v in verdicts), _report(verdicts, "evaluation configs")
