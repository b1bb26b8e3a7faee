"""Export: verified FP32/FP16 ONNX, TensorRT-shaped INT8, the accuracy guard, the calibration cache, the manifest."""

from __future__ import annotations

import json
import re
from dataclasses import replace
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from conftest import CIFAR, assert_tensorrt_int8_shape, copy_run, copy_subset, needs_cifar

from edgetl.errors import EdgetlError
from edgetl.export.config import ExportConfig
from edgetl.export.pipeline import export
from edgetl.fileio import sha256_file
from edgetl.runtime.onnxruntime import OrtRunner
from edgetl.train.config import TrainConfig
from edgetl.train.loop import finetune


def _manifest(out: Path) -> dict:
    return json.loads((out / "manifest.json").read_text())


def test_fp32_onnx_matches_pytorch_on_real_images(digits_run: Path, tmp_path: Path) -> None:
    """The default model (bundled Lite0, static 'same' padding) on real digit scans."""
    from edgetl.evaluate import load_run_model

    run = copy_run(digits_run, tmp_path / "run")
    export(ExportConfig(run=str(run), engine=False))
    out = run / "export"
    m = onnx.load(str(out / "model.onnx"))
    onnx.checker.check_model(m, full_check=True)
    assert m.opset_import[0].version == 17
    assert not any(t.data_location == onnx.TensorProto.EXTERNAL for t in m.graph.initializer)
    assert [d.dim_param for d in m.graph.input[0].type.tensor_type.shape.dim][:1] == ["batch"]
    assert not {"Shape", "Ceil"} & {n.op_type for n in m.graph.node}  # 'same' padding frozen to Pad
    entry = _manifest(out)["artifacts"][0]
    assert entry["verification"]["top1_agreement"] == 1.0 and entry["verification"]["max_abs_diff"] < 1e-3
    # independent check, batch of 5 through the dynamic batch axis
    from edgetl.data.sources import eval_transform, load_data
    from edgetl.images import load_rgb

    rm = load_run_model(run)
    val = load_data("digits").val
    x = torch.stack([eval_transform(rm.preprocess)(load_rgb(val.items[i])) for i in range(5)])
    with torch.no_grad():
        ref = rm.model(x).numpy()
    np.testing.assert_allclose(OrtRunner(out / "model.onnx").run(x.numpy()), ref, atol=1e-3)


@needs_cifar
def test_resnet18_onnx_parity_on_cifar_images(tmp_path: Path) -> None:
    data = tmp_path / "cifar"
    copy_subset(CIFAR / "train", data / "train", 3)
    copy_subset(CIFAR / "val", data / "val", 2)
    finetune(TrainConfig(data=str(data), out=str(tmp_path / "run"), model="resnet18", weights="none",
                         img_size=64, epochs=1, batch_size=8, workers=0))
    export(ExportConfig(run=str(tmp_path / "run"), engine=False))
    v = _manifest(tmp_path / "run" / "export")["artifacts"][0]["verification"]
    assert v["images"] == 20 and v["top1_agreement"] == 1.0 and v["max_abs_diff"] < 1e-3


def test_int8_graph_has_the_shape_tensorrt_needs(tiny_run: Path, tmp_path: Path) -> None:
    run = copy_run(tiny_run, tmp_path / "run")
    report = export(ExportConfig(run=str(run), int8=True, fp16=True, engine=False, calib_size=64))
    out = run / "export"
    m = onnx.load(str(out / "model.int8.onnx"))
    stem = _manifest(out)["calibration"]["float_stem"]
    convs = [n for n in m.graph.node if n.op_type == "Conv"]
    assert len(stem) == 1 and stem[0] == convs[0].name  # the first conv sees raw pixels: kept in float
    assert_tensorrt_int8_shape(m, float_layers=stem)
    # accuracy is measured, reported, and small on this real data
    assert report.accuracy["fp32"]["top1"] > 85
    assert report.accuracy["int8"]["delta_top1"] > -3.0
    # FP16: float16 weights, float32 I/O
    h = onnx.load(str(out / "model.fp16.onnx"))
    assert h.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert h.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in h.graph.initializer)
    # the manifest lists each artifact with the hash of the file on disk
    man = _manifest(out)
    assert {a["file"] for a in man["artifacts"]} == {"model.onnx", "model.fp16.onnx", "model.int8.onnx"}
    for a in man["artifacts"]:
        assert a["sha256"] == sha256_file(out / a["file"]) and a["format"] == "onnx"
    assert man["preprocess"]["size"] == 32 and man["classes"] == [str(i) for i in range(10)]
    assert man["calibration"]["images"] == 64 and man["calibration"]["reused"] is False


