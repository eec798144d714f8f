"""The quality race script (bench/quality_race.py): equal parameters, equal CPU budget, every sampler scored."""

from __future__ import annotations

import json

import pytest

from bench.quality_race import BASELINE_STEPS, LINEARIZER_STEPS, count, main, matched_baseline
from linearizer.config import FlowConfig, ModelConfig, OperatorConfig
from linearizer.io import load_model
from linearizer.kinds import get_kind

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("hidden, rank", [(8, 2), (16, 4)])
def test_baseline_is_matched_within_ten_percent(hidden, rank):
    cfg = ModelConfig(kind="onestep", image_shape=(1, 32, 32), flow=FlowConfig(depth=2, hidden=hidden),
                      operator=OperatorConfig(rank=rank))
    target = count(get_kind("onestep").build(cfg))
    baseline, n = matched_baseline(cfg, target)
    assert baseline.kind == "fm_baseline" and n == count(get_kind("fm_baseline").build(baseline))
    assert abs(n - target) <= 0.1 * target


@pytest.mark.slow
def test_race_trains_both_within_the_budget_and_scores_every_sampler(tmp_path):
    out = tmp_path / "race.json"
    assert main(["--budgets", "0.02", "--eval-n", "8", "--limit", "64", "--batch-size", "8",
                 "--set", "flow.hidden=8", "--set", "operator.rank=2", "--out", str(tmp_path / "grids"),
                 "--json", str(out), "--png", str(tmp_path / "race.png")]) == 0
    results = json.loads(out.read_text())
    (row,) = results["budgets"]
    for kind, steps in (("onestep", LINEARIZER_STEPS), ("fm_baseline", BASELINE_STEPS)):
        assert sorted(row[kind]["fid"], key=int) == [str(s) for s in steps]
        assert all(v > 0 for v in row[kind]["fid"].values())
        # the budget bounds training: it stops within one step past 1.2 s of CPU time
        assert row[kind]["steps"] >= 1 and row[kind]["cpu_s"] < 1.2 + 5 * row[kind]["probe_step_cpu_s"]
    one, hundred = row["onestep"]["fid"]["1"], row["onestep"]["fid"]["100"]
    assert one == pytest.approx(hundred, rel=1e-3)  # B collapses the 100-step sampler
    sizes = [results["models"][k]["parameters"] for k in ("onestep", "fm_baseline")]
    assert abs(sizes[0] - sizes[1]) <= 0.1 * sizes[0]
    assert results["fid_extractor"].startswith("mnist-classifier-v1/steps800-")
    assert (tmp_path / "race.png").stat().st_size > 0


@pytest.mark.slow
def test_extend_adds_budgets_in_parallel_and_scores_the_goal(tmp_path):
    tiny = ["--eval-n", "8", "--limit", "64", "--batch-size", "8", "--set", "flow.hidden=8",
            "--set", "operator.rank=2", "--out", str(tmp_path / "runs")]
    first, second = tmp_path / "first.json", tmp_path / "second.json"
    assert main(["--budgets", "0.01", *tiny, "--json", str(first)]) == 0
    assert main(["--budgets", "0.02", *tiny, "--jobs", "2", "--goal-n", "12", "--extend", str(first),
                 "--json", str(second)]) == 0
    results = json.loads(second.read_text())
    assert [r["budget_cpu_min"] for r in results["budgets"]] == [0.01, 0.02]
    assert len(results["commands"]) == 2 and "--extend" in results["commands"][1]
    goal = results["goal"]
    top = results["budgets"][1]
    assert goal["budget_cpu_min"] == 0.02 and goal["samples"] == 12
    assert goal["linearizer_1_step"] == top["onestep"]["fid_goal_n"]["1"]
    assert goal["baseline_4_steps"] == top["fm_baseline"]["fid_goal_n"]["4"]
    assert goal["met"] == (goal["linearizer_1_step"] < goal["baseline_4_steps"])
    model, cfg = load_model(tmp_path / "runs" / "onestep-0.02min")
    assert cfg.kind == "onestep" and count(model) == results["models"]["onestep"]["parameters"]
    # a file measured with another protocol cannot be extended
    with pytest.raises(SystemExit, match="eval_n differs"):
        main(["--budgets", "0.03", *tiny[2:], "--eval-n", "9", "--extend", str(second)])


