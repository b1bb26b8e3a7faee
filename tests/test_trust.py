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
    from edgetl.data.sources import load_data
    from edgetl.images import load_rgb

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
    from edgetl.export.config import ExportConfig
    from edgetl.export.pipeline import export

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
    import edgetl.export.pipeline as pipeline
    from edgetl.export.config import ExportConfig

    monkeypatch.setattr(pipeline, "MIN_FP16_AGREEMENT", 1.01)  # no FP16 file can pass: the check fails for real
    with pytest.raises(ArtifactError, match="FP16 disagrees"):
        pipeline.export(ExportConfig(run=str(exported), fp16=True, int8=True, engine=False, calib_size=32))
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


def test_data_with_fewer_than_two_classes_is_refused(tmp_path: Path) -> None:
    from conftest import make_image_folder

    one = make_image_folder(tmp_path / "one", classes=1)
    only_val = tmp_path / "only-val"
    make_image_folder(only_val / "val", classes=3)
    for data, says in ((one, "1 class folder(s) ['class_0']"), (only_val, "holds only a val/ folder")):
        r = cli("finetune", "--data", str(data), "--out", str(tmp_path / f"run-{data.name}"), "--epochs", "1",
                "--model", "timm/test_resnet", "--weights", "none", "--img-size", "32", "--workers", "0")
        assert r.returncode == 3 and says in r.stderr and "Traceback" not in r.stderr, r.stderr
        assert not (tmp_path / f"run-{data.name}").exists()


def test_exif_orientation_is_applied_and_both_decoders_agree(tiny_export: Path, tmp_path: Path) -> None:
    """A phone photo stored sideways with Orientation=6 is seen upright, by training/eval (torchvision)
    and by the torch-free Predictor alike."""
    import numpy as np
    from PIL import Image

    from edgetl.data.sources import eval_transform
    from edgetl.images import Preprocess, load_rgb

    arr = np.zeros((20, 40, 3), np.uint8)
    arr[:, :20] = (255, 0, 0)
    arr[:, 20:] = (0, 0, 255)
    stored = Image.fromarray(arr)
    exif = stored.getexif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    stored.save(tmp_path / "sideways.jpg", exif=exif.tobytes(), quality=95)
    upright = load_rgb(tmp_path / "sideways.jpg")
    assert upright.size == (20, 40)  # width 20, height 40: turned upright
    top, bottom = np.asarray(upright)[2, 10], np.asarray(upright)[-3, 10]
    assert top[0] > 200 and bottom[2] > 200  # red on top, blue below, as displayed
    stored.transpose(Image.Transpose.ROTATE_270).save(tmp_path / "upright.png")
    pred = Predictor(tiny_export / "export" / "model.onnx")
    a, b = pred.predict([tmp_path / "sideways.jpg", tmp_path / "upright.png"], top_k=3)
    assert a.top[0][1] == b.top[0][1]
    pp = Preprocess.from_dict(json.loads((tiny_export / "run.json").read_text())["preprocess"])
    torch_x = eval_transform(pp)(load_rgb(tmp_path / "sideways.jpg")).numpy()
    assert np.abs(torch_x - pp.to_array(load_rgb(tmp_path / "sideways.jpg"))).max() < 0.05


def test_extreme_aspect_ratios_are_refused_before_decoding(tiny_export: Path, tmp_path: Path) -> None:
    from PIL import Image

    Image.new("RGB", (100000, 1)).save(tmp_path / "line.png")
    r = cli("predict", str(tiny_export / "export" / "model.onnx"), str(tmp_path / "line.png"))
    assert r.returncode == 3 and "100000x1 px" in r.stderr and "EDGETL_MAX_ASPECT" in r.stderr


def test_names_with_control_characters_are_printed_escaped(tiny_export: Path, tmp_path: Path) -> None:
    """A file named with an escape sequence and a newline: the terminal sees \\x1b and \\n, and the
    reason stays on the error's one line."""
    bad = tmp_path / "evil\x1b[2J\nname.png"
    bad.write_bytes(b"not a png")
    r = cli("predict", str(tiny_export / "export" / "model.onnx"), str(bad))
    assert r.returncode == 3 and "\x1b" not in r.stderr
    line = next(ln for ln in r.stderr.splitlines() if "evil" in ln)
    assert "evil\\x1b[2J\\nname.png" in line and "not an image file" in line


