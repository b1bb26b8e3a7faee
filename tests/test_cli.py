"""The command line as users and CI scripts drive it: real subprocesses, real exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import CIFAR, copy_subset, make_image_folder, needs_cifar

EDGETL = [sys.executable, "-m", "edgetl"]


def run(*args: str, cwd: Path | None = None, timeout: int = 600) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run([*EDGETL, *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=timeout)


def test_help_lists_the_commands_without_importing_torch() -> None:
    code = ("import sys; from edgetl.cli import app; from typer.main import get_command; "
            "get_command(app); print('torch' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "False"
    r = run("--help")
    assert r.returncode == 0
    for cmd in ("finetune", "eval", "models", "demo"):
        assert cmd in r.stdout


def _help(args: list[str], columns: int) -> str:
    from typer.testing import CliRunner

    from edgetl.cli import app

    r = CliRunner().invoke(app, [*args, "--help"], env={"COLUMNS": str(columns)})
    assert r.exit_code == 0, r.output
    return r.stdout


def _panels(text: str) -> dict[str, set[str]]:
    """Panel title -> the option names listed in it."""
    panels: dict[str, set[str]] = {}
    for line in text.splitlines():
        if line.startswith("╭─ "):
            title = line[3:].split(" ─")[0]
            panels[title] = set()
        elif panels and line.startswith("│ -"):  # a names cell starts the line; help is indented or beside
            names = line[2:].split("  ")[0].split()
            panels[title].update(w.rstrip(",") for w in names if w.startswith("--"))
    return panels


@pytest.mark.parametrize("columns", [80, 40])
def test_every_help_shows_every_option_whole_at_narrow_terminals(columns: int) -> None:
    from typer.main import get_command

    from edgetl.cli import app

    group = get_command(app)
    for name, command in [("", group), *group.commands.items()]:
        text = _help([name] if name else [], columns)
        assert "…" not in text and "..." not in text.replace("TARGETS...", "").replace("IMAGES...", "") \
            .replace("[ARGS]...", ""), name
        assert max(len(line) for line in text.splitlines()) <= columns, name
        listed = set().union(*_panels(text).values())
        for param in command.params:
            for flag in [*param.opts, *param.secondary_opts]:
                if flag.startswith("--"):
                    assert flag in listed, (name, flag, columns)


def test_finetune_help_groups_its_options_in_panels() -> None:
    panels = _panels(_help(["finetune"], 80))
    assert list(panels) == ["Data", "Model", "Training", "Augmentation", "Speed", "Output", "Options"]
    assert {"--data", "--val-split", "--check", "--no-check", "--strict"} == panels["Data"]
    assert {"--strategy", "--unfreeze", "--model", "--img-size"} <= panels["Model"]
    assert {"--epochs", "--lr", "--backbone-lr-scale", "--label-smoothing", "--seed"} <= panels["Training"]
    assert {"--out", "--resume", "--quiet", "--json"} <= panels["Output"]
    assert _panels(_help(["export"], 80))["INT8"] >= {"--calib", "--calib-method", "--max-drop", "--min-int8"}
    assert _panels(_help(["bench"], 80))["Gate"] >= {"--baseline", "--save-baseline", "--force", "--allow-empty"}


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["finetune", "--strategy", "everything"], 2, "everything"),
        (["finetune", "--model", "nope", "--quiet"], 2, "error: unknown model 'nope'"),
        (["finetune", "--data", "/no/such/folder", "--quiet"], 3, "error: /no/such/folder: no such data folder"),
        (["finetune", "--device", "cuda", "--quiet"], 2, "no CUDA GPU"),
        (["eval", "/no/such/run"], 2, "error: /no/such/run: not an edgetl run"),
    ],
)
def test_bad_input_gives_one_line_and_exit_code(args: list[str], code: int, message: str) -> None:
    r = run(*args)
    assert r.returncode == code, r.stderr
    assert message in r.stderr and "Traceback" not in r.stderr


def test_corrupt_image_in_a_worker_is_one_line_naming_the_file(tmp_path: Path) -> None:
    make_image_folder(tmp_path / "d", classes=2, per_class=4)
    (tmp_path / "d" / "class_1" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    r = run("finetune", "--data", str(tmp_path / "d"), "--model", "resnet18", "--weights", "none",
            "--img-size", "32", "--epochs", "1", "--batch-size", "2", "--workers", "1", "--quiet", "--no-check",
            "--out", str(tmp_path / "run"))
    assert r.returncode == 3
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "broken.png" in lines[0] and "Traceback" not in r.stderr


def test_eval_json_matches_run_json(digits_run: Path) -> None:
    r = run("eval", str(digits_run), "--json")
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    best = json.loads((digits_run / "run.json").read_text())["metrics"]["val_top1"]
    assert res["top1"] == pytest.approx(best)
    assert len(res["confusion"]) == 10 and sum(map(sum, res["confusion"])) == 359
    assert set(res["per_class"]) == {str(i) for i in range(10)}


def test_models_marks_the_bundled_weights_offline() -> None:
    r = run("models", "--filter", "efficientnet_lite0")
    assert r.returncode == 0
    line = next(ln for ln in r.stdout.splitlines() if ln.strip().strip("│").strip().startswith("efficientnet_lite0 "))
    assert "bundled" in line and "yes" in line


def test_models_says_when_nothing_matched() -> None:
    r = run("models", "--filter", "no-such-model-anywhere")
    assert r.returncode == 1 and r.stdout == ""
    assert r.stderr.strip() == "no model matches 'no-such-model-anywhere'; --all lists every torchvision and timm model"


def test_eval_hides_top5_where_it_is_always_100(tmp_path: Path) -> None:
    """With 5 classes or fewer every image is in its top 5; the number says nothing."""
    make_image_folder(tmp_path / "d", classes=3, per_class=6)
    r = run("finetune", "--data", str(tmp_path / "d"), "--model", "resnet18", "--weights", "none", "--img-size", "32",
            "--epochs", "1", "--batch-size", "4", "--workers", "0", "--quiet", "--out", str(tmp_path / "run"))
    assert r.returncode == 0, r.stderr
    r = run("eval", str(tmp_path / "run"))
    assert r.returncode == 0 and "top-1" in r.stdout and "top-5" not in r.stdout, r.stdout


def test_json_summary_and_resume_extends_a_run(tmp_path: Path) -> None:
    make_image_folder(tmp_path / "d", classes=2, per_class=6)
    common = ["--data", str(tmp_path / "d"), "--model", "resnet18", "--weights", "none", "--img-size", "32",
              "--batch-size", "4", "--workers", "0", "--out", str(tmp_path / "run")]
    r = run("finetune", *common, "--epochs", "1", "--json")
    assert r.returncode == 0, r.stderr
    s = json.loads(r.stdout)
    assert s["status"] == "finished" and s["epochs"] == 1 and s["run"] == str(tmp_path / "run")
    r = run("finetune", "--resume", str(tmp_path / "run"), "--epochs", "2", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["epochs"] == 2
    assert len((tmp_path / "run" / "metrics.csv").read_text().strip().splitlines()) == 3


@needs_cifar
@pytest.mark.parametrize("strategy", ["full", "head", "partial"])
def test_finetune_cifar10_mini_every_strategy(tmp_path: Path, strategy: str) -> None:
    """Real CIFAR images (a 10-per-class copy), the bundled Lite0 at 96 px, one epoch."""
    data = tmp_path / "cifar"
    copy_subset(CIFAR / "train", data / "train", 10)
    copy_subset(CIFAR / "val", data / "val", 4)
    r = run("finetune", "--data", str(data), "--img-size", "96", "--epochs", "1", "--strategy", strategy,
            "--batch-size", "16", "--workers", "0", "--out", str(tmp_path / "run"), "--json")
    assert r.returncode == 0, r.stderr
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    assert info["strategy"] == strategy and info["classes"][0] == "airplane" and info["preprocess"]["size"] == 96
    assert "96px (--img-size)" in r.stderr
