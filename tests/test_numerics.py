"""INT8 numerics that do not depend on the host's integer kernels: float simulation of the TensorRT
layout, overflow-safe kernels for the CPU layout, the instruction set in reports and fingerprints."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from edgetl.data.sources import eval_transform, load_data, make_loader
from edgetl.images import Preprocess
from edgetl.runtime.numerics import int8_can_saturate, int8_isa, int8_layout, kernel_config
from edgetl.runtime.onnxruntime import OrtRunner

from conftest import run_emulated

# Run under the emulated AVX2-only CPU: each file through a plain ORT session with its defaults, through
# edgetl's runner (the kernels it picks there) and in float simulation; logits as JSON.
EMULATED_RUNS = """
import json, sys
from pathlib import Path
import numpy as np, onnxruntime as ort
from edgetl.runtime.numerics import int8_isa
from edgetl.runtime.onnxruntime import OrtRunner
x = np.load(sys.argv[1])
out = {"isa": int8_isa()}
for path in sys.argv[2:]:
    plain = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    runner = OrtRunner(Path(path))
    out[path] = {"plain": plain.run(None, {plain.get_inputs()[0].name: x})[0].tolist(),
                 "edgetl": runner.run(x).tolist(), "config": runner.session_config,
                 "simulated": OrtRunner(Path(path), simulate=True).run(x).tolist()}
print(json.dumps(out))
"""


def _saturating_conv(path: Path, layout: str, depthwise: bool = False, alternating: bool = False,
                     multiplier: int = 1) -> Path:
    """A 1x1 convolution in Q/DQ form, 64 input channels, every weight 127: on u8s8 kernels without VNNI
    each pair of products (up to 255 x 127 x 2) overflows vpmaddubsw's int16. ``layout``: tensorrt
    (int8 activations, which ORT shifts to uint8) or cpu (uint8 activations). ``depthwise``: a 3x3
    depthwise convolution of the same weights instead, which ORT computes with other kernels, with
    ``multiplier`` outputs per input channel. ``alternating``: weights +127, -127, ... along the input
    channels, so each pair's products cancel."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    act, scale = (np.int8, 1 / 127) if layout == "tensorrt" else (np.uint8, 1 / 255)
    out = 64 * multiplier if depthwise else 32
    w = np.full((out, 1, 3, 3) if depthwise else (out, 64, 1, 1), 127, np.int8)
    if alternating:
        w[:, 1::2] = -127
    nodes = [helper.make_node("QuantizeLinear", ["x", "xs", "xz"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "xs", "xz"], ["xd"]),
             helper.make_node("DequantizeLinear", ["w", "ws", "wz"], ["wd"], axis=0),
             helper.make_node("Conv", ["xd", "wd"], ["c"], **({"group": 64, "pads": [1] * 4} if depthwise else {})),
             helper.make_node("QuantizeLinear", ["c", "ys", "xz"], ["yq"]),
             helper.make_node("DequantizeLinear", ["yq", "ys", "xz"], ["y"])]
    inits = [numpy_helper.from_array(np.array(scale, np.float32), "xs"), numpy_helper.from_array(np.array(0, act), "xz"),
             numpy_helper.from_array(np.array(0.5, np.float32), "ys"),
             numpy_helper.from_array(w, "w"),
             numpy_helper.from_array(np.full(out, 1 / 127, np.float32), "ws"), numpy_helper.from_array(np.zeros(out, np.int8), "wz")]
    graph = helper.make_graph(nodes, "saturating", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64, 4, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, out, 4, 4])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def _val_batch(run: Path, n: int = 48) -> np.ndarray:
    pp = Preprocess.from_dict(json.loads((run / "run.json").read_text())["preprocess"])
    val = load_data("digits").val.subset(range(n))
    return next(iter(make_loader(val, eval_transform(pp), n, shuffle=False, workers=0)))[0].numpy()