def test_predict_on_a_folder_predicts_what_it_can_and_lists_the_rest(tiny_export: Path, image: Path,
                                                                     tmp_path: Path) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    for name in ("a.png", "b.png"):
        shutil.copyfile(image, folder / name)
    (folder / "broken.png").write_bytes(b"\x89PNG but no more")
    model = str(tiny_export / "export" / "model.onnx")
    r = cli("predict", model, str(folder), "--json")
    assert r.returncode == 3 and "Traceback" not in r.stderr
    assert sorted(Path(json.loads(ln)["source"]).name for ln in r.stdout.splitlines()) == ["a.png", "b.png"]
    assert "1 of 3 image(s) could not be read" in r.stderr and "broken.png" in r.stderr
    assert cli("predict", model, str(folder), "--skip-bad").returncode == 0


def test_resume_refuses_options_that_would_change_the_run(tiny_run: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    r = cli("finetune", "--resume", str(run), "--lr", "0.5", "--data", "somewhere", "--epochs", "5")
    assert r.returncode == 2 and "--data, --lr would change it and are refused" in r.stderr
    r = cli("finetune", "--resume", str(run), "--epochs", "2")  # the run already has 3
    assert r.returncode == 2 and "has trained 3 epoch(s) already" in r.stderr and "more than 3" in r.stderr


@pytest.mark.parametrize("change,says", [
    (lambda m: m["preprocess"].update(size=100000, resize=100000), "preprocess size 100000"),
    (lambda m: m["preprocess"].update(std=[0.5, 0.0, 0.5]), "positive stds"),
    (lambda m: m.update(classes=[]), "classes must be a list"),
])
def test_manifest_values_are_checked_before_anything_is_allocated(exported: Path, image: Path, change, says) -> None:
    manifest_path = exported / "export" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    change(manifest)
    manifest_path.write_text(json.dumps(manifest))
    r = cli("predict", str(exported / "export" / "model.onnx"), str(image))
    assert r.returncode == 4 and says in r.stderr and "Traceback" not in r.stderr


def test_a_baseline_with_zero_or_unknown_latencies_is_refused(tiny_export: Path, tmp_path: Path) -> None:
    from edgetl.bench.schema import load_report

    doc = {"schema_version": 1, "environment": {}, "rows": [
        {"artifact": "model.onnx", "backend": "ort-fp32", "precision": "fp32", "batch_size": 1, "device": "cpu",
         "status": "ok", "p50_ms": 0.0, "p50_rounds_ms": [0.0], "top1": 90.0}]}
    path = tmp_path / "zero.json"
    for p50, top1, says in ((0.0, 90.0, "not positive numbers"), ("fast", 90.0, "not positive numbers"),
                            (1.0, "high", "not a number")):
        doc["rows"][0].update(p50_ms=p50, p50_rounds_ms=[p50], top1=top1)
        path.write_text(json.dumps(doc))
        with pytest.raises(ArtifactError, match=says):
            load_report(path)
    r = cli("bench", str(tiny_export / "export" / "model.onnx"), "--backends", "ort-fp32", "--batch-size", "1",
            "--iters", "2", "--no-e2e", "--baseline", str(path))
    assert r.returncode == 4 and "row 0" in r.stderr and "Traceback" not in r.stderr


def _without_root_privileges() -> list[str]:
    """A command prefix under which file permissions apply: root reads anything, so drop its DAC override."""
    if os.geteuid() != 0:
        return []
    if shutil.which("setpriv") is None:
        pytest.skip("running as root without util-linux setpriv: file permissions cannot be tested")
    return ["setpriv", "--bounding-set", "-dac_override,-dac_read_search", "--"]


def test_unreadable_files_and_folders_are_reported_as_permission_errors(tmp_path: Path) -> None:
    from conftest import make_image_folder

    data = make_image_folder(tmp_path / "data")
    sub = data / "class_2" / "sub"
    sub.mkdir()
    for f in sorted((data / "class_2").glob("*.png"))[:2]:
        shutil.copy(f, sub / f.name)
    locked_file = sorted((data / "class_1").glob("*.png"))[0]
    (data / "class_0" / "loop.jpg").symlink_to("loop.jpg")
    locked_file.chmod(0)
    sub.chmod(0)
    try:
        args = [*_without_root_privileges(), *EDGETL, "check-data", str(data)]
        r = subprocess.run(args, capture_output=True, text=True, timeout=120, env={**os.environ, "COLUMNS": "200"})
        assert r.returncode == 3 and "Traceback" not in r.stderr, r.stderr  # the symlink loop is an error
        assert f"{locked_file}: permission denied: not readable by this user" in r.stdout
        assert f"{sub}: permission denied: folder not readable, its images are left out" in r.stdout
        assert "loop.jpg: symlink loop or dangling symlink, refused" in r.stdout
        assert "corrupt" not in r.stdout
        (data / "class_0" / "loop.jpg").unlink()
        r = subprocess.run(args, capture_output=True, text=True, timeout=120)
        assert r.returncode == 0 and "bad files: 2 (2 permission)" in r.stdout, r.stdout + r.stderr
        r = subprocess.run([*args, "--strict"], capture_output=True, text=True, timeout=120)
        assert r.returncode == 3 and "permission denied" in r.stderr and "--strict" in r.stderr, r.stderr
        (data / "class_1").chmod(0)
        r = subprocess.run(args, capture_output=True, text=True, timeout=120)
        assert r.returncode == 3, r.stdout
        assert f"{data / 'class_1'}: permission denied: folder not readable" in r.stdout
        assert "class folder holds no images" not in r.stdout
    finally:
        for p in (data / "class_1", sub, locked_file):
            p.chmod(0o755)


def test_calib_skips_bad_files_and_a_full_disk_leaves_nothing(tmp_path: Path) -> None:
    """The sample is every training image, so the corrupt one is certainly drawn; RLIMIT_FSIZE stops a
    write as a full disk does, on the one large image."""
    import resource

    import numpy as np
    from conftest import make_image_folder
    from PIL import Image

    data = make_image_folder(tmp_path / "data")
    corrupt = data / "class_0" / "broken.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 64)
    from edgetl.data.sources import load_data

    train = load_data(str(data)).train
    assert str(corrupt) in map(str, train.items)
    out = tmp_path / "calib"
    r = cli("calib", "--data", str(data), "--out", str(out), "--size", "1000")
    assert r.returncode == 0, r.stderr
    assert f"skipped {corrupt}:" in r.stderr and "1 bad file(s) skipped" in r.stdout
    info = json.loads((out / "calib.json").read_text())
    assert info["size"] == len(train) - 1 and list(info["skipped"]) == [str(corrupt)]
    assert not any("broken" in f for f in info["files"])

    noise = np.random.default_rng(0).integers(0, 256, (256, 256, 3), dtype=np.uint8)
    Image.fromarray(noise).save(data / "class_1" / "large.png")  # ~200 KB, over the limit below

    def limit_file_size() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (64 << 10, 64 << 10))

    full = tmp_path / "calib-full"
    r = subprocess.run([*EDGETL, "calib", "--data", str(data), "--out", str(full), "--size", "1000"], capture_output=True,
                       text=True, preexec_fn=limit_file_size, timeout=120)
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    assert f"{full}: cannot write (File too large); nothing was written" in r.stderr
    assert not full.exists() and not list(tmp_path.glob(".calib-full*"))
    r = cli("calib", "--data", str(data), "--out", str(full), "--size", "1000")  # the rerun is not refused
    assert r.returncode == 0 and json.loads((full / "calib.json").read_text())["skipped"], r.stderr


