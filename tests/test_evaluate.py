"""Evaluation pipelines and promotion on a real MLflow registry (SQLite, session store of conftest).

Tiny models of each kind are built, saved with `linearizer.io` and registered with the training
pipeline's own `pipelines.registry.register_model`. A one-step model "built to fail" has its
collapsed B made stale: its time-dependent operator is perturbed after `finalize`, so one-step
samples no longer match the multi-step sampler B was collapsed from.
"""

from __future__ import annotations

import base64
import io
import threading
import time
from pathlib import Path

import pytest
import torch
from PIL import Image

from linearizer.config import ConfigError, to_dict
from pipelines.evaluate import evaluate, load_eval_config
from pipelines.evaluate.__main__ import main as evaluate_main
from pipelines.evaluate.common import Check, EvalResult, EvaluationError, choose_evaluation, client_for
from pipelines.evaluate.promotion import (LockTimeout, RegistryLock, Scorecard, claim, decide, evaluation_state,
                                          record_and_promote)
from pipelines.evaluate.report import write_report
from tests.registry_models import TINY_FID, eval_cfg, onestep_model, projective_model, register, style_model


def eval_runs(client, name: str) -> list:
    experiment = client.get_experiment_by_name("linearizer-evaluation")
    return client.search_runs([experiment.experiment_id], f"tags.`linearizer.model_name` = '{name}'")


@pytest.fixture(scope="module")
def fid_cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("fid-cache"))