def test_simulated_int8_equals_onnxruntime_float_simulation(tiny_export: Path) -> None:
    """The guard's and bench's view of model.int8.onnx is ORT with every optimization off: Q/DQ in float."""
    path = tiny_export / "export" / "model.int8.onnx"
    x = _val_batch(tiny_export)
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    plain = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    runner = OrtRunner(path, simulate=True)
    assert runner.numerics == "simulated" and runner.int8_layout == "tensorrt"
    np.testing.assert_array_equal(runner.run(x), plain)


def test_guard_evaluation_is_the_simulated_figure(tiny_export: Path) -> None:
    """The accuracy export wrote for model.int8.onnx is what a plain float simulation of the file scores."""
    from edgetl.evaluate import evaluate_runner

    manifest = json.loads((tiny_export / "export" / "manifest.json").read_text())
    entry = next(a for a in manifest["artifacts"] if a["file"] == "model.int8.onnx")
    assert entry["accuracy"]["numerics"] == "simulated"
    pp = Preprocess.from_dict(manifest["preprocess"])
    again = evaluate_runner(OrtRunner(tiny_export / "export" / "model.int8.onnx", simulate=True),
                            load_data("digits").val, pp, 10)
    assert again.top1 == pytest.approx(entry["accuracy"]["top1"], abs=1e-9)
    share = entry["int8"]
    assert share["weighted_layers"] > 0 and share["int8_layers"] >= 0.9 * (share["weighted_layers"] - 1)


@pytest.mark.parametrize("flags,machine,isa,saturates", [
    ({"avx2", "fma"}, "x86_64", "avx2", True),
    ({"avx2", "avx512f", "avx512bw"}, "x86_64", "avx512", True),
    ({"avx2", "avx512bw", "avx512_vnni"}, "x86_64", "avx512-vnni", False),
    ({"avx2", "avx_vnni"}, "x86_64", "avx-vnni", False),
    ({"avx2", "avx512_vnni", "amx_int8"}, "x86_64", "amx", False),
    ({"asimd", "asimddp"}, "aarch64", "arm64-dotprod", False),
    ({"asimd"}, "aarch64", "arm64", False),
])
def test_instruction_set_decides_whether_int8_kernels_can_saturate(flags: set, machine: str, isa: str,
                                                                   saturates: bool) -> None:
    assert int8_isa(flags, machine) == isa
    assert int8_can_saturate(isa) is saturates
    assert kernel_config(isa) == ({"session.x64quantprecision": "1"} if saturates else {})


