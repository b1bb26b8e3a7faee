"""TensorRT: provenance checks and calibration images everywhere; real engine builds where TensorRT and a GPU are."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edgetl.artifacts.engine import check_engine, default_engine_path, load_engine_meta, rebuild_command, sidecar_path
from edgetl.artifacts.manifest import precision_of
from edgetl.engines.builder import build_engine
from edgetl.engines.calibrator import calibration_batches
from edgetl.errors import ArtifactError, DataError, UsageError

HAS_TRT = importlib.util.find_spec("tensorrt") is not None
ENV = {"tensorrt_version": "10.3.0", "gpu": "Orin", "compute_capability": "8.7"}
PREPROCESS = {"size": 24, "resize": 28, "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.5, 0.5], "interpolation": "bicubic"}


# --- provenance: pure logic --------------------------------------------------------------------------


def fake_engine(folder: Path, name: str = "model.int8.engine", content: bytes = b"plan") -> tuple[Path, dict]:
    """A hand-made engine file and the provenance record build_engine would have written for it."""
    folder.mkdir(parents=True, exist_ok=True)
    engine = folder / name
    engine.write_bytes(content)
    meta = {"file": name, "sha256": hashlib.sha256(content).hexdigest(), "format": "engine", "precision": "int8",
            **ENV, "source_onnx": {"file": "model.int8.onnx", "sha256": "0" * 64},
            "min_batch": 1, "opt_batch": 1, "max_batch": 32, "dla_core": None, "calibration": "explicit-qdq"}
    return engine, meta


def test_check_engine_accepts_a_matching_engine(tmp_path: Path) -> None:
    engine, meta = fake_engine(tmp_path)
    check_engine(engine, meta, **ENV)
    check_engine(engine, meta, **ENV, data=engine.read_bytes())


@pytest.mark.parametrize("field, found, words", [
    ("sha256", None, ["sha256", "changed"]),
    ("tensorrt_version", "10.7.0", ["TensorRT 10.3.0", "TensorRT 10.7.0", "exact TensorRT version"]),
    ("compute_capability", "8.9", ["compute capability 8.7", "8.9"]),
    ("gpu", "NVIDIA GeForce RTX 4090", ["built on Orin", "RTX 4090"]),
], ids=["hash", "trt-version", "compute-capability", "gpu-name"])  # an id "gpu" reads as conftest's gpu marker
def test_check_engine_refuses_a_mismatch_and_says_how_to_rebuild(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, field: str, found: str | None, words: list[str]) -> None:
    monkeypatch.chdir(tmp_path)
    engine, meta = fake_engine(tmp_path / "export")
    env = dict(ENV)
    if field == "sha256":
        engine.write_bytes(b"tampered plan")
    else:
        env[field] = found
    with pytest.raises(ArtifactError) as e:
        check_engine(engine, meta, **env)
    msg = str(e.value)
    assert e.value.exit_code == 4
    assert "\n" not in msg
    assert "model.int8.engine" in msg and "rebuild" in msg
    assert msg.endswith(": edgetl build export/model.int8.onnx --int8 --opt-batch 1 --max-batch 32 "
                        "-o export/model.int8.engine")
    for w in words:
        assert w in msg


def test_check_engine_hashes_the_bytes_it_is_given(tmp_path: Path) -> None:
    engine, meta = fake_engine(tmp_path)
    with pytest.raises(ArtifactError, match="sha256"):
        check_engine(engine, meta, **ENV, data=b"other bytes than the file")


@pytest.mark.parametrize("drop", ["sha256", "tensorrt_version", "gpu", "compute_capability"], ids=lambda k: f"no-{k}")
def test_check_engine_refuses_an_incomplete_record(tmp_path: Path, drop: str) -> None:
    engine, meta = fake_engine(tmp_path)
    del meta[drop]
    with pytest.raises(ArtifactError, match=f"lacks {drop}.*rebuild"):
        check_engine(engine, meta, **ENV)


def test_rebuild_command_for_implicit_calibration_and_dla(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    engine = Path("out/model.int8.engine")
    meta = {"precision": "int8", "calibration": "implicit-entropy", "source_onnx": {"file": "../export/model.onnx"},
            "opt_batch": 4, "max_batch": 8, "dla_core": 0}
    assert rebuild_command(engine, meta) == ("edgetl build export/model.onnx --int8 --calib CALIB_DIR --opt-batch 4 "
                                             "--max-batch 8 --dla 0 -o out/model.int8.engine")
    assert rebuild_command(Path("m.fp16.engine"), {}) == "edgetl build m.fp16.onnx --fp16 -o m.fp16.engine"


def test_load_engine_meta_prefers_the_sidecar(tmp_path: Path) -> None:
    engine, meta = fake_engine(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps({"artifacts": [{**meta, "sha256": "stale"}]}))
    sidecar_path(engine).write_text(json.dumps(meta))
    assert sidecar_path(engine).name == "model.int8.engine.json"
    assert load_engine_meta(engine) == meta


def test_load_engine_meta_from_the_manifest(tmp_path: Path) -> None:
    engine, meta = fake_engine(tmp_path)
    other = {"file": "model.int8.onnx", "sha256": "1" * 64, "precision": "int8", "format": "onnx"}
    (tmp_path / "manifest.json").write_text(json.dumps({"preprocess": PREPROCESS, "artifacts": [other, meta]}))
    assert load_engine_meta(engine) == meta
    check_engine(engine, load_engine_meta(engine), **ENV)


def test_an_engine_without_provenance_is_refused(tmp_path: Path) -> None:
    engine, _ = fake_engine(tmp_path)
    with pytest.raises(ArtifactError, match="no provenance record.*rebuild it: edgetl build"):
        load_engine_meta(engine)
    (tmp_path / "manifest.json").write_text(json.dumps({"artifacts": [{"file": "model.onnx", "sha256": "x"}]}))
    with pytest.raises(ArtifactError, match="no provenance record"):
        load_engine_meta(engine)


def test_a_corrupt_provenance_record_is_refused(tmp_path: Path) -> None:
    engine, _ = fake_engine(tmp_path)
    sidecar_path(engine).write_text("{not json")
    with pytest.raises(ArtifactError, match="model.int8.engine.json: unreadable"):
        load_engine_meta(engine)


def test_runner_refuses_an_engine_without_provenance_before_touching_tensorrt(tmp_path: Path) -> None:
    from edgetl.runtime import open_runner

    engine, _ = fake_engine(tmp_path)
    with pytest.raises(ArtifactError, match="no provenance record"):
        open_runner(engine)


@pytest.mark.skipif(HAS_TRT, reason="tensorrt is installed here")
def test_without_tensorrt_everything_says_how_to_install_it(tmp_path: Path) -> None:
    from edgetl.runtime.tensorrt import TrtRunner, available

    ok, why = available()
    assert not ok and "tensorrt is not installed" in why and "pip install 'edgetl[trt]'" in why
    engine, meta = fake_engine(tmp_path)
    sidecar_path(engine).write_text(json.dumps(meta))
    with pytest.raises(UsageError, match=r"pip install 'edgetl\[trt\]'"):
        TrtRunner(engine)
    onnx = tmp_path / "model.int8.onnx"
    onnx.write_bytes(b"onnx")
    with pytest.raises(UsageError, match=r"pip install 'edgetl\[trt\]'"):
        build_engine(onnx, tmp_path / "model.int8.engine", "int8")


def test_importing_the_tensorrt_modules_imports_neither_torch_nor_tensorrt() -> None:
    code = ("import sys, edgetl.engines.builder, edgetl.runtime.tensorrt; "
            "print([m for m in ('torch', 'tensorrt') if m in sys.modules])")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert r.stdout.strip() == "[]"


@pytest.mark.parametrize("kwargs, match", [
    ({"precision": "int4"}, "precision must be one of"),
    ({"min_batch": 2, "opt_batch": 1}, "1 <= min"),
    ({"opt_batch": 8, "max_batch": 4}, "opt .8. <= max .4."),
    ({"workspace_mb": 0}, "workspace"),
    ({"precision": "fp32", "dla_core": 0}, "DLA runs FP16 or INT8"),
    ({"dla_core": -1}, "--dla -1: must be at least 0"),
    ({"precision": "fp16", "calibrator_batches": []}, "--int8"),
    ({"engine": "model.trt"}, "must end in .engine"),
    ({"onnx": "missing.onnx"}, "no such ONNX file"),
])
def test_build_engine_refuses_bad_arguments_before_importing_tensorrt(tmp_path: Path, kwargs: dict, match: str) -> None:
    onnx = tmp_path / kwargs.pop("onnx", "model.onnx")
    if onnx.name == "model.onnx":
        onnx.write_bytes(b"onnx")
    engine = tmp_path / kwargs.pop("engine", "model.engine")
    with pytest.raises(UsageError, match=match):
        build_engine(onnx, engine, **{"precision": "fp16", **kwargs})


def test_names_follow_the_precision() -> None:
    assert precision_of("model.int8.onnx") == "int8"
    assert precision_of("model.fp16.engine") == "fp16"
    assert precision_of("model.onnx") == "fp32"
    assert precision_of("model.int8-cpu.onnx") == "int8" and precision_of("my.int8ish.onnx") == "fp32"
    assert default_engine_path(Path("e/model.int8.onnx"), "int8") == Path("e/model.int8.engine")
    assert default_engine_path(Path("e/model.onnx"), "int8") == Path("e/model.int8.engine")
    assert default_engine_path(Path("e/model.fp16.onnx"), "fp16") == Path("e/model.fp16.engine")
    assert default_engine_path(Path("e/model.onnx"), "fp32") == Path("e/model.engine")


# --- calibration images: PIL + numpy ------------------------------------------------------------------


def image_tree(root: Path, n: int = 5) -> Path:
    rng = np.random.default_rng(0)
    for i in range(n):
        folder = root / f"class_{i % 2}"
        folder.mkdir(parents=True, exist_ok=True)
        size = (40 + 7 * i, 32 + 3 * i)  # mixed aspect ratios, both orientations
        Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(folder / f"img_{i}.png")
    (root / "class_0" / ".hidden.png").write_bytes(b"not an image")
    (root / "class_0" / "notes.txt").write_text("skipped")
    return root


def test_calibration_batches_match_the_evaluation_transform(tmp_path: Path) -> None:
    import torch

    from edgetl.data.sources import eval_transform
    from edgetl.images import Preprocess, load_rgb

    root = image_tree(tmp_path / "calib")
    batches = list(calibration_batches(root, PREPROCESS, batch_size=2))
    assert [b.shape for b in batches] == [(2, 3, 24, 24), (2, 3, 24, 24), (1, 3, 24, 24)]
    assert all(b.dtype == np.float32 for b in batches)
    got = np.concatenate(batches)
    files = sorted(p for p in root.rglob("*.png") if not p.name.startswith("."))
    tf = eval_transform(Preprocess.from_dict(PREPROCESS))
    want = torch.stack([tf(load_rgb(f)) for f in files]).numpy()
    # torchvision resizes the uint8 tensor, PIL the image: the same geometry, at most one grey level apart
    assert np.abs(got - want).max() <= 1.01 / 255 / min(PREPROCESS["std"])
    assert np.abs(got - want).mean() < 1e-3


def test_calibration_batches_refuse_unusable_folders(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such calibration folder"):
        calibration_batches(tmp_path / "nope", PREPROCESS, 8)
    (tmp_path / "empty" / "a").mkdir(parents=True)
    (tmp_path / "empty" / "a" / "readme.txt").write_text("x")
    with pytest.raises(DataError, match="holds no images"):
        calibration_batches(tmp_path / "empty", PREPROCESS, 8)
    with pytest.raises(DataError, match="unusable preprocessing"):
        calibration_batches(image_tree(tmp_path / "ok"), {"size": 24}, 8)
    bad = image_tree(tmp_path / "bad")
    (bad / "class_1" / "broken.jpg").write_bytes(b"\xff\xd8 truncated")
    with pytest.raises(DataError, match="broken.jpg"):
        list(calibration_batches(bad, PREPROCESS, 8))


def test_onnx_preprocess_comes_from_the_manifest_or_the_run(tmp_path: Path) -> None:
    from edgetl.engines.calibrator import onnx_preprocess

    onnx = tmp_path / "run" / "export" / "model.onnx"
    onnx.parent.mkdir(parents=True)
    with pytest.raises(UsageError, match="no preprocessing record"):
        onnx_preprocess(onnx)
    (tmp_path / "run" / "run.json").write_text(json.dumps({"preprocess": {**PREPROCESS, "size": 32}}))
    assert onnx_preprocess(onnx)["size"] == 32
    (onnx.parent / "manifest.json").write_text(json.dumps({"preprocess": PREPROCESS, "artifacts": []}))
    assert onnx_preprocess(onnx) == PREPROCESS


# --- real TensorRT (skipped, never faked, without TensorRT and a GPU) ------------------------------


@pytest.fixture(scope="module")
def onnx_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny CNN as FP32, FP16 and Q/DQ INT8 ONNX (opset 17, dynamic batch), laid out like export/."""
    import torch
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from torch import nn

    out = tmp_path_factory.mktemp("export")
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                        nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 5)).eval()
    kw = {"dynamo": False, "opset_version": 17, "input_names": ["input"], "output_names": ["logits"],
          "dynamic_axes": {"input": {0: "batch"}, "logits": {0: "batch"}}}
    x = torch.randn(1, 3, 32, 32)
    paths = {"fp32": out / "model.onnx", "fp16": out / "model.fp16.onnx", "int8": out / "model.int8.onnx"}
    torch.onnx.export(net, x, str(paths["fp32"]), **kw)
    torch.onnx.export(net.half(), x.half(), str(paths["fp16"]), **kw)

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter({"input": a} for a in calib_inputs(16))

        def get_next(self) -> dict | None:
            return next(self.batches, None)

    quantize_static(str(paths["fp32"]), str(paths["int8"]), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                    extra_options={"ActivationSymmetric": True, "QuantizeBias": False})
    return paths