def test_calibration_cache_is_reused(tiny_run: Path, tmp_path: Path) -> None:
    run = copy_run(tiny_run, tmp_path / "run")
    cfg = ExportConfig(run=str(run), int8=True, engine=False, calib_size=32, calib_method="minmax")
    export(cfg)
    out = run / "export"
    cache_mtime = (out / "calib.cache").stat().st_mtime_ns
    first = sha256_file(out / "model.int8.onnx")
    lines: list[str] = []
    export(cfg, log=lines.append)
    assert any(ln.startswith("reusing calibration ranges") for ln in lines)
    assert _manifest(out)["calibration"]["reused"] is True
    assert (out / "calib.cache").stat().st_mtime_ns == cache_mtime
    assert sha256_file(out / "model.int8.onnx") == first
    # other calibration data invalidates the cache
    cfg.calib_size = 16
    lines.clear()
    export(cfg, log=lines.append)
    assert any(ln.startswith("calibrating on 16 images") for ln in lines)


def test_accuracy_guard_keeps_sensitive_layers_in_float(tiny_run: Path, gray_calib: Path, tmp_path: Path) -> None:
    run = copy_run(tiny_run, tmp_path / "run")
    report = export(ExportConfig(run=str(run), int8=True, engine=False, calib=str(gray_calib), max_drop=0.5,
                                 min_int8=0.0))  # bad ranges need many float layers: accepted here on purpose
    guard = report.guard
    assert guard["initial_drop"] > 20  # the bad calibration really hurts
    assert guard["float_layers"] and guard["final_drop"] <= 0.5
    m = onnx.load(str(run / "export" / "model.int8.onnx"))
    dq_outputs = {o for n in m.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    by_name = {n.name: n for n in m.graph.node}
    weighted = [x for x in guard["float_layers"] if x["op"] in ("Conv", "Gemm", "MatMul")]
    assert weighted
    for layer in weighted:  # a float Conv reads float activations and float weights; a float Add may still
        # read a tensor its quantized producer hands to other consumers through Q/DQ
        assert not any(i in dq_outputs for i in by_name[layer["name"]].input), layer
    entry = next(a for a in _manifest(run / "export")["artifacts"] if a["file"] == "model.int8.onnx")
    assert [x["name"] for x in entry["float_layers"]] == [x["name"] for x in guard["float_layers"]]


def test_guard_that_cannot_fit_fails_and_keeps_fp32_and_fp16(tiny_run: Path, gray_calib: Path, tmp_path: Path) -> None:
    """Bad ranges and a --min-int8 that leaves the guard no layer to float: exit 1, say what to try, keep FP32/FP16."""
    run = copy_run(tiny_run, tmp_path / "run")
    r = subprocess.run([sys.executable, "-m", "edgetl", "export", str(run), "--int8", "--fp16", "--calib", str(gray_calib),
                        "--max-drop", "0.5", "--min-int8", "0.999", "--no-engine"], capture_output=True, text=True)
    assert r.returncode == 1
    assert "misses the --max-drop 0.5 budget" in r.stderr and "--calib-method" in r.stderr
    assert "Traceback" not in r.stderr
    out = run / "export"
    assert not (out / "model.int8.onnx").exists()
    files = {a["file"] for a in _manifest(out)["artifacts"]}
    assert files == {"model.onnx", "model.fp16.onnx"}


def test_mostly_float_int8_is_a_failure_unless_accepted(tiny_run: Path, tmp_path: Path) -> None:
    """An INT8 file whose MACs mostly stay in float is not an INT8 artifact: exit 1 with the share, no file."""
    run = copy_run(tiny_run, tmp_path / "run")
    cmd = [sys.executable, "-m", "edgetl", "export", str(run), "--int8", "--calib-size", "32", "--no-engine"]
    r = subprocess.run([*cmd, "--min-int8", "1.0"], capture_output=True, text=True)  # the float stem alone breaks it
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert "would be mostly float" in r.stderr and "weighted layers in INT8" in r.stderr and "--min-int8 0" in r.stderr
    assert not (run / "export" / "model.int8.onnx").exists()
    r = subprocess.run([*cmd, "--min-int8", "0"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    entry = next(a for a in _manifest(run / "export")["artifacts"] if a["file"] == "model.int8.onnx")
    share = entry["int8"]
    assert share["int8_layers"] == share["weighted_layers"] - 1 and 0.5 < share["int8_mac_share"] < 1.0


@pytest.mark.parametrize("option,value", [("--max-drop", "nan"), ("--max-drop", "-1"), ("--max-drop", "inf"),
                                          ("--min-int8", "1.5"), ("--min-int8", "nan")])
def test_int8_budgets_reject_nonsense(tiny_run: Path, option: str, value: str) -> None:
    r = subprocess.run([sys.executable, "-m", "edgetl", "export", str(tiny_run), "--int8", "--no-engine", option, value],
                       capture_output=True, text=True)
    assert r.returncode == 2 and option in r.stderr and "Traceback" not in r.stderr


def test_cli_export_says_engines_were_skipped(tiny_run: Path, tmp_path: Path) -> None:
    run = copy_run(tiny_run, tmp_path / "run")
    r = subprocess.run([sys.executable, "-m", "edgetl", "export", str(run)], capture_output=True, text=True,
                       env={**__import__("os").environ, "COLUMNS": "200"})
    assert r.returncode == 0, r.stderr
    skipped = [ln for ln in r.stdout.splitlines() if "TensorRT engines skipped" in ln]
    assert len(skipped) == 1 and "edgetl build" in skipped[0]
    assert "model.onnx" in r.stdout


def test_calib_command_writes_a_stratified_set(tmp_path: Path) -> None:
    out = tmp_path / "calib" / "digits"
    r = subprocess.run([sys.executable, "-m", "edgetl", "calib", "--data", "digits", "--size", "50", "--out", str(out)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    info = json.loads((out / "calib.json").read_text())
    assert info["size"] == 50 and sorted(info["per_class"].values()) == [5] * 10
    assert len(list(out.glob("*/*.png"))) == 50
    r = subprocess.run([sys.executable, "-m", "edgetl", "calib", "--data", "digits", "--size", "5", "--out", str(out)],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "not empty" in r.stderr


def test_bad_export_options_are_usage_errors(tiny_run: Path) -> None:
    with pytest.raises(EdgetlError, match="opset"):
        export(ExportConfig(run=str(tiny_run), opset=11))
    with pytest.raises(EdgetlError, match="--batch"):
        export(ExportConfig(run=str(tiny_run), batch="many"))


def test_cpu_int8_variant_uses_uint8_activations_and_weights_no_int16_pair_can_saturate(
        tiny_cpu_export: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """model.int8-cpu.onnx: uint8 activations, and per-channel weight scales that keep every pair of
    weights x86 kernels add in int16 within 128, so that even where those kernels can saturate (AVX2)
    edgetl's runner and a plain ONNX Runtime user need no session setting."""
    from edgetl.runtime import Predictor
    from edgetl.runtime.numerics import k_rows, pair_sums, paired_weights

    out = tiny_cpu_export / "export"
    m = onnx.load(str(out / "model.int8-cpu.onnx"))
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in m.graph.initializer}
    zps = [inits[n.input[2]] for n in m.graph.node if n.op_type == "QuantizeLinear"]
    assert zps and all(z.dtype == np.uint8 for z in zps)
    paired = paired_weights(m.graph)
    assert paired and all(pair_sums(k_rows(inits[w], op)).max() <= 128 for w, op in paired.items())
    assert max(int(np.abs(inits[w].astype(np.int16)).max()) for w in paired) > 64  # more than 7-bit weights
    trt = onnx.load(str(out / "model.int8.onnx"))
    trt_inits = {t.name: onnx.numpy_helper.to_array(t) for t in trt.graph.initializer}
    assert max(pair_sums(k_rows(trt_inits[w], op)).max() for w, op in paired_weights(trt.graph).items()) > 128
    entry = next(a for a in _manifest(out)["artifacts"] if a["file"] == "model.int8-cpu.onnx")
    assert entry["target"] == "cpu" and entry["precision"] == "int8" and entry["sha256"] == sha256_file(out / entry["file"])
    assert entry["accuracy"]["int16_safe"] is True and entry["accuracy"]["ort_session_config"] == {}
    assert entry["accuracy"]["delta_top1"] >= -0.5  # within the default --max-drop, or not written
    monkeypatch.setenv("EDGETL_INT8_ISA", "avx2")
    runner = Predictor(out / "model.int8-cpu.onnx").runner
    assert runner.precision == "int8" and runner.session_config == {}
    assert OrtRunner(out / "model.int8.onnx").session_config == {"session.x64quantprecision": "1"}


def test_bias_correction_shifts_only_biases_and_removes_the_mean_error(tiny_run: Path, tmp_path: Path) -> None:
    """The corrected TensorRT-layout file differs from the uncorrected one in Conv biases alone, and its
    logits' per-class mean on validation images moves toward FP32's. (No accuracy guard here: where one
    of the two misses the budget, the tiny model a CPU trains, it would float a layer.)"""
    from edgetl.data.sources import eval_transform, load_data, make_loader
    from edgetl.images import Preprocess

    files = {}
    for corrected in (False, True):
        run = copy_run(tiny_run, tmp_path / f"run-{corrected}")
        export(ExportConfig(run=str(run), int8=True, engine=False, calib_size=64, bias_correction=corrected,
                            max_drop=100))
        files[corrected] = run / "export"
    plain, fixed = (onnx.load(str(files[c] / "model.int8.onnx")) for c in (False, True))
    assert [(n.op_type, list(n.input)) for n in plain.graph.node] == [(n.op_type, list(n.input)) for n in fixed.graph.node]
    biases = {n.input[2] for n in fixed.graph.node if n.op_type == "Conv" and len(n.input) > 2}
    a = {t.name: onnx.numpy_helper.to_array(t) for t in plain.graph.initializer}
    b = {t.name: onnx.numpy_helper.to_array(t) for t in fixed.graph.initializer}
    changed = {k for k in a if not np.array_equal(a[k], b[k])}
    assert changed and changed <= biases
    pp = Preprocess.from_dict(_manifest(files[True])["preprocess"])
    x = torch.cat([x for x, _ in make_loader(load_data("digits").val, eval_transform(pp), 128, shuffle=False,
                                              workers=0)]).numpy()
    ref = OrtRunner(files[True] / "model.onnx").run(x).mean(axis=0)
    err = {c: np.abs(OrtRunner(files[c] / "model.int8.onnx", simulate=True).run(x).mean(axis=0) - ref).sum()
           for c in (False, True)}
    assert err[True] < err[False]


def test_every_layer_the_guard_can_float_leaves_a_valid_graph(tmp_path: Path) -> None:
    """torch inlines HardSwish (MobileNetV3) into nodes named "": the guard floats layers by name, so
    two unnamed nodes once got each other's inputs and a cyclic graph. Every node is named now."""
    import onnxruntime as ort
    from torch import nn

    from edgetl.data.sources import Split
    from edgetl.export.int8.calibrate import calibrate, prepare
    from edgetl.export.int8.qdq import Floater, quantize, quantized_nodes
    from edgetl.export.onnx import export_onnx
    from edgetl.fileio import atomic_write_json
    from edgetl.images import Preprocess

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.Hardswish(), nn.Conv2d(8, 8, 3), nn.Hardswish(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4)).eval()
    export_onnx(net, tmp_path / "m.onnx", 16, 17)
    prep = prepare(tmp_path / "m.onnx", tmp_path)
    names = [n.name for n in onnx.load(str(prep)).graph.node]
    assert all(names) and len(set(names)) == len(names)
    rng = np.random.default_rng(0)
    split = Split([rng.integers(0, 256, (16, 16, 3), dtype=np.uint8) for _ in range(8)], [0] * 8)
    ranges = calibrate(prep, split, Preprocess(16, 16, (0.5,) * 3, (0.5,) * 3), "minmax", tmp_path)
    atomic_write_json(tmp_path / "calib.cache", ranges)
    quantize(prep, tmp_path / "q.onnx", tmp_path / "calib.cache", "minmax", [])
    q = onnx.load(str(tmp_path / "q.onnx"))
    floater = Floater(q, onnx.load(str(prep)))
    candidates = quantized_nodes(q)
    assert len(candidates) >= 4
    for name in candidates:
        ort.InferenceSession(floater.floated([name]).SerializeToString(), providers=["CPUExecutionProvider"])


def test_floating_every_layer_gives_back_the_fp32_model(tiny_export: Path, tmp_path: Path) -> None:
    """The guard's float layers are the FP32 model's own, biases included (bias correction shifted
    model.int8.onnx's for INT8 errors), and the logits are never quantized: with every layer floated,
    the INT8 file computes FP32's logits. Short of that, floating more layers could make it worse."""
    from edgetl.export.int8.calibrate import prepare
    from edgetl.export.int8.qdq import Floater, quantized_nodes

    export_dir = tiny_export / "export"
    prep = prepare(export_dir / "model.onnx", tmp_path)
    q = onnx.load(str(export_dir / "model.int8.onnx"))
    made = {o: n.op_type for n in q.graph.node for o in n.output}
    assert [made[o.name] for o in q.graph.output] == ["Gemm"]
    floated = Floater(q, onnx.load(str(prep))).floated(quantized_nodes(q))
    assert not [n for n in floated.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    (tmp_path / "floated.onnx").write_bytes(floated.SerializeToString())
    x = np.random.default_rng(0).normal(size=(8, 3, 32, 32)).astype(np.float32)
    ref = OrtRunner(export_dir / "model.onnx").run(x)
    np.testing.assert_allclose(OrtRunner(tmp_path / "floated.onnx").run(x), ref, atol=1e-4)


def test_guard_search_finds_the_fewest_float_layers_trying_each_count_once() -> None:
    """The guard and the CPU variant search k (layers in float) the same way: the least k that fits, each
    k evaluated at most once (an evaluation is a validation pass), None where even the most allowed fail."""
    from edgetl.export.int8.guard import fewest

    for need in range(1, 21):
        tried: list[int] = []

        def fits(k: int) -> bool:
            tried.append(k)
            return k >= need

        assert fewest(20, fits) == need and len(tried) == len(set(tried)) and len(tried) <= 10, (need, tried)
    assert fewest(20, lambda k: False) is None and fewest(0, lambda k: True) is None


def test_guard_candidates_skip_a_layer_too_large_for_min_int8_and_keep_smaller_ones_after_it() -> None:
    """With --min-int8, the guard walks the ranking leaving out each layer whose floating would take the
    INT8 share of the MACs under the budget, given the ones already in; smaller layers after it stay
    candidates (a layer already in float costs nothing, within the budget)."""
    from edgetl.export.int8.guard import within_budget
    from edgetl.export.int8.qdq import Int8Share

    macs = {"big": 40, "a": 10, "b": 15, "c": 5, "floated": 30}
    share = Int8Share(5, 4, 100, 70, ("big", "a", "b", "c"))  # "floated" is float already
    order = ["a", "big", "floated", "b", "c"]
    assert within_budget(order, share, macs, 0.5) == ["a", "floated", "c"]  # 70-10=60, big:20<50, b:45<50, c:55
    assert within_budget(order, share, macs, 0.0) == order
    assert within_budget(order, share, macs, 0.6) == ["a", "floated"]  # exactly at the budget is within it
    assert within_budget(order, share, macs, 0.71) == []  # already under it: nothing may float


def test_guard_sends_back_to_int8_each_float_layer_the_budget_does_not_need_the_biggest_first() -> None:
    """After the prefix search, each floated layer goes back to INT8 where the drop still fits without
    it, the layers with the most MACs tried first, each once, never leaving nothing in float (that
    model already failed)."""
    from edgetl.export.int8.guard import prune

    macs = {"a": 1, "b": 4, "c": 3, "d": 2}
    asked: list[list[str]] = []

    def fits(rest: list[str], name: str) -> bool:
        asked.append(rest)
        return "c" in rest and ("a" in rest or "d" in rest)

    assert prune(["a", "b", "c", "d"], macs, fits) == ["a", "c"]
    assert asked == [["a", "c", "d"], ["a", "d"], ["a", "c"], ["c"]]
    assert prune(["a"], macs, fits) == ["a"] and len(asked) == 4


def test_cpu_file_floats_its_own_layers_past_the_budget_or_fails_the_export(tiny_run: Path, tmp_path: Path) -> None:
    """Where model.int8-cpu.onnx misses --max-drop on this CPU's kernels with model.int8.onnx's float
    layers, it floats more of its own (listed after those, and under ``guard.added``) and is written
    within the budget; where --min-int8 leaves it none to float, it is written only within the budget,
    or export fails naming it, keeping model.int8.onnx. A budget of 0 with entropy ranges makes the
    tiny model's CPU file miss."""
    run = copy_run(tiny_run, tmp_path / "run")
    cfg = ExportConfig(run=str(run), int8=True, int8_cpu=True, engine=False, calib_size=128, calib_method="entropy",
                       quantize_stem=True, max_drop=0.0, min_int8=0.0)
    export(cfg)
    manifest = _manifest(run / "export")
    entries = {a["file"]: a for a in manifest["artifacts"]}
    trt, cpu = entries["model.int8.onnx"], entries["model.int8-cpu.onnx"]
    added = (cpu.get("guard") or {}).get("added", [])
    if not added:
        pytest.skip("the CPU file met a budget of 0 with model.int8.onnx's float layers on this CPU's kernels")
    assert cpu["accuracy"]["delta_top1"] >= 0 and cpu["accuracy"]["numerics"].startswith("onnxruntime")
    trt_floats = [x["name"] for x in trt["float_layers"]]
    assert not set(added) & set(trt_floats)
    assert [x["name"] for x in cpu["float_layers"]] == trt_floats + added
    assert all({"op", "mac_share", "sensitivity_mse"} <= set(x) for x in cpu["float_layers"])
    weighted = [x for x in cpu["float_layers"] if x["op"] in ("Conv", "Gemm", "MatMul")]
    assert cpu["int8"]["int8_layers"] == cpu["int8"]["weighted_layers"] - len(weighted)

    try:  # --min-int8 1: no weighted layer may float, in either file
        export(replace(cfg, min_int8=1.0))
    except EdgetlError as e:
        if "model.int8-cpu.onnx" not in str(e):
            pytest.skip(f"model.int8.onnx itself needs a weighted float layer on this CPU's tiny model: {e}")
        assert re.search(r"model\.int8-cpu\.onnx misses the --max-drop 0 budget on this CPU's kernels", str(e))
        files = [a["file"] for a in _manifest(run / "export")["artifacts"]]
        assert "model.int8.onnx" in files and "model.int8-cpu.onnx" not in files
        assert not (run / "export" / "model.int8-cpu.onnx").exists()
    else:  # its drop was 0 with no weighted layer in float
        cpu = {a["file"]: a for a in _manifest(run / "export")["artifacts"]}["model.int8-cpu.onnx"]
        assert cpu["int8"]["int8_mac_share"] == 1.0 and cpu["accuracy"]["delta_top1"] >= 0


def test_int16_safe_scales_keep_every_pair_within_int16_and_full_8_bits_where_pairs_allow() -> None:
    """A channel whose two largest weights sit in one pair with one sign drops to 7 bits; one whose pairs
    fit keeps max|w|/127, opposite signs included (their products cancel); no pair of rounded weights
    ever adds up to more than 127 (255 x 128 fits int16)."""
    from edgetl.export.int8.qdq import int16_safe_scales
    from edgetl.runtime.numerics import pair_sums

    rng = np.random.default_rng(0)
    rows = rng.standard_normal((256, 97)).astype(np.float32)
    rows[0, :2] = [-3.0, -3.0]  # the worst case: 7 bits
    rows[1] = 0.01
    rows[1, 0] = 1.0  # a lone peak: (almost) all 8 bits
    rows[2] = 0.01
    rows[2, :2] = [3.0, -3.0]  # opposite signs: all 8 bits
    scales = int16_safe_scales(rows)
    padded = np.pad(rows, ((0, 0), (0, 1)))
    q = np.rint(padded / scales[:, None])
    assert pair_sums(q).max() <= 127 and np.abs(q).max() <= 127
    full = np.abs(rows).max(axis=1) / 127
    assert np.all(scales >= full * (1 - 1e-6)) and np.all(scales <= 2 * full * 1.01)
    assert scales[0] == pytest.approx(2 * full[0], rel=0.01) and scales[1] == pytest.approx(full[1], rel=0.02)
    assert scales[2] == pytest.approx(full[2], rel=1e-6)


def test_cpu_guard_ranking_finds_a_broken_layer_on_this_cpus_kernels(tiny_export: Path, tmp_path: Path) -> None:
    """The CPU file's guard ranks layers on its own layout and kernels: floating a layer in place gives
    the logits of quantizing with that layer left out, and a layer whose INT8 weights are zeroed comes
    first, far ahead of the rest."""
    from edgetl.data.sources import run_data
    from edgetl.evaluate import load_run_model
    from edgetl.export.int8.calibrate import calibration_split, prepare
    from edgetl.export.int8.guard import rank
    from edgetl.export.int8.job import Int8Job, ValFeed
    from edgetl.export.int8.qdq import Floater, int8_share, layer_macs, quantize, stem_nodes
    from edgetl.progress import Log

    rm, export_dir = load_run_model(tiny_export), tiny_export / "export"
    ds = run_data(rm.run)
    prep = prepare(export_dir / "model.onnx", tmp_path)
    prep_model, cache, stem = onnx.load(str(prep)), export_dir / "calib.cache", stem_nodes(prep)
    cfg = ExportConfig(run=str(tiny_export))
    job = Int8Job(prep, tmp_path, cache, cfg, calibration_split(ds, None, 64), ValFeed(ds.val, rm.preprocess, 10),
                  None, layer_macs(prep_model), Log())  # type: ignore[arg-type]
    quantize(prep, tmp_path / "all.onnx", cache, cfg.calib_method, stem, cpu=True)
    q = onnx.load(str(tmp_path / "all.onnx"))
    layers = list(int8_share(q, job.macs).int8_names)
    broken = layers[len(layers) // 2]

    x = np.random.default_rng(0).normal(size=(4, 3, 32, 32)).astype(np.float32)
    quantize(prep, tmp_path / "left-out.onnx", cache, cfg.calib_method, stem + [broken], cpu=True)
    (tmp_path / "in-place.onnx").write_bytes(Floater(q, prep_model, in_place=True).floated([broken]).SerializeToString())
    in_place, left_out = (OrtRunner(tmp_path / f).run(x) for f in ("in-place.onnx", "left-out.onnx"))
    logits = json.loads(cache.read_text())["data"][q.graph.output[0].name]  # the logits stay float: their range
    lo, hi = (float(np.ravel(v["data"] if isinstance(v, dict) else v)[0]) for v in (logits["lowest"], logits["highest"]))
    assert np.abs(in_place - left_out).max() <= 1.01 * (hi - lo) / 255  # the same but for one INT8 step of the logits

    node = next(n for n in q.graph.node if n.name == broken)
    dq = next(n for n in q.graph.node if n.output[0] == node.input[1])
    w = next(t for t in q.graph.initializer if t.name == dq.input[0])
    w.CopyFrom(onnx.numpy_helper.from_array(np.zeros_like(onnx.numpy_helper.to_array(w)), w.name))
    order, gains = rank(job, Floater(q, prep_model, in_place=True), layers, kernels=True)
    assert order[0] == broken and sorted(order) == sorted(layers)
    assert gains[broken] > 3 * max(abs(gains[n]) for n in order[1:]), gains


def _bias_setup(run: Path, tmp_path: Path) -> tuple:
    """What bias correction works with on an exported run: its job, prepared FP32 model, and the
    images it measures on (drawn as `correct_biases` draws them)."""
    from edgetl.data.sources import eval_transform, make_loader, run_data
    from edgetl.evaluate import load_run_model
    from edgetl.export.int8.bias import BIAS_PIXELS
    from edgetl.export.int8.calibrate import calibration_split, prepare
    from edgetl.export.int8.job import PROBE_MIN_IMAGES, Int8Job, ValFeed
    from edgetl.export.int8.qdq import layer_macs
    from edgetl.progress import Log

    rm = load_run_model(run)
    ds = run_data(rm.run)
    prep = prepare(run / "export" / "model.onnx", tmp_path)
    prep_model = onnx.load(str(prep))
    job = Int8Job(prep, tmp_path, run / "export" / "calib.cache", ExportConfig(run=str(run)),
                  calibration_split(ds, None, 64), ValFeed(ds.val, rm.preprocess, 10), None,  # type: ignore[arg-type]
                  layer_macs(prep_model), Log())
    n = max(PROBE_MIN_IMAGES, BIAS_PIXELS // rm.preprocess.size ** 2)
    x = np.concatenate([b.numpy() for b, _ in make_loader(job.calib.sample(n), eval_transform(rm.preprocess), 64,
                                                          shuffle=False, workers=0)])
    return job, prep_model, x


def _mean_errors(model: onnx.ModelProto, prep_model: onnx.ModelProto, convs: list, x: np.ndarray) -> list[float]:
    """Each conv's largest per-channel output-mean error against FP32, relative to FP32's largest
    channel mean, from the whole graph with every conv's output added (not bias.py's segments), with
    Q/DQ simulated in float as reported accuracy is."""
    import onnxruntime as ort
    from onnx import helper

    def means(m: onnx.ModelProto, names: list[str], simulate: bool) -> list[np.ndarray]:
        full = onnx.ModelProto()
        full.CopyFrom(m)
        full.graph.output.extend(helper.make_tensor_value_info(t, onnx.TensorProto.FLOAT, None) for t in names)
        opts = ort.SessionOptions()
        if simulate:
            opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
            opts.add_session_config_entry("session.disable_quant_qdq", "1")
        outs = ort.InferenceSession(full.SerializeToString(), opts, providers=["CPUExecutionProvider"]).run(
            names, {"input": x})
        return [o.astype(np.float64).mean(axis=(0, 2, 3)) for o in outs]

    prep_conv = {c.name: c.output[0] for c in prep_model.graph.node if c.op_type == "Conv"}
    ref = means(prep_model, [prep_conv[c.name] for c in convs], False)
    got = means(model, [c.output[0] for c in convs], True)
    return [float(np.abs(m - r).max() / (np.abs(r).max() + 1e-6)) for m, r in zip(got, ref)]


def test_guard_corrects_again_the_biases_after_its_float_layers_and_only_those(tiny_export: Path,
                                                                                 tmp_path: Path) -> None:
    """Bias correction left each conv's per-channel output mean at FP32's, given the INT8 layers before
    it. Floating one undoes that for the convs after it; the guard's re-correction from the first float
    layer on restores it on the same images, and leaves every bias before that layer as it was."""
    from edgetl.export.int8.bias import correct_biases
    from edgetl.export.int8.qdq import Floater, quantized_nodes

    job, prep_model, x = _bias_setup(tiny_export, tmp_path)
    q = onnx.load(str(tiny_export / "export" / "model.int8.onnx"))
    convs = [n for n in q.graph.node if n.op_type == "Conv" and len(n.input) > 2]
    layers = [n for n in quantized_nodes(q) if n in {c.name for c in convs}]
    mid = layers[len(layers) // 2]
    floated = Floater(q, prep_model).floated([mid])
    fixed = onnx.ModelProto()
    fixed.CopyFrom(floated)
    first = [c.name for c in convs].index(mid)
    assert correct_biases(job, fixed, prep_model, [mid]) == len(convs) - first

    err = {name: _mean_errors(model, prep_model, convs[first:], x) for name, model in
           (("floated", floated), ("fixed", fixed))}
    assert max(err["fixed"]) < 1e-4, err["fixed"]
    assert max(err["floated"][1:]) > 100 * max(err["fixed"]), err
    bias_of = {name: {c.name: onnx.numpy_helper.to_array(next(t for t in model.graph.initializer
                                                               if t.name == c.input[2]))
                      for c in model.graph.node if c.op_type == "Conv" and len(c.input) > 2}
               for name, model in (("floated", floated), ("fixed", fixed))}
    assert all(np.array_equal(bias_of["floated"][c.name], bias_of["fixed"][c.name]) for c in convs[:first])


def test_bias_correction_of_the_cpu_layout_brings_each_conv_to_fp32s_mean(tiny_export: Path,
                                                                         tmp_path: Path) -> None:
    """In the CPU layout a bias is int32 behind its own DequantizeLinear, which the correction of the
    next conv must read again, shifted: after correction every conv's per-channel output mean is
    FP32's, up to the int32 bias step."""
    from edgetl.export.int8.bias import correct_biases
    from edgetl.export.int8.qdq import quantize, stem_nodes

    job, prep_model, x = _bias_setup(tiny_export, tmp_path)
    quantize(job.prep, tmp_path / "cpu.onnx", job.cache, "minmax", stem_nodes(job.prep), cpu=True)
    plain = onnx.load(str(tmp_path / "cpu.onnx"))
    fixed = onnx.ModelProto()
    fixed.CopyFrom(plain)
    convs = [n for n in plain.graph.node if n.op_type == "Conv" and len(n.input) > 2]
    dq = {n.output[0] for n in plain.graph.node if n.op_type == "DequantizeLinear"}
    assert sum(c.input[2] in dq for c in convs) >= len(convs) - 1  # int32 biases, the float stem's aside
    assert correct_biases(job, fixed, prep_model) == len(convs)
    err = {name: _mean_errors(model, prep_model, convs, x) for name, model in (("plain", plain), ("fixed", fixed))}
    assert max(err["fixed"]) < 1e-3, err["fixed"]
    assert max(err["plain"]) > 10 * max(err["fixed"]), err
