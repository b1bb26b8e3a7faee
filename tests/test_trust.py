"""Trust nothing on disk: artifacts are used only if the manifest vouches for them, exports leave no
stale or failed artifact behind, one writer per run folder, and nonsense numbers are usage errors."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from edgetl.errors import ArtifactError
from edgetl.runtime import Predictor

EDGETL = [sys.executable, "-m", "edgetl"]


def cli(*args: str, timeout: int = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*EDGETL, *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "COLUMNS": "200"})


@pytest.fixture()
def exported(tiny_export: Path, tmp_path: Path) -> Path:
    """A private copy of an exported run (FP32, FP16, INT8), to tamper with."""
    run = tmp_path / "run"
    shutil.copytree(tiny_export, run)
    return run


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from edgetl.data import load_data
    from edgetl.preprocess import load_rgb

    path = tmp_path_factory.mktemp("img") / "digit.png"
    load_rgb(load_data("digits").val.items[0]).save(path)
    return path


def test_a_file_copied_over_an_artifact_is_refused(exported: Path, image: Path) -> None:
    export = exported / "export"
    shutil.copyfile(export / "model.fp16.onnx", export / "model.onnx")  # a valid ONNX, but not this one
    r = cli("predict", str(export / "model.onnx"), str(image))
    assert r.returncode == 4 and "sha256" in r.stderr and "differs" in r.stderr and "--no-verify" in r.stderr
    assert "Traceback" not in r.stderr
    with pytest.raises(ArtifactError, match="the file changed after export"):
        Predictor(export / "model.onnx")
    assert cli("predict", str(export / "model.onnx"), str(image), "--no-verify").returncode == 0
    r = cli("bench", str(export / "model.onnx"), "--backends", "ort-fp32", "--batch-size", "1", "--iters", "2",
            "--no-e2e")
    assert r.returncode == 4 and "model.onnx" in r.stderr and "differs" in r.stderr


def test_zeroed_hashes_and_unlisted_artifacts_are_refused(exported: Path, image: Path) -> None:
    export = exported / "export"
    manifest = json.loads((export / "manifest.json").read_text())
    for a in manifest["artifacts"]:
        a["sha256"] = "0" * 64
    (export / "manifest.json").write_text(json.dumps(manifest))
    r = cli("predict", str(export / "model.int8.onnx"), str(image))
    assert r.returncode == 4 and "differs from 000000000000" in r.stderr
    manifest["artifacts"] = [a for a in manifest["artifacts"] if a["file"] == "model.onnx"]
    (export / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="not listed in manifest.json"):
        Predictor(export / "model.int8.onnx")
    Predictor(export / "model.int8.onnx", verify=False)  # the user vouches for it


def test_export_leaves_exactly_what_its_manifest_lists(exported: Path) -> None:
    """A later export without --int8/--fp16 removes the earlier INT8/FP16 files, and a temporary folder
    left by a killed export is swept."""
    from edgetl.export import ExportConfig, export

    out = exported / "export"
    (out / ".quant-killed").mkdir()
    (out / ".quant-killed" / "q.onnx").write_bytes(b"x" * 1000)
    report = export(ExportConfig(run=str(exported), engine=False))
    assert {a["file"] for a in report.artifacts} == {"model.onnx"}
    left = sorted(p.name for p in out.iterdir() if not p.name.startswith(".edgetl"))
    assert left == ["calib.cache", "manifest.json", "model.onnx"]


def test_an_artifact_that_fails_its_check_is_removed_and_the_others_still_made(exported: Path,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """An FP16 file that disagrees with FP32 is not left under its name; INT8 is still attempted; exit 4."""
    import edgetl.export as ex

    monkeypatch.setattr(ex, "MIN_FP16_AGREEMENT", 1.01)  # no FP16 file can pass: the check fails for real
    with pytest.raises(ArtifactError, match="FP16 disagrees"):
        ex.export(ex.ExportConfig(run=str(exported), fp16=True, int8=True, engine=False, calib_size=32))
    out = exported / "export"
    assert not (out / "model.fp16.onnx").exists()
    listed = {a["file"] for a in json.loads((out / "manifest.json").read_text())["artifacts"]}
    assert listed == {"model.onnx", "model.int8.onnx"} and (out / "model.int8.onnx").exists()


def test_two_finetunes_into_one_folder_exactly_one_runs(tmp_path: Path) -> None:
    out = tmp_path / "run"
    args = [*EDGETL, "finetune", "--data", "digits", "--out", str(out), "--model", "timm/test_resnet",
            "--weights", "none", "--img-size", "32", "--epochs", "2", "--workers", "0", "--quiet"]
    procs = [subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [(p.wait(timeout=600), p.stderr.read()) for p in procs]
    codes = sorted(rc for rc, _ in results)
    assert codes == [0, 2], results
    loser = next(err for rc, err in results if rc == 2)
    assert "another edgetl finetune (PID" in loser and "Traceback" not in loser
    assert json.loads((out / "run.json").read_text())["metrics"]["epochs"] == 2


def test_out_inside_the_data_folder_is_refused(tmp_path: Path) -> None:
    from conftest import make_image_folder

    data = make_image_folder(tmp_path / "data")
    r = cli("finetune", "--data", str(data), "--out", str(data / "runs" / "x"), "--epochs", "1")
    assert r.returncode == 2 and "inside --data" in r.stderr
    assert not (data / "runs").exists()


@pytest.mark.parametrize("option", ["--lr", "--label-smoothing", "--clip-grad", "--warmup-epochs",
                                    "--backbone-lr-scale", "--val-split", "--img-size", "--epochs"])
@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "0", "-1", "100000"])
def test_every_numeric_finetune_option_refuses_nonsense(tmp_path: Path, option: str, value: str) -> None:
    """NaN, ±inf, 0, negatives and absurd sizes: exit 2 and one line, or, where the value is legal, no
    crash before training starts (checked by refusing the data instead)."""
    from typer.testing import CliRunner

    from edgetl.cli import app

    legal = {("--label-smoothing", "0"), ("--clip-grad", "0"), ("--warmup-epochs", "0"),
             ("--warmup-epochs", "100000"), ("--clip-grad", "100000"), ("--epochs", "100000"),
             ("--lr", "100000")}  # a huge learning rate is legal: it diverges, and that has its own test
    r = CliRunner().invoke(app, ["finetune", "--data", str(tmp_path / "no-such-data"), "--out", str(tmp_path / "o"),
                                 option, value])
    if (option, value) in legal:
        assert r.exit_code == 3, r.output  # got past validation to the missing data
        return
    if option in ("--img-size", "--epochs") and value in ("nan", "inf", "-inf"):
        assert r.exit_code == 2  # Typer itself refuses a non-integer
        return
    assert r.exit_code == 2, (option, value, r.output)
    assert option in r.output and "Traceback" not in r.output