def calib_inputs(n: int) -> list[np.ndarray]:
    rng = np.random.default_rng(1)
    return [rng.normal(size=(1, 3, 32, 32)).astype(np.float32) for _ in range(n)]


def ort_logits(onnx: Path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx), providers=["CPUExecutionProvider"])
    return session.run(None, {"input": x})[0]


def rel_error(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.linalg.norm(got - want) / np.linalg.norm(want))


def trt_major() -> int:
    import tensorrt

    return int(tensorrt.__version__.split(".")[0])


def batch(n: int) -> np.ndarray:
    return np.random.default_rng(n).normal(size=(n, 3, 32, 32)).astype(np.float32)


@pytest.mark.tensorrt
def test_fp16_engine_from_the_fp16_onnx_matches_onnxruntime(onnx_models: dict[str, Path], tmp_path: Path) -> None:
    import tensorrt

    from edgetl.runtime import open_runner

    engine = tmp_path / "model.fp16.engine"
    cache = tmp_path / "timing.cache"
    meta = build_engine(onnx_models["fp16"], engine, "fp16", max_batch=4, timing_cache=cache)
    assert cache.stat().st_size > 0
    assert json.loads(sidecar_path(engine).read_text()) == meta
    assert meta["sha256"] == hashlib.sha256(engine.read_bytes()).hexdigest()
    assert meta["tensorrt_version"] == tensorrt.__version__ and meta["precision"] == "fp16"
    assert meta["compute_capability"].count(".") == 1 and meta["gpu"]
    assert meta["strongly_typed"] == (trt_major() >= 11) and meta["calibration"] is None
    assert (meta["min_batch"], meta["opt_batch"], meta["max_batch"]) == (1, 1, 4)
    runner = open_runner(engine)
    try:
        assert (runner.backend, runner.precision, runner.device) == ("tensorrt", "fp16", "cuda")
        for n in (1, 3, 6):  # 6 > max_batch: run in two chunks
            x = batch(n)
            got = runner.run(x)
            assert got.dtype == np.float32 and got.shape == (n, 5)
            assert rel_error(got, ort_logits(onnx_models["fp32"], x)) < 0.02
    finally:
        runner.close()
    build_engine(onnx_models["fp16"], engine, "fp16", max_batch=4, timing_cache=cache)  # reuses the cache