@pytest.mark.slow
def test_design_options_are_scored_side_by_side_against_the_race_baseline(tmp_path):
    from bench import onestep_options

    race = tmp_path / "race.json"
    tiny = ["--eval-n", "8", "--limit", "64", "--out", str(tmp_path / "runs")]
    assert main(["--budgets", "0.01", *tiny, "--batch-size", "8", "--set", "flow.hidden=8", "--json", str(race)]) == 0
    out = tmp_path / "options.json"
    teacher = tmp_path / "runs" / "fm_baseline-0.01min"  # the race saves every model it trains
    assert onestep_options.main(["--budget", "0.01", *tiny, "--options", "paper", "ssim-perceptual", "distilled",
                                 "--teacher", str(teacher), "--teacher-steps", "2", "--pairs", "64",
                                 "--race", str(race), "--json", str(out)]) == 0
    results = json.loads(out.read_text())
    assert results["baseline"]["fid"] == json.loads(race.read_text())["budgets"][0]["fm_baseline"]["fid"]
    assert set(results["options"]) == {"paper", "ssim-perceptual", "distilled"}
    assert results["options"]["ssim-perceptual"]["config"]["loss"]["perceptual"] == "ssim"
    distilled = results["options"]["distilled"]["distilled"]
    assert distilled["pairs"] == 64 and distilled["teacher_steps"] == 2 and distilled["pairs_cpu_s"] > 0
    assert "distilled" not in results["options"]["paper"]
    # a later run adds its options to the same file
    assert onestep_options.main(["--budget", "0.01", *tiny, "--options", "rank-32",
                                 "--race", str(race), "--json", str(out), "--png", str(tmp_path / "o.png")]) == 0
    merged = json.loads(out.read_text())
    assert set(merged["options"]) == {"paper", "ssim-perceptual", "distilled", "rank-32"}
    assert merged["options"]["paper"] == results["options"]["paper"] and len(merged["commands"]) == 2
    assert (tmp_path / "o.png").stat().st_size > 0
    # another seed or budget is another protocol: refused, the file kept as it was
    before = out.read_text()
    with pytest.raises(SystemExit, match=r"'seed': 0.*'seed': 1.*write to a new file"):
        onestep_options.main(["--budget", "0.01", *tiny, "--options", "rank-32", "--seed", "1", "--json", str(out)])
    assert out.read_text() == before
    # a race that finishes after the options: its baseline is copied in afterwards
    merged["baseline"] = None
    out.write_text(json.dumps(merged))
    assert onestep_options.main(["--refresh-baseline", "--race", str(race), "--json", str(out)]) == 0
    refreshed = json.loads(out.read_text())
    assert refreshed["baseline"]["fid"] == results["baseline"]["fid"] and len(refreshed["commands"]) == 3
    assert all(o["fid"]["1"] > 0 and o["steps"] >= 1 for o in results["options"].values())


def test_plot_overlays_a_line_per_design_option(tmp_path, monkeypatch):
    from matplotlib.axes import Axes

    labels: list[str] = []
    plot = Axes.plot

    def recording(self, *args, label=None, **kwargs):
        labels.append(label)
        return plot(self, *args, label=label, **kwargs)

    monkeypatch.setattr(Axes, "plot", recording)
    race = {"budgets": [{"budget_cpu_min": b, "onestep": {"fid": {str(s): 100.0 / b for s in LINEARIZER_STEPS}},
                         "fm_baseline": {"fid": {str(s): 50.0 / b for s in BASELINE_STEPS}}} for b in (1, 2)],
            "fid_extractor": "mnist-classifier-v1@abc", "eval_n": 8}
    (tmp_path / "race.json").write_text(json.dumps(race))
    for budget in (1, 2):
        options = {"budget_cpu_min": budget, "options": {"a": {"fid": {"1": 80.0 / budget}},
                                                         "b": {"fid": {"1": 70.0 / budget}}}}
        (tmp_path / f"o{budget}.json").write_text(json.dumps(options))
    png = tmp_path / "race.png"
    assert main(["--plot-only", str(tmp_path / "race.json"), "--png", str(png), "--overlay",
                 str(tmp_path / "o1.json"), str(tmp_path / "o2.json"), "--overlay-option", "a", "b", "missing"]) == 0
    assert png.stat().st_size > 0
    drawn = [label for label in labels if label and "Linearizer, 1 step, " in label]
    assert drawn == ["Linearizer, 1 step, a", "Linearizer, 1 step, b"]  # an option in no file draws nothing