def _numeric_options() -> list[tuple[str, str, type]]:
    """(command, --option, int|float) for every number any command takes, read from the CLI itself so
    an option added later is covered without editing this test."""
    import typing

    import typer

    from edgetl.cli import app

    found = []
    for name, command in typer.main.get_command(app).commands.items():
        for pname, hint in typing.get_type_hints(command.callback).items():
            base = next((a for a in typing.get_args(hint) if a is not type(None)), hint)
            if base in (int, float):
                found.append((name, next(p.opts[0] for p in command.params if p.name == pname), base))
    return found


# Values that are legal, per option; everything else of NaN, +-inf, -1, 0 and 10**12 must be refused.
# 0 means "automatic" or "off" for these; 10**12 is legal where it only clips to what exists.
LEGAL = {
    "0": {"--unfreeze", "--weight-decay", "--label-smoothing", "--warmup-epochs", "--clip-grad", "--early-stop",
          "--seed", "--feature-views", "--workers", "--min-side", "--limit", "--max-drop", "--min-int8", "--dla",
          "--warmup", "--max-regression"},
    "1000000000000": {"--unfreeze", "--lr", "--warmup-epochs", "--clip-grad", "--early-stop", "--seed",
                      "--min-side", "--max-megapixels", "--limit", "--calib-size", "--size", "--top-k"},
}