@pytest.mark.tensorrt
def test_fp16_from_an_fp32_onnx_uses_the_flag_before_tensorrt_11(onnx_models: dict[str, Path], tmp_path: Path) -> None:
    from edgetl.runtime.tensorrt import TrtRunner

    engine = tmp_path / "model.fp16.engine"
    if trt_major() >= 11:
        with pytest.raises(UsageError, match="strongly typed.*model.fp16.onnx"):
            build_engine(onnx_models["fp32"], engine, "fp16")
        return
    build_engine(onnx_models["fp32"], engine, "fp16", max_batch=4)
    runner = TrtRunner(engine)
    try:
        x = batch(3)
        assert rel_error(runner.run(x), ort_logits(onnx_models["fp32"], x)) < 0.02
    finally:
        runner.close()


@pytest.mark.tensorrt
def test_int8_engine_from_the_qdq_onnx_matches_onnxruntime(onnx_models: dict[str, Path], tmp_path: Path) -> None:
    from edgetl.runtime.tensorrt import TrtRunner

    engine = tmp_path / "model.int8.engine"
    meta = build_engine(onnx_models["int8"], engine, "int8", max_batch=4)
    assert meta["calibration"] == "explicit-qdq"
    with pytest.raises(UsageError, match="Q/DQ.*--int8"):
        build_engine(onnx_models["int8"], tmp_path / "wrong.engine", "fp16")
    runner = TrtRunner(engine)
    try:
        assert runner.precision == "int8"
        for n in (1, 3):
            x = batch(n)
            assert rel_error(runner.run(x), ort_logits(onnx_models["int8"], x)) < 0.1
    finally:
        runner.close()