# --------------------------------------------------------------------------------------------
# Config and pure rules
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("overrides, message", [
    (["sampling.max_fd=3"], "unknown config key 'sampling.max_fd'"),
    (["mlflow.alias=null"], "set mlflow.alias or mlflow.version"),
    (["promotion.champion_alias=challenger"], "need distinct aliases"),
    (["sampling.n=1"], "sampling.n must be >= 2"),
    (["evaluation=denoise"], "evaluation must be one of"),
])
def test_config_rejects(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_eval_config(None, overrides)


@pytest.mark.parametrize("overrides, evaluation, message", [
    (["fid.extractor=off"], "sampling", "sampling.primary is 'fid' but fid.extractor is 'off'"),
    (["fid.extractor=off"], "projection", None),  # its primary metric is denoise_psnr
    (["fid.extractor=off", "projection.max_fid=50"], "projection", "projection.max_fid is set"),
    (["fid.extractor=off", "sampling.primary=agreement_db"], "sampling", "sampling.max_fid is 'auto'"),
    (["fid.extractor=off", "sampling.primary=agreement_db", "sampling.max_fid=null"], "sampling", None),
])
def test_config_checks_for_the_chosen_evaluation(overrides, evaluation, message):
    cfg = load_eval_config(None, overrides)
    if message is None:
        cfg.check_for(evaluation)
    else:
        with pytest.raises(ConfigError, match=message):
            cfg.check_for(evaluation)


def card(version: int, value: float, passed: bool = True, comparable: str = "sampling/fid", higher: bool = False):
    return Scorecard(version, passed, "fid", value, higher, comparable)


@pytest.mark.parametrize("challenger, champion, champion_version, margin, action, replaced", [
    (card(2, 10.0, passed=False), card(1, 50.0), 1, 0.0, "rejected", None),
    (card(2, 10.0), None, None, 0.0, "promoted", None),
    (card(2, 10.0), card(1, 50.0), 1, 0.0, "promoted", 1),
    (card(2, 50.0), card(1, 50.0), 1, 0.0, "kept", None),           # a tie does not win
    (card(2, 45.0), card(1, 50.0), 1, 10.0, "kept", None),          # not by more than the margin
    (card(2, 60.0), card(1, 50.0, passed=False), 1, 0.0, "promoted", 1),  # champion fails its thresholds
    (card(2, 10.0), card(1, 50.0, comparable="sampling/fid/other"), 1, 0.0, "kept", None),
    (card(2, 10.0), None, 1, 0.0, "kept", None),                     # champion never evaluated
    (card(1, 10.0), card(1, 50.0), 1, 0.0, "kept", None),            # the champion itself
    (card(2, 40.0, higher=True), card(1, 30.0, higher=True), 1, 0.0, "promoted", 1),
])
def test_decide(challenger, champion, champion_version, margin, action, replaced):
    decision = decide(challenger, champion, margin, champion_version)
    assert (decision.action, decision.replaced) == (action, replaced), decision.reason


def test_evaluation_state_follows_tags():
    cfg = load_eval_config().promotion
    now = 1000.0
    assert evaluation_state({}, cfg, now) == "new"
    assert evaluation_state({"eval.status": "done"}, cfg, now) == "done"
    running = {"eval.status": "running", "eval.claimed_at": str(now - 10)}
    assert evaluation_state(running, cfg, now) == "running"
    assert evaluation_state(running, cfg, now + cfg.claim_ttl_s) == "stale"
    assert evaluation_state({"eval.status": "failed", "eval.attempts": "1"}, cfg, now) == "failed"
    assert evaluation_state({"eval.status": "failed", "eval.attempts": str(cfg.max_attempts)}, cfg, now) == "exhausted"


@pytest.mark.parametrize("requested, kind, expected", [
    ("auto", "onestep", "sampling"), ("auto", "projective", "projection"), ("auto", "style", "style"),
    ("sampling", "onestep", "sampling"), ("projection", "onestep", None), ("auto", "toy", None),
])
def test_choose_evaluation(requested, kind, expected):
    if expected is None:
        with pytest.raises(EvaluationError, match=f"kind '{kind}'"):
            choose_evaluation(requested, kind, "m v1")
    else:
        assert choose_evaluation(requested, kind, "m v1") == expected


def test_report_has_metrics_and_embedded_pictures(tmp_path):
    picture = torch.rand(3, 10, 14)
    result = EvalResult("sampling", {"fid": 12.5, "agreement_db": 80.0}, [Check("fid", "<=", 10.0, 12.5)], "fid",
                        False, "sampling/fid", images={"samples": picture}, info={"fid_extractor": "x-v1"})
    paths = write_report(result, {"model": "m v3"}, None, tmp_path)
    assert sorted(p.name for p in paths) == ["report.html", "report.md", "samples.png"]
    md = (tmp_path / "report.md").read_text()
    assert "| fid | 12.5 |" in md and "| quality floors | FAIL |" in md and "](images/samples.png)" in md
    html = (tmp_path / "report.html").read_text()
    data = html.split("data:image/png;base64,")[1].split("'")[0]
    assert Image.open(io.BytesIO(base64.b64decode(data))).size == (14, 10)
    assert "x-v1" in html


# --------------------------------------------------------------------------------------------
# The registry: evaluation, tags, report, promotion
# --------------------------------------------------------------------------------------------


def test_sampling_evaluation_records_and_promotes(mlflow_store, tmp_path, fid_cache):
    name = "eval-sampling"
    client = client_for(mlflow_store.tracking_uri)
    good = register(mlflow_store, name, *onestep_model(0), tmp_path)
    cfg = eval_cfg(mlflow_store, tmp_path, name, *TINY_FID, f"fid.cache_dir={fid_cache}")

    outcome = evaluate(cfg)
    assert (outcome.status, outcome.version, outcome.evaluation) == ("evaluated", good, "sampling")
    assert outcome.passed is True
    assert outcome.metrics["agreement_db"] > 60.0  # an exact collapse agrees to round-off
    assert outcome.metrics["fid"] > 0 and outcome.metrics["samples_per_s"] > 0
    assert outcome.decision.action == "promoted"
    assert str(client.get_model_version_by_alias(name, "champion").version) == good

    run = client.get_run(outcome.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.metrics["agreement_db"] == pytest.approx(outcome.metrics["agreement_db"])
    key = run.data.params["info.fid_extractor"]  # name/recipe@weights hash
    assert key.startswith("mnist-classifier-v1/steps20-") and len(key.split("@")[1]) == 16
    assert run.data.tags["linearizer.model_version"] == good and run.data.tags["linearizer.decision"] == "promoted"
    artifacts = {f.path for f in client.list_artifacts(outcome.run_id, "report")}
    assert {"report/report.md", "report/report.html", "report/images"} <= artifacts
    report = Path(client.download_artifacts(outcome.run_id, "report/report.md", str(tmp_path)))
    assert "mnist-classifier-v1" in report.read_text() and "promoted" in report.read_text()

    tags = client.get_model_version(name, good).tags
    assert tags["eval.status"] == "done" and tags["eval.passed"] == "true"
    assert tags["eval.run_id"] == outcome.run_id and tags["eval.decision"] == "promoted"
    assert float(tags["eval.metric.fid"]) == pytest.approx(outcome.metrics["fid"], rel=1e-6)
    assert tags["eval.comparable"] == f"sampling/fid/{key}/n32/real128"

    # Built to fail: a stale B misses the agreement floor; the champion stays.
    bad = register(mlflow_store, name, *onestep_model(1, stale=0.5), tmp_path)
    failed = evaluate(cfg)
    assert failed.version == bad and failed.passed is False and failed.decision.action == "rejected"
    assert failed.metrics["agreement_db"] < 30.0
    assert str(client.get_model_version_by_alias(name, "champion").version) == good
    tags = client.get_model_version(name, bad).tags
    assert tags["eval.passed"] == "false" and "agreement_db" in tags["eval.failures"]
    assert tags["eval.decision"] == "rejected"

    # Idempotent: evaluating again does nothing new; --force evaluates again.
    runs_before = len(eval_runs(client, name))
    again = evaluate(cfg)
    assert (again.status, again.state, again.run_id) == ("skipped", "done", None)
    assert len(eval_runs(client, name)) == runs_before
    assert client.get_model_version(name, bad).tags["eval.run_id"] == failed.run_id
    forced = evaluate(load_eval_config(None, ["force=true"], base=to_dict(cfg)))
    assert forced.status == "evaluated" and forced.run_id != failed.run_id
    assert len(eval_runs(client, name)) == runs_before + 1
    assert client.get_model_version(name, bad).tags["eval.run_id"] == forced.run_id
    assert client.get_model_version(name, bad).tags["eval.attempts"] == "2"


def test_challenger_that_beats_the_champion_takes_the_alias(mlflow_store, tmp_path):
    name = "eval-beats"
    client = client_for(mlflow_store.tracking_uri)
    cfg = eval_cfg(mlflow_store, tmp_path, name, "fid.extractor=off", "sampling.primary=agreement_db",
                   "sampling.min_agreement_db=20")
    slightly_stale = register(mlflow_store, name, *onestep_model(0, stale=0.01), tmp_path)
    first = evaluate(cfg)
    assert first.passed and first.decision.action == "promoted"
    exact = register(mlflow_store, name, *onestep_model(0), tmp_path)
    second = evaluate(cfg)
    assert second.metrics["agreement_db"] > first.metrics["agreement_db"]
    assert (second.decision.action, second.decision.replaced) == ("promoted", int(slightly_stale))
    assert str(client.get_model_version_by_alias(name, "champion").version) == exact
    assert client.get_model_version(name, slightly_stale).tags["eval.demoted_by"] == exact

    # Not better by the configured margin: the champion is kept.
    register(mlflow_store, name, *onestep_model(2), tmp_path)
    third = evaluate(load_eval_config(None, ["promotion.min_improvement=1000"], base=to_dict(cfg)))
    assert third.passed and third.decision.action == "kept"
    assert str(client.get_model_version_by_alias(name, "champion").version) == exact


def test_evaluation_runs_in_a_ray_task(mlflow_store, tmp_path, ray_local):
    name = "eval-ray"
    register(mlflow_store, name, *onestep_model(0), tmp_path)
    outcome = evaluate(eval_cfg(mlflow_store, tmp_path, name, "ray.enabled=true", "fid.extractor=off",
                                "sampling.primary=agreement_db"))
    assert outcome.status == "evaluated" and outcome.passed and outcome.metrics["agreement_db"] > 60.0


def test_projection_evaluation(mlflow_store, tmp_path):
    name = "eval-projective"
    version = register(mlflow_store, name, *projective_model(), tmp_path)
    outcome = evaluate(eval_cfg(mlflow_store, tmp_path, name, "fid.extractor=off", "projection.n=8",
                                "projection.ood=uniform", "projection.inpaint_iterations=2"))
    assert (outcome.evaluation, outcome.version, outcome.passed) == ("projection", version, True)
    m = outcome.metrics
    # exact by construction: idempotent to float32 round-off on every probe, in-distribution or not
    assert m["idempotency_max"] < 1e-4
    assert m["idempotency_max"] == max(m[f"idempotency_{p}"] for p in ("noise", "noisy", "masked", "ood"))
    assert all(torch.isfinite(torch.tensor(v)) for v in m.values())
    assert (Path(outcome.report_dir) / "images" / "before_after.png").is_file()


def test_style_evaluation(mlflow_store, tmp_path):
    name = "eval-style"
    register(mlflow_store, name, *style_model(), tmp_path)
    outcome = evaluate(eval_cfg(mlflow_store, tmp_path, name, "style.n=4", "style.min_psnr=1000"))
    m = outcome.metrics
    assert outcome.evaluation == "style" and outcome.passed is False  # nothing reaches 1000 dB
    assert m["psnr"] == pytest.approx((m["psnr.grade"] + m["psnr.pencil"]) / 2)
    assert 0 < m["interpolation_step"] <= 1.0 + 1e-6
    assert {p.name for p in (Path(outcome.report_dir) / "images").iterdir()} == {
        "styles.png", "interpolation.png", "composition.png"}


# --------------------------------------------------------------------------------------------
# Clear errors
# --------------------------------------------------------------------------------------------


def test_missing_alias_version_and_model(mlflow_store, tmp_path):
    name = "eval-missing"
    register(mlflow_store, name, *onestep_model(0), tmp_path)
    with pytest.raises(EvaluationError, match=r"has no alias 'nightly'; aliases: \{'challenger': '1'\}"):
        evaluate(eval_cfg(mlflow_store, tmp_path, name, "mlflow.alias=nightly"))
    with pytest.raises(EvaluationError, match=r"has no version 7; .* versions: \[1\]"):
        evaluate(eval_cfg(mlflow_store, tmp_path, name, "mlflow.version=7"))
    with pytest.raises(EvaluationError, match="registered model 'no-such-model' not found"):
        evaluate(eval_cfg(mlflow_store, tmp_path, "no-such-model"))


@pytest.mark.timeout(60)
def test_unreachable_store_fails_fast(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    with pytest.raises(EvaluationError, match=r"http://127.0.0.1:9 is unreachable"):
        evaluate(load_eval_config(None, ["mlflow.tracking_uri=http://127.0.0.1:9", "mlflow.request_timeout_s=5"]))
    with pytest.raises(EvaluationError, match="no MLflow store at"):
        evaluate(load_eval_config(None, [f"mlflow.tracking_uri=sqlite:///{tmp_path}/absent.db"]))
    assert not (tmp_path / "absent.db").exists()
    assert evaluate_main(["--tracking-uri", "http://127.0.0.1:9", "--model", "m"]) == 3
    assert "unreachable" in capsys.readouterr().err


def test_wrong_kind_is_an_error_and_touches_nothing(mlflow_store, tmp_path, capsys):
    name = "eval-kind"
    version = register(mlflow_store, name, *onestep_model(0), tmp_path)
    cfg = eval_cfg(mlflow_store, tmp_path, name, "evaluation=projection")
    with pytest.raises(EvaluationError, match="evaluation 'projection' needs a model of kind 'projective', "
                                              f"but {name} v{version} is of kind 'onestep'"):
        evaluate(cfg)
    client = client_for(mlflow_store.tracking_uri)
    assert not any(k.startswith("eval.") for k in client.get_model_version(name, version).tags)
    args = ["--tracking-uri", mlflow_store.tracking_uri, "--model", name, "--evaluation", "style", "--local"]
    assert evaluate_main(args) == 3
    assert "needs a model of kind 'style'" in capsys.readouterr().err
    assert evaluate_main(args + ["--set", "style.nn=3"]) == 2


# --------------------------------------------------------------------------------------------
# Concurrency: the registry lock, claims and promotions
# --------------------------------------------------------------------------------------------


def test_registry_lock_excludes_and_breaks_when_abandoned(mlflow_store):
    client = client_for(mlflow_store.tracking_uri)
    inside, overlaps, entries = [0], [0], [0]

    def worker():
        for _ in range(3):
            with RegistryLock(client, "lock-test", ttl_s=30, timeout_s=60, poll_s=0.02):
                inside[0] += 1
                overlaps[0] += inside[0] > 1
                entries[0] += 1
                time.sleep(0.01)
                inside[0] -= 1

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert (entries[0], overlaps[0]) == (12, 0)

    held = RegistryLock(client, "lock-test", ttl_s=30)
    with held:
        with pytest.raises(LockTimeout, match="still held"):
            with RegistryLock(client, "lock-test", timeout_s=0.3, poll_s=0.05):
                pass
    # A holder that died: its lock expires and the next evaluation breaks it.
    client.create_registered_model("lock-test.evaluation-lock", tags={"owner": "dead", "expires_at": "0"})
    with RegistryLock(client, "lock-test", timeout_s=10, poll_s=0.05) as lock:
        assert client.get_registered_model(lock.name).tags["owner"] == lock.owner


def test_concurrent_evaluations_lose_and_duplicate_no_decision(mlflow_store):
    name = "eval-concurrent"
    client = client_for(mlflow_store.tracking_uri)
    client.create_registered_model(name)
    fids = {1: 40.0, 2: 10.0, 3: 30.0, 4: 20.0, 5: 5.0, 6: 25.0}
    for _ in fids:
        client.create_model_version(name, source="file:///nonexistent")
    cfg = load_eval_config(None, ["promotion.lock_timeout_s=60"]).promotion
    claims: dict[int, list[bool]] = {v: [] for v in fids}
    decisions = {}

    def evaluate_one(version: int):
        token = f"t{version}-{threading.get_ident()}"
        ok, _ = claim(client, name, str(version), cfg, token)
        claims[version].append(ok)
        if ok:
            result = EvalResult("sampling", {"fid": fids[version]}, [], "fid", False, "sampling/fid")
            decisions[version] = record_and_promote(client, name, str(version), result, f"run{version}", cfg, token)

    # every version twice (two schedulers), all at once
    threads = [threading.Thread(target=evaluate_one, args=(v,)) for v in fids for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(sorted(c) == [False, True] for c in claims.values())  # each version claimed exactly once
    assert str(client.get_model_version_by_alias(name, "champion").version) == "5"  # the best FID
    for version, decision in decisions.items():
        tags = client.get_model_version(name, str(version)).tags
        assert (tags["eval.status"], tags["eval.attempts"], tags["eval.decision"]) == ("done", "1", decision.action)
        if decision.action == "promoted" and decision.replaced is not None:
            assert fids[version] < fids[decision.replaced]  # every promotion beat the champion it replaced
            assert client.get_model_version(name, str(decision.replaced)).tags["eval.demoted_by"] == str(version)
    # Decisions were serialised: replayed in the order they were taken, each one compared the
    # challenger with the champion of that moment, and the last champion is the alias.
    order = sorted(decisions, key=lambda v: float(client.get_model_version(name, str(v)).tags["eval.decided_at"]))
    champion = None
    for version in order:
        decision = decisions[version]
        if decision.action == "promoted":
            assert decision.replaced == champion and (champion is None or fids[version] < fids[champion])
            champion = version
        else:
            assert decision.action == "kept" and fids[version] >= fids[champion]
    assert champion == 5
