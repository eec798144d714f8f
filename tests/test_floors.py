"""Quality floors: a version below its kind's floors never becomes champion (unless forced).

The registry tests run on a real MLflow registry (SQLite, conftest's session store) with the
default floors of `EvalConfig`:

- one-step: an untrained model (what a failed run registers) is refused by the FID floor of the
  default offline classifier, and the reason says by how much; `force=true` promotes it anyway,
  and says so on the version, the run and the decision;
- projective: a model whose projector was fitted to noise is refused by the reconstruction and
  denoising floors; principal-component projectors fitted to digits (k = 32, then k = 64) are
  genuinely useful models: the first is promoted, the better one replaces it.
"""

from __future__ import annotations

import math

import pytest
import torch

from linearizer.config import ConfigError, to_dict
from linearizer.data.mnist import load_mnist
from linearizer.kinds import get_kind
from linearizer.metrics.classifier import DEFAULT_BATCH_SIZE, DEFAULT_LR, DEFAULT_SEED, NAME, cache_path
from linearizer.metrics.fid import FIDResult
from linearizer.projective.defaults import projective_config
from pipelines.evaluate import evaluate, load_eval_config
from pipelines.evaluate.common import Check, client_for, fid_floor
from pipelines.evaluate.config import DEFAULT_FID_FLOORS, FidConfig
from pipelines.evaluate.promotion import Scorecard, decide
from tests.registry_models import TINY_FID, eval_cfg, onestep_model, register

pytestmark = pytest.mark.usefixtures("one_thread")


# --------------------------------------------------------------------------------------------
# Checks, floors and the rule
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("check, passed, shortfall", [
    (Check("fid", "<=", 350.0, 2100.0), False, "misses by 1750 (6x the bound)"),
    (Check("fid", "<=", 350.0, 300.0), True, ""),
    (Check("agreement_db", ">=", 30.0, 25.5), False, "misses by 4.5"),
    (Check("agreement_db", ">=", 30.0, math.nan), False, "the value is NaN"),
    (Check("fid", "<=", math.nan, 10.0, "no FID floor is known"), False, "no floor could be set"),
])
def test_check_says_by_how_much_it_fails(check, passed, shortfall):
    assert (check.passed, check.shortfall) == (passed, shortfall)
    assert str(check).endswith("pass" if passed else f"FAIL, {shortfall}")


def fid_result(value: float, recipe: str) -> FIDResult:
    return FIDResult(value, NAME, 1000, 512, recipe=recipe, weights="0123456789abcdef")


def test_fid_floor_comes_from_the_feature_network():
    cfg = load_eval_config()
    default = next(iter(DEFAULT_FID_FLOORS)).split("/", 1)[1]
    (auto,) = fid_floor(cfg, "auto", fid_result(400.0, default), "sampling.max_fid")
    assert (auto.bound, auto.passed) == (DEFAULT_FID_FLOORS[f"{NAME}/{default}"], False)
    assert auto.source == f"fid.floors[{NAME}/{default}]"
    (explicit,) = fid_floor(cfg, 500.0, fid_result(400.0, default), "sampling.max_fid")
    assert explicit.passed and explicit.source == "sampling.max_fid"
    (unknown,) = fid_floor(cfg, "auto", fid_result(1.0, "steps20-bs128-lr0.002-seed0"), "sampling.max_fid")
    assert not unknown.passed and "no FID floor is known for mnist-classifier-v1/steps20-" in unknown.source
    assert fid_floor(cfg, None, fid_result(1e9, default), "sampling.max_fid") == []


def test_default_fid_floor_is_keyed_by_the_default_classifier_recipe():
    fid = FidConfig()
    recipe = cache_path(None, fid.classifier_steps, DEFAULT_BATCH_SIZE, DEFAULT_LR, DEFAULT_SEED, fid.classifier_limit)
    assert f"{NAME}/{recipe.name}" in fid.floors  # the floor applies to what an evaluation uses by default