@pytest.mark.tensorrt
def test_implicit_calibration_before_tensorrt_11_only(onnx_models: dict[str, Path], tmp_path: Path) -> None:
    from edgetl.runtime.tensorrt import TrtRunner

    engine, calib_cache = tmp_path / "model.int8.engine", tmp_path / "calib.cache"
    batches = [np.concatenate(calib_inputs(16)[i:i + 4]) for i in range(0, 16, 4)]
    if trt_major() >= 11:
        with pytest.raises(UsageError, match="no implicit INT8 calibration"):
            build_engine(onnx_models["fp32"], engine, "int8", calibrator_batches=batches, calib_cache=calib_cache)
        return
    with pytest.raises(UsageError, match="no Q/DQ nodes"):
        build_engine(onnx_models["fp32"], engine, "int8")
    meta = build_engine(onnx_models["fp32"], engine, "int8", max_batch=4, calibrator_batches=batches,
                        calib_cache=calib_cache)
    assert meta["calibration"] == "implicit-entropy" and calib_cache.stat().st_size > 0
    runner = TrtRunner(engine)
    try:
        x = batch(3)
        assert rel_error(runner.run(x), ort_logits(onnx_models["fp32"], x)) < 0.2
    finally:
        runner.close()


@pytest.mark.tensorrt
def test_runner_refuses_an_engine_whose_sidecar_hash_was_altered(onnx_models: dict[str, Path], tmp_path: Path) -> None:
    from edgetl.runtime.tensorrt import TrtRunner

    engine = tmp_path / "model.fp16.engine"
    meta = build_engine(onnx_models["fp16"], engine, "fp16", max_batch=2)
    sidecar_path(engine).write_text(json.dumps({**meta, "sha256": "0" * 64}))
    with pytest.raises(ArtifactError, match="sha256.*rebuild it: edgetl build"):
        TrtRunner(engine)