def test_runner_applies_overflow_safe_kernels_to_int8_where_they_can_saturate(tiny_export: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """On an AVX2-only CPU the real ORT session of every INT8 file carries session.x64quantprecision=1;
    float files and CPUs with VNNI keep ORT's defaults."""
    import edgetl.runtime.numerics as numerics

    export = tiny_export / "export"
    monkeypatch.setattr(numerics, "int8_isa", lambda *a, **k: "avx2")
    for name, expected in (("model.int8.onnx", "1"), ("model.onnx", "")):
        runner = OrtRunner(export / name)
        got = runner.session.get_session_options().get_session_config_entry("session.x64quantprecision") \
            if expected else runner.session_config.get("session.x64quantprecision", "")
        assert got == expected, name
    monkeypatch.setattr(numerics, "int8_isa", lambda *a, **k: "avx512-vnni")
    assert OrtRunner(export / "model.int8.onnx").session_config == {}
    assert int8_layout(export / "model.int8.onnx") == "tensorrt" and int8_layout(export / "model.onnx") is None


def test_fingerprints_that_differ_only_in_isa_flags_do_not_match(tmp_path: Path) -> None:
    """Two EPYCs with one model name, one with AVX-512 VNNI and one AVX2-only, are two machines."""
    from edgetl.bench.environment import environment
    from edgetl.bench.gate import gate
    from edgetl.bench.schema import Report

    def machine(flags: str) -> Path:
        root = tmp_path / flags.replace(" ", "_")
        (root / "proc").mkdir(parents=True)
        (root / "proc/cpuinfo").write_text(f"processor\t: 0\nmodel name\t: AMD EPYC 9B14\nflags\t\t: fpu sse2 {flags}\n")
        return root

    avx2 = environment(2, False, machine("avx2 fma"))
    vnni = environment(2, False, machine("avx2 fma avx512f avx512bw avx512_vnni"))
    assert avx2["fingerprint_fields"]["cpu"] == vnni["fingerprint_fields"]["cpu"]
    assert avx2["fingerprint"] != vnni["fingerprint"]
    assert "avx512_vnni" in vnni["fingerprint_fields"]["isa"] and "avx512_vnni" not in avx2["fingerprint_fields"]["isa"]
    row = {"artifact": "model.onnx", "backend": "ort-fp32", "precision": "fp32", "batch_size": 1, "device": "cpu",
           "status": "ok", "p50_ms": 0.36, "p50_rounds_ms": [0.36], "top1": 98.0}
    baseline = Report.from_dict({"schema_version": 1, "environment": vnni, "rows": [row]})
    result = gate([{**row, "p50_ms": 0.78, "p50_rounds_ms": [0.78]}], avx2, baseline, "vnni.json", 0.10, 1.0)
    assert result.compared == 0 and "isa" in result.notes[0]
    old = {k: v for k, v in vnni["fingerprint_fields"].items() if k not in ("version", "isa")}
    baseline = Report.from_dict({"schema_version": 1, "rows": [row],
                                 "environment": {"fingerprint": "0123", "fingerprint_fields": old}})
    result = gate([row], avx2, baseline, "old.json", 0.10, 1.0)
    assert result.compared == 0 and "version 1 machine fingerprint" in result.notes[0]


def test_emulated_avx2_cpu_saturates_plain_onnxruntime_but_not_edgetl(avx2_emulator: list[str], tmp_path: Path) -> None:
    """On an AVX2-only EPYC (QEMU), ONNX Runtime's default u8s8 kernels get a convolution whose pairs overflow
    int16 wrong in both layouts, as issue 12 saw on the real CPU; edgetl's runner and float simulation get
    the exact answer there."""
    x = np.full((1, 64, 4, 4), 0.9, np.float32)
    np.save(tmp_path / "x.npy", x)
    files = {layout: _saturating_conv(tmp_path / f"{layout}.onnx", layout) for layout in ("tensorrt", "cpu")}
    got = json.loads(run_emulated(avx2_emulator, EMULATED_RUNS, str(tmp_path / "x.npy"), *map(str, files.values())))
    assert got["isa"] == "avx2"
    for layout, path in files.items():
        exact = OrtRunner(path, simulate=True).run(x)  # on the host: 64 x 0.9 -> 57.5 after the output's Q/DQ
        r = got[str(path)]
        assert np.abs(np.array(r["plain"]) - exact).max() > 10, f"{layout}: QEMU did not saturate, so this proves nothing"
        assert r["config"] == {"session.x64quantprecision": "1"}, layout
        np.testing.assert_allclose(r["edgetl"], exact, atol=0.5, err_msg=layout)  # 0.5: one output step
        np.testing.assert_allclose(r["simulated"], exact, atol=0.5, err_msg=layout)


def test_emulated_avx2_pairs_of_opposite_sign_do_not_saturate(avx2_emulator: list[str], tmp_path: Path) -> None:
    """Why int16-safe scales only limit pairs of one sign: +127 and -127 in one pair cancel, so with any
    uint8 activations plain ORT without VNNI is exact there, though |w0| + |w1| = 254 (issue 12)."""
    x = np.random.default_rng(0).uniform(0, 1, (1, 64, 4, 4)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    path = _saturating_conv(tmp_path / "alt.onnx", "cpu", alternating=True)
    exact = OrtRunner(path, simulate=True).run(x)
    assert np.abs(exact).max() > 2  # the activations differ within pairs, so a clipped pair would show
    got = json.loads(run_emulated(avx2_emulator, EMULATED_RUNS, str(tmp_path / "x.npy"), str(path)))[str(path)]
    np.testing.assert_allclose(got["plain"], exact, atol=0.5)


def test_emulated_avx2_depthwise_int8_does_not_saturate(avx2_emulator: list[str], tmp_path: Path) -> None:
    """Why the CPU layout leaves depthwise weights at full 8 bits: ORT's depthwise kernels widen to int32,
    so even 255 x 127 products in every tap come out exact on plain ORT without VNNI."""
    x = np.full((1, 64, 4, 4), 0.9, np.float32)
    np.save(tmp_path / "x.npy", x)
    path = _saturating_conv(tmp_path / "dw.onnx", "cpu", depthwise=True)
    got = json.loads(run_emulated(avx2_emulator, EMULATED_RUNS, str(tmp_path / "x.npy"), str(path)))[str(path)]
    np.testing.assert_allclose(got["plain"], OrtRunner(path, simulate=True).run(x), atol=0.5)


def test_emulated_avx2_depth_multiplier_takes_the_kernels_that_saturate_and_edgetl_knows(
        avx2_emulator: list[str], tmp_path: Path) -> None:
    """ORT's int32 depthwise kernels take one output channel per group only: with a depth multiplier of 2
    the same taps go through the u8s8 GEMM and saturate on plain ORT without VNNI. edgetl counts such
    weights as paired (not int16-safe, so the CPU layout rescales them) and its runner picks the
    overflow-safe kernels for this file."""
    from edgetl.runtime.numerics import SAFE_KERNEL_CONFIG, int16_safe

    x = np.full((1, 64, 4, 4), 0.9, np.float32)
    np.save(tmp_path / "x.npy", x)
    path = _saturating_conv(tmp_path / "dw2.onnx", "cpu", depthwise=True, multiplier=2)
    assert not int16_safe(path)
    got = json.loads(run_emulated(avx2_emulator, EMULATED_RUNS, str(tmp_path / "x.npy"), str(path)))[str(path)]
    exact = OrtRunner(path, simulate=True).run(x)
    assert np.abs(np.array(got["plain"]) - exact).max() > 2, "QEMU did not saturate, so this proves nothing"
    assert got["config"] == SAFE_KERNEL_CONFIG
    np.testing.assert_allclose(got["edgetl"], exact, atol=0.5)


def test_exported_int8_on_emulated_avx2_agrees_with_the_reported_numerics(
        avx2_emulator: list[str], tiny_cpu_export: Path, tmp_path: Path) -> None:
    """On an AVX2-only EPYC (QEMU): model.int8.onnx through edgetl's runner predicts what its reported
    (simulated) figure says, image by image; model.int8-cpu.onnx needs no setting at all, plain ONNX
    Runtime gives there the logits this host's VNNI kernels give."""
    export = tiny_cpu_export / "export"
    trt, cpu = export / "model.int8.onnx", export / "model.int8-cpu.onnx"
    x = _val_batch(tiny_cpu_export, 48)
    np.save(tmp_path / "x.npy", x)
    got = json.loads(run_emulated(avx2_emulator, EMULATED_RUNS, str(tmp_path / "x.npy"), str(trt), str(cpu)))
    reported = OrtRunner(trt, simulate=True).run(x).argmax(1)
    for numerics in ("edgetl", "simulated"):
        agree = (np.array(got[str(trt)][numerics]).argmax(1) == reported).mean()
        assert agree >= 46 / 48, f"{numerics}: top-1 agrees on {agree:.0%} of the images"
    assert got[str(cpu)]["config"] == {}
    if not int8_can_saturate(int8_isa()):
        host = ort.InferenceSession(str(cpu), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
        np.testing.assert_allclose(got[str(cpu)]["plain"], host, atol=1e-4)


def test_isa_override_reaches_doctor_and_a_bad_one_is_a_usage_error() -> None:
    """``EDGETL_INT8_ISA`` (for emulators, whose /proc/cpuinfo shows the host) is what doctor reports and
    what the runner acts on; an unknown value is one line and exit 2."""
    import os

    env = {**os.environ, "EDGETL_INT8_ISA": "avx2"}
    r = subprocess.run([sys.executable, "-m", "edgetl", "doctor", "--json"], capture_output=True, text=True, env=env)
    cpu = json.loads(r.stdout)["cpu"]
    assert (cpu["int8_isa"], cpu["int8_isa_from"], cpu["int8_can_saturate"]) == ("avx2", "EDGETL_INT8_ISA", True)
    assert cpu["int8_session_config"] == {"session.x64quantprecision": "1"}
    r = subprocess.run([sys.executable, "-m", "edgetl", "doctor"], capture_output=True, text=True,
                       env={**env, "EDGETL_INT8_ISA": "avx3"})
    assert r.returncode == 2 and "EDGETL_INT8_ISA='avx3'" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_emulated_avx2_matmul_weights_of_the_cpu_layout_are_int16_safe(avx2_emulator: list[str], tmp_path: Path) -> None:
    """A channels-last Linear (ConvNeXt's blocks) exports as MatMul: the CPU layout gives its weights
    int16-safe scales as it does a Conv's, so plain ONNX Runtime on an AVX2-only EPYC (QEMU) computes it
    exactly, where the same weights at plain max|w|/127 scales saturate there."""
    import onnx
    import torch
    from onnx import numpy_helper
    from torch import nn

    from edgetl.data.sources import Split
    from edgetl.export.int8.calibrate import calibrate, prepare
    from edgetl.export.int8.qdq import quantize
    from edgetl.export.onnx import export_onnx
    from edgetl.fileio import atomic_write_json
    from edgetl.runtime.numerics import SAFE_KERNEL_CONFIG, int16_safe

    class ChannelsLast(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv, self.mlp = nn.Conv2d(3, 32, 1), nn.Linear(32, 32)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = torch.relu(self.conv(x)).permute(0, 2, 3, 1)
            return self.mlp(y).mean((1, 2))

    torch.manual_seed(0)
    net = ChannelsLast().eval()
    with torch.no_grad():  # all-positive weights and bright images: large activations, same-sign pairs
        net.conv.weight.uniform_(0.1, 0.3)
        net.conv.bias.zero_()
        net.mlp.weight.uniform_(0.2, 1.0)
    export_onnx(net, tmp_path / "m.onnx", 8, 17)
    prep = prepare(tmp_path / "m.onnx", tmp_path)
    rng = np.random.default_rng(0)
    images = [rng.integers(240, 256, (8, 8, 3), dtype=np.uint8) for _ in range(8)]
    split = Split(images, [0] * 8)
    pre = Preprocess(8, 8, (0.5,) * 3, (0.5,) * 3)
    atomic_write_json(tmp_path / "calib.cache", calibrate(prep, split, pre, "minmax", tmp_path))
    safe = tmp_path / "safe.onnx"
    quantize(prep, safe, tmp_path / "calib.cache", "minmax", [], cpu=True)
    assert int16_safe(safe)

    model = onnx.load(str(safe))  # the same file with the MatMul's weights at plain 8-bit scales
    inits = {t.name: t for t in model.graph.initializer}
    matmul = next(n for n in model.graph.node if n.op_type == "MatMul")
    dq = next(n for n in model.graph.node if n.output[0] == matmul.input[1])
    w = net.mlp.weight.detach().numpy().T  # K x N, as the MatMul reads it
    scale = np.abs(w).max(axis=0) / 127
    inits[dq.input[0]].CopyFrom(numpy_helper.from_array(np.rint(w / scale).astype(np.int8), dq.input[0]))
    inits[dq.input[1]].CopyFrom(numpy_helper.from_array(scale.astype(np.float32), dq.input[1]))
    plain = tmp_path / "plain.onnx"
    onnx.save(model, str(plain))
    assert not int16_safe(plain)

    x = np.stack([((im / 255 - 0.5) / 0.5).transpose(2, 0, 1) for im in images[:4]]).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    got = json.loads(run_emulated(avx2_emulator, EMULATED_RUNS, str(tmp_path / "x.npy"), str(safe), str(plain)))
    options = ort.SessionOptions()  # integer kernels that cannot saturate on any host: the exact answer
    for key, value in SAFE_KERNEL_CONFIG.items():
        options.add_session_config_entry(key, value)
    errors = {}
    for path in (safe, plain):
        exact = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
        errors[path.name] = np.abs(np.array(got[str(path)]["plain"]) - exact).max() / np.abs(exact).max()
    assert errors["safe.onnx"] < 1e-5 and errors["plain.onnx"] > 0.05, errors  # 0.05: a dozen output steps
