"""The `linearizer` console script has one shape: `linearizer <kind> <verb>`, plus top-level utilities.

Every verb of every kind parses and has a --help; a bad option exits 2 (the shared exit statuses);
the spellings before this shape still run, with a one-line deprecation note; and one tiny
train-then-use run per kind goes through `linearizer.cli.main`, in process, as the console script
calls it.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from linearizer.cli import DEPRECATED, EXIT_BAD_INPUT, build_parser, main, upgrade_argv
from linearizer.kinds import builtin_kinds

pytestmark = pytest.mark.usefixtures("one_thread")

#: the verbs of each kind's command, and the top-level utilities.
VERBS = {
    "onestep": {"train", "sample", "invert", "interpolate", "evaluate"},
    "projective": {"train", "project"},
    "style": {"train", "apply", "interpolate", "compose"},
}
UTILITIES = {"train-classifier"}


def _choices(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """The subcommand name -> parser of `parser` (empty when it has none)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def test_the_top_level_holds_kinds_and_utilities_only():
    top = _choices(build_parser())
    assert set(top) == set(VERBS) | UTILITIES
    assert set(VERBS) <= set(builtin_kinds())  # every command group is a model kind
    for kind, verbs in VERBS.items():
        assert set(_choices(top[kind])) == verbs, kind
    assert not _choices(top["train-classifier"])


@pytest.mark.parametrize("argv", [[kind, verb] for kind, verbs in VERBS.items() for verb in sorted(verbs)]
                         + [[kind] for kind in VERBS] + [[u] for u in UTILITIES] + [[]])
def test_every_command_has_help(argv, capsys):
    with pytest.raises(SystemExit) as done:
        main([*argv, "--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: {' '.join(['linearizer', *argv])}")


@pytest.mark.parametrize("argv", [[kind, verb] for kind, verbs in VERBS.items() for verb in sorted(verbs)]
                         + [[u] for u in UTILITIES])
def test_a_bad_option_exits_2(argv, capsys):
    with pytest.raises(SystemExit) as refused:
        main([*argv, "--no-such-option", "1"])
    assert refused.value.code == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert "unrecognized arguments: --no-such-option" in err or "required" in err
    assert "Traceback" not in err


def test_an_unknown_verb_or_a_kind_alone(capsys):
    with pytest.raises(SystemExit) as refused:
        main(["onestep", "frobnicate"])
    assert refused.value.code == EXIT_BAD_INPUT and "invalid choice: 'frobnicate'" in capsys.readouterr().err
    assert main(["style"]) == 0  # a kind alone prints its verbs
    out = capsys.readouterr().out
    assert out.startswith("usage: linearizer style") and all(f"\n    {verb}" in out for verb in VERBS["style"])


def test_old_spellings_run_with_a_deprecation_note(tmp_path, capsys):
    assert upgrade_argv(["project", "train", "--out", "m"]) == ["projective", "train", "--out", "m"]
    assert upgrade_argv(["project", "--model", "m"]) == ["projective", "project", "--model", "m"]
    assert upgrade_argv(["sample", "--n", "4"]) == ["onestep", "sample", "--n", "4"]
    assert upgrade_argv(["style", "apply"]) == ["style", "apply"] and upgrade_argv([]) == []
    err = capsys.readouterr().err
    assert err.count("deprecated") == 3 and "use `linearizer projective train`" in err
    assert set(DEPRECATED) == VERBS["onestep"] | {"project"}
    assert main(["sample", "--model", str(tmp_path / "none"), "--out", str(tmp_path / "a.png")]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err.splitlines()
    assert err[0] == ("linearizer: `linearizer sample` is deprecated and goes in the next release; "
                      "use `linearizer onestep sample`")
    assert err[1].startswith("linearizer onestep sample: error:") and str(tmp_path / "none") in err[1]


# ----- one tiny run per kind through the console script ---------------------------------------


def _grid_side(n_per_side: int, image: int, pad: int = 2) -> int:
    return n_per_side * (image + pad) + pad


def test_onestep_train_then_sample(tmp_path):
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump({
        "kind": "onestep", "image_shape": [1, 8, 8], "flow": {"depth": 1, "hidden": 8},
        "operator": {"rank": 2, "time_embed_dim": 8, "hidden": 16}, "sampler": {"steps": 4},
        "loss": {"weights": {"pred": 0.5}}}))
    run = tmp_path / "run"
    assert main(["onestep", "train", "--out", str(run), "--config", str(config), "--limit", "16", "--steps", "2",
                 "--batch-size", "8", "--no-progress"]) == 0
    saved = json.loads((run / "model" / "config.json").read_text())["model"]
    assert saved["loss"]["weights"] == {"latent": 1.0, "noise": 1.0, "data": 1.0, "pred": 0.5}
    assert main(["onestep", "sample", "--model", str(run / "model"), "--n", "4", "--out", str(tmp_path / "s.png")]) == 0
    assert Image.open(tmp_path / "s.png").size == (_grid_side(2, 8), _grid_side(2, 8))


def test_projective_train_then_project(tmp_path, capsys):
    model = tmp_path / "model"
    assert main(["projective", "train", "--out", str(model), "--rank", "4", "--steps", "2", "--batch-size", "8",
                 "--limit", "16", "--set", "image_shape=[1,8,8]", "--set", "flow.depth=1", "--set", "flow.hidden=8",
                 "--set", "loss.weights.prior_noise=0"]) == 0
    saved = json.loads((model / "config.json").read_text())["model"]
    assert saved["loss"]["weights"] == {"pixel": 10.0, "latent": 1.0, "prior_data": 1.0, "prior_noise": 0.0}
    capsys.readouterr()
    assert main(["projective", "project", "--model", str(model), "--input", "noise", "--n", "4",
                 "--out", str(tmp_path / "p.png")]) == 0
    assert "idempotency max" in capsys.readouterr().out
    assert Image.open(tmp_path / "p.png").size == (_grid_side(4, 8), _grid_side(2, 8))


def test_style_train_then_apply(tmp_path):
    model = tmp_path / "model"
    assert main(["style", "train", "--out", str(model), "--styles", "grade,pencil", "--size", "8", "--n", "16",
                 "--steps", "2", "--batch-size", "8", "--set", "flow.depth=1", "--set", "flow.hidden=4",
                 "--set", "loss.weights.identity=0.5"]) == 0
    saved = json.loads((model / "config.json").read_text())["model"]
    assert saved["kind"] == "style" and saved["operator"]["styles"] == ["grade", "pencil"]
    assert saved["loss"]["weights"]["identity"] == 0.5
    image = tmp_path / "in.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(image)
    out = tmp_path / "a.png"
    assert main(["style", "apply", "--model", str(model), "--input", str(image), "--style", "grade",
                 "--strengths", "0.5,1", "--out", str(out)]) == 0
    assert Image.open(out).size == (3 * 8 + 4 * 2, 8 + 4)  # input and two strengths, 2 px apart and around


def test_style_train_refuses_a_config_of_another_kind(tmp_path, capsys):
    config = tmp_path / "c.json"
    config.write_text(json.dumps({"kind": "projective"}))
    assert main(["style", "train", "--out", str(tmp_path / "m"), "--config", str(config), "--steps", "1"]) \
        == EXIT_BAD_INPUT
    assert "kind must be 'style' for `linearizer style train`, got 'projective'" in capsys.readouterr().err


def test_the_console_script_is_the_entry_point():
    text = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()
    assert 'linearizer = "linearizer.cli:main"' in text