@pytest.mark.parametrize("overrides, message", [
    (['fid.floors={"mnist-classifier-v1/x": -1}'], r"fid.floors\['mnist-classifier-v1/x'\] must be a finite number > 0"),
    (['fid.floors={"x": "high"}'], "fid.floors.x must be a number"),
    (["sampling.max_fid=-3"], "sampling.max_fid must be > 0"),
    (["sampling.max_fid=automatic"], "sampling.max_fid"),
])
def test_floor_settings_are_checked(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_eval_config(None, overrides)


def card(version: int, value: float, passed: bool = True) -> Scorecard:
    return Scorecard(version, passed, "fid", value, False, "sampling/fid", "" if passed else "fid = 900 (needs <= 350)")


@pytest.mark.parametrize("challenger, champion, force, action, forced", [
    (card(2, 900.0, passed=False), None, False, "rejected", False),
    (card(2, 900.0, passed=False), None, True, "promoted", True),
    (card(2, 900.0, passed=False), card(1, 100.0), True, "kept", True),      # forced past floors, not past ranking
    (card(2, 900.0, passed=False), card(1, 990.0, passed=False), True, "promoted", True),
    (card(2, 100.0), None, True, "promoted", False),                         # nothing to force
])
def test_force_overrides_the_floors_and_says_so(challenger, champion, force, action, forced):
    decision = decide(challenger, champion, 0.0, None if champion is None else champion.version, force=force)
    assert (decision.action, decision.forced) == (action, forced), decision.reason
    if forced:
        assert decision.reason.startswith("FORCED past failed floors (fid = 900")
    elif action == "rejected":
        assert decision.reason == "fails its quality floors: fid = 900 (needs <= 350)"


# --------------------------------------------------------------------------------------------
# A real registry with the default floors
# --------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_model_that_draws_noise_is_refused_and_force_is_recorded(mlflow_store, tmp_path, tmp_path_factory):
    name = "floors-onestep"
    client = client_for(mlflow_store.tracking_uri)
    noise = register(mlflow_store, name, *onestep_model(0), tmp_path)
    # The default classifier (its recipe has a floor), in a private cache: it trains once here.
    cache = f"fid.cache_dir={tmp_path_factory.mktemp('default-classifier')}"
    cfg = eval_cfg(mlflow_store, tmp_path, name, cache, "sampling.n=256", floors=True)

    refused = evaluate(cfg)
    assert refused.passed is False and refused.decision.action == "rejected"
    assert refused.metrics["fid"] > 2 * next(iter(DEFAULT_FID_FLOORS.values()))
    assert "fid = " in refused.decision.reason and "x the bound)" in refused.decision.reason
    assert refused.metrics["agreement_db"] > 60  # the collapse is exact; it is the samples that are bad
    assert not client.get_registered_model(name).aliases.get("champion")
    assert str(client.get_model_version_by_alias(name, "challenger").version) == noise
    tags = client.get_model_version(name, noise).tags
    assert tags["eval.decision"] == "rejected" and tags["eval.forced"] == "false"
    assert "fid.floors[mnist-classifier-v1/steps800-bs128-lr0.002-seed0]" in tags["eval.failures"]
    report = (refused.report_dir / "report.md").read_text()
    assert "| quality floors | FAIL |" in report and "x the bound)" in report

    forced = evaluate(load_eval_config(None, ["force=true"], base=to_dict(cfg)))
    assert forced.passed is False and forced.decision.action == "promoted" and forced.decision.forced
    assert str(client.get_model_version_by_alias(name, "champion").version) == noise
    tags = client.get_model_version(name, noise).tags
    assert tags["eval.forced"] == "true" and tags["eval.decision_reason"].startswith("FORCED past failed floors")
    assert client.get_run(forced.run_id).data.tags["linearizer.forced"] == "true"


def test_a_floor_unknown_for_the_feature_network_refuses(mlflow_store, tmp_path, tmp_path_factory):
    name = "floors-unknown"
    register(mlflow_store, name, *onestep_model(0), tmp_path)
    cache = f"fid.cache_dir={tmp_path_factory.mktemp('tiny-classifier')}"
    outcome = evaluate(eval_cfg(mlflow_store, tmp_path, name, *TINY_FID, cache, floors=True))
    assert outcome.decision.action == "rejected"
    assert "no FID floor is known for mnist-classifier-v1/steps20-bs128-lr0.002-seed0-limit256" in outcome.decision.reason


def projective(fitted_to: torch.Tensor, rank: int):
    """A projective model whose projector spans the top-`rank` principal directions of `fitted_to`'s codes."""
    cfg = projective_config(rank=rank, depth=1, hidden=4)
    torch.manual_seed(0)
    model = get_kind("projective").build(cfg)
    model.initialize(fitted_to)
    return model, cfg


def test_projective_floors_refuse_noise_then_promote_good_and_better(mlflow_store, tmp_path):
    name = "floors-projective"
    client = client_for(mlflow_store.tracking_uri)
    digits = load_mnist("train", limit=512)[0]
    cfg = eval_cfg(mlflow_store, tmp_path, name, "fid.extractor=off", "projection.n=32", "projection.ood=uniform",
                   "projection.inpaint_iterations=2", floors=True)

    register(mlflow_store, name, *projective(torch.rand(8, 1, 32, 32), 4), tmp_path)
    refused = evaluate(cfg)
    assert refused.decision.action == "rejected"
    assert refused.metrics["idempotency_max"] < 1e-4  # idempotent by construction, yet useless
    failed = {c.split(" = ")[0] for c in client.get_model_version(name, refused.version).tags["eval.failures"]
              .split("; ")}
    assert failed == {"fixed_point_error", "denoise_gain_db"}
    assert refused.metrics["denoise_gain_db"] < 0  # returning the noisy digit unchanged would be better

    good = register(mlflow_store, name, *projective(digits, 32), tmp_path)
    first = evaluate(cfg)
    assert first.passed and (first.decision.action, first.version) == ("promoted", good)
    assert first.metrics["fixed_point_error"] < 0.5 and first.metrics["denoise_gain_db"] > 0

    better = register(mlflow_store, name, *projective(digits, 64), tmp_path)
    second = evaluate(cfg)
    assert second.metrics["denoise_psnr"] > first.metrics["denoise_psnr"]
    assert (second.decision.action, second.decision.replaced) == ("promoted", int(good))
    assert str(client.get_model_version_by_alias(name, "champion").version) == better


def test_style_floor_is_the_identity_baseline(mlflow_store, tmp_path):
    from tests.registry_models import style_model

    name = "floors-style"
    register(mlflow_store, name, *style_model(), tmp_path)
    outcome = evaluate(eval_cfg(mlflow_store, tmp_path, name, "style.n=4", floors=True))
    m = outcome.metrics
    gains = [m["psnr.grade"] - m["content_psnr.grade"], m["psnr.pencil"] - m["content_psnr.pencil"]]
    assert m["gain_db"] == pytest.approx(min(gains))
    assert outcome.passed is (min(gains) >= 0.0)
    assert outcome.decision.action == ("promoted" if outcome.passed else "rejected")