@pytest.mark.tensorrt
def test_qdq_engines_are_strongly_typed_from_tensorrt_10_unless_asked_otherwise(onnx_models: dict[str, Path],
                                                                                tmp_path: Path) -> None:
    engine = tmp_path / "model.int8.engine"
    meta = build_engine(onnx_models["int8"], engine, "int8", max_batch=4)
    assert meta["strongly_typed"] is (trt_major() >= 10)
    assert meta["profiling_verbosity"] == "default" and not (tmp_path / "model.int8.layers.json").exists()
    if trt_major() == 10:
        weak = build_engine(onnx_models["int8"], tmp_path / "weak.int8.engine", "int8", max_batch=4, weak_typing=True)
        assert weak["strongly_typed"] is False


@pytest.mark.tensorrt
def test_build_profile_writes_every_layer_with_its_precision_and_time(onnx_models: dict[str, Path],
                                                                      tmp_path: Path) -> None:
    from edgetl.artifacts.layers import layers_path, load_layers

    engine = tmp_path / "model.int8.engine"
    meta = build_engine(onnx_models["int8"], engine, "int8", max_batch=4, profile=True)
    assert meta["profiling_verbosity"] == "detailed"
    doc = load_layers(engine)
    assert layers_path(engine).is_file() and doc["format"] == ("tensorrt-11" if trt_major() >= 11 else "tensorrt-10")
    assert doc["layers"] and doc["total_ms"] > 0 and doc["profile"][0] == {"count": 50}
    assert "int8" in {r["precision"] for r in doc["layers"]}  # the Q/DQ convolutions
    assert all(r["median_ms"] is None or r["median_ms"] >= 0 for r in doc["layers"])


@pytest.mark.tensorrt
@pytest.mark.parametrize("graph", [False, True], ids=["events", "cuda-graph"])
def test_engine_timing_with_resident_inputs_reports_gpu_and_host_time(onnx_models: dict[str, Path], tmp_path: Path,
                                                                      graph: bool) -> None:
    from edgetl.bench.timing import EventTimed, sample
    from edgetl.runtime.tensorrt import TrtRunner

    engine = tmp_path / "model.fp16.engine"
    build_engine(onnx_models["fp16"], engine, "fp16", max_batch=4)
    runner = TrtRunner(engine)
    try:
        timed = EventTimed(runner, [batch(2) for _ in range(4)], cuda_graph=graph)
        try:
            assert timed.timer == ("cuda-graph" if graph and not timed.resident.graph_error else "cuda-event")
            gpu = sample(timed, warmup=5, iters=30, min_seconds=0, min_samples=30)
            assert len(gpu) == len(timed.host) == 30 and min(gpu) > 0
            assert sorted(timed.host)[15] >= 0.9 * sorted(gpu)[15]  # the host waited for the GPU work it timed
        finally:
            timed.close()
        assert rel_error(runner.run(batch(3)), ort_logits(onnx_models["fp32"], batch(3))) < 0.02  # still usable
    finally:
        runner.close()