def _after_validation(command: str, tmp: Path) -> list[str]:
    """Arguments that get past option checks and then fail on a missing input, quickly."""
    missing = str(tmp / "missing")
    return {"finetune": ["finetune", "--data", missing, "--out", str(tmp / "o")],
            "eval": ["eval", missing], "check-data": ["check-data", missing],
            "demo": ["demo", "--out", str(tmp / "file" / "run")],
            "export": ["export", missing], "calib": ["calib", "--data", missing, "--out", str(tmp / "c")],
            "build": ["build", missing + ".onnx", "--fp16"], "predict": ["predict", missing, missing + ".png"],
            "bench": ["bench", missing]}[command]


@pytest.mark.parametrize("command,option,kind", _numeric_options())
def test_every_numeric_option_of_every_command_refuses_nonsense(tmp_path: Path, command: str, option: str,
                                                                kind: type) -> None:
    """NaN, +-inf, 0, a negative and an absurd size, for each number of each command: exit 2 and one line
    naming the option, or, where the value is legal, no traceback and the missing input reported."""
    from typer.testing import CliRunner

    from edgetl.cli import app

    (tmp_path / "file").write_text("a file, so a run folder cannot be made under it\n")
    values = ["-1", "0", "1000000000000"] + (["nan", "inf", "-inf"] if kind is float else [])
    for value in values:
        r = CliRunner().invoke(app, [*_after_validation(command, tmp_path), option, value])
        assert r.exception is None or isinstance(r.exception, SystemExit), (option, value, r.exception)
        if option in LEGAL.get(value, ()):
            assert "missing" in r.output and f"{option} {value}" not in r.output, (command, option, value, r.output)
        else:
            assert r.exit_code == 2, (command, option, value, r.output)
            assert option in r.output, (command, option, value, r.output)


def test_a_checkpoint_that_does_not_fit_says_why(tiny_run: Path, tmp_path: Path) -> None:
    """PyTorch puts the reason on the line after its "Error(s) in loading state_dict" header; the
    one-line error keeps the reason, not the header."""
    import torch

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    ck = torch.load(run / "best.pt", weights_only=True)
    key = next(k for k, v in ck["model"].items() if v.ndim == 2)  # the classifier
    ck["model"][key] = torch.zeros(3, 7)
    torch.save(ck, run / "best.pt")
    r = cli("eval", str(run))
    assert r.returncode == 4 and "Traceback" not in r.stderr, r.stderr
    assert f"{run / 'best.pt'}: does not fit model timm/test_resnet" in r.stderr
    assert f"size mismatch for {key}" in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_pixel_and_aspect_limits_are_configurable_and_checked(tiny_export: Path, image: Path) -> None:
    """EDGETL_MAX_PIXELS replaces Pillow's bomb limit for every decode; a limit that is not a positive
    number is a usage error naming the variable, not a traceback."""
    onnx = str(tiny_export / "export" / "model.onnx")
    small = {**os.environ, "EDGETL_MAX_PIXELS": "100"}  # the 8x8 digit has 64 px; well under it passes
    r = subprocess.run([*EDGETL, "predict", onnx, str(image)], capture_output=True, text=True, env=small, timeout=120)
    assert r.returncode == 0, r.stderr
    tiny_limit = {**os.environ, "EDGETL_MAX_PIXELS": "10"}
    r = subprocess.run([*EDGETL, "predict", onnx, str(image)], capture_output=True, text=True, env=tiny_limit, timeout=120)
    assert r.returncode == 3 and "decompression bomb (EDGETL_MAX_PIXELS raises the limit)" in r.stderr, r.stderr
    for name, value in (("EDGETL_MAX_ASPECT", "nan"), ("EDGETL_MAX_PIXELS", "-5"), ("EDGETL_MAX_ASPECT", "wide")):
        r = subprocess.run([*EDGETL, "predict", onnx, str(image)], capture_output=True, text=True,
                           env={**os.environ, name: value}, timeout=120)
        assert r.returncode == 2 and f"{name}={value!r}: must be a finite positive number" in r.stderr, r.stderr
        assert "Traceback" not in r.stderr
