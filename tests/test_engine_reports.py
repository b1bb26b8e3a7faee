"""What TensorRT and trtexec write, read the way edgetl reads them: engine-inspector JSON (TensorRT 10 and 11
layouts), per-layer profiles, trtexec's performance summary; and the rule that decides strong typing.
The inputs are fixtures in NVIDIA's documented formats (tests/fixtures/tensorrt/README.md says where
each comes from); the GPU side of the same code runs in test_tensorrt.py where TensorRT is present."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgetl.artifacts.layers import layer_table, layers_path, load_layers, parse_inspector, parse_profile
from edgetl.bench.config import BenchConfig
from edgetl.bench.session import run_bench
from edgetl.bench.trtexec import command, find_trtexec, parse_summary
from edgetl.engines.builder import typed_strongly
from edgetl.errors import ArtifactError, UsageError

FIXTURES = Path(__file__).parent / "fixtures" / "tensorrt"
CONV_DW = "/blocks.0/blocks.0.0/conv_dw/Conv + /blocks.0/blocks.0.0/bn1/act/Relu"


def _load(name: str) -> object:
    return json.loads((FIXTURES / name).read_text())


@pytest.mark.parametrize(("name", "fmt"), [("inspector.trt10.json", "tensorrt-10"),
                                           ("inspector.trt11.json", "tensorrt-11")])
def test_both_inspector_layouts_give_the_same_layers_and_precisions(name: str, fmt: str) -> None:
    got_fmt, layers = parse_inspector(_load(name), name)
    assert got_fmt == fmt
    by_name = {layer["name"]: layer for layer in layers}
    assert by_name[CONV_DW]["precision"] == "int8" and by_name[CONV_DW]["type"] == "Convolution"
    assert by_name["/conv_stem/Conv + /bn1/act/Relu"]["precision"] == "fp32"  # its input's, as trex reads it
    assert by_name["/conv_stem/Conv + /bn1/act/Relu"]["outputs"] == ["fp16"]
    assert by_name["/global_pool/GlobalAveragePool"]["precision"] == "fp16"
    assert by_name["/classifier/Gemm"]["tactic"].startswith("sm87_xmma_gemm")
    assert [layer["precision"] for layer in layers] == [layer["precision"] for layer in
                                                         parse_inspector(_load("inspector.trt10.json"), "")[1]]


def test_an_engine_built_without_detailed_verbosity_is_refused_with_the_fix() -> None:
    with pytest.raises(ArtifactError, match=r"names only.*edgetl build --profile"):
        parse_inspector(_load("inspector.names-only.json"), "names-only.json")
    with pytest.raises(ArtifactError, match="not TensorRT engine-inspector JSON"):
        parse_inspector({"layers": []}, "x.json")


def test_the_layer_table_joins_profile_times_slowest_first_with_inserted_reformats() -> None:
    _, layers = parse_inspector(_load("inspector.trt10.json"), "")
    profile = parse_profile(_load("profile.trtexec.json"), "profile.trtexec.json")
    assert len(profile) == 6 and profile["/classifier/Gemm"] == {"median_ms": 0.0259, "mean_ms": 0.0261,
                                                                 "share": pytest.approx(0.0875)}
    table = layer_table(layers, profile)
    assert table[0]["name"] == "/global_pool/GlobalAveragePool" and table[0]["share"] == pytest.approx(0.6802)
    assert [r["median_ms"] for r in table] == sorted((r["median_ms"] for r in table), reverse=True)
    assert not any(r["type"] in ("Constant", "NoOp") for r in table)  # they cost nothing
    extra = [r for r in table if r["name"].startswith("Reformatting CopyNode for Output")]
    assert len(extra) == 1 and extra[0]["type"] == "Reformat" and extra[0]["precision"] is None
    assert len(table) == 6


def test_a_profile_without_medians_uses_the_average() -> None:
    old = [{"count": 10}, {"name": "conv", "timeMs": 1.0, "averageMs": 0.1, "percentage": 50.0}]
    assert parse_profile(old, "old.json") == {"conv": {"median_ms": 0.1, "mean_ms": 0.1, "share": 0.5}}
    with pytest.raises(ArtifactError, match="no usable timing"):
        parse_profile([{"name": "conv", "timeMs": 1.0}], "bad.json")


def test_a_missing_or_foreign_layer_file_says_how_to_make_one(tmp_path: Path) -> None:
    engine = tmp_path / "model.int8.engine"
    assert layers_path(engine) == tmp_path / "model.int8.layers.json"
    with pytest.raises(ArtifactError, match=r"no layer profile; rebuild the engine with `edgetl build --profile`"):
        load_layers(engine)
    layers_path(engine).write_text("[1, 2]")
    with pytest.raises(ArtifactError, match="not an edgetl layer profile"):
        load_layers(engine)


def test_trtexec_summary_gives_the_gpu_compute_median() -> None:
    stats = parse_summary((FIXTURES / "trtexec.trt10.log").read_text())
    assert stats["GPU Compute Time"]["median"] == 0.41699
    assert stats["GPU Compute Time"]["percentile(99%)"] == 0.47803
    assert stats["Enqueue Time"]["median"] == 0.0078125
    assert stats["Throughput"] == {"qps": 2358.47}
    assert parse_summary("no summary here\n") == {}


def test_trtexec_is_run_the_way_nvidia_times_an_engine(tmp_path: Path) -> None:
    argv = command(Path("/usr/bin/trtexec"), tmp_path / "m.engine", "input", (8, 3, 96, 96))
    assert argv[:3] == ["/usr/bin/trtexec", f"--loadEngine={tmp_path / 'm.engine'}", "--shapes=input:8x3x96x96"]
    assert {"--useCudaGraph", "--noDataTransfers", "--useSpinWait"} <= set(argv)


def test_vs_trtexec_without_trtexec_is_refused_before_any_work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty folder: no trtexec on this PATH
    if Path("/usr/src/tensorrt/bin/trtexec").exists():
        pytest.skip("JetPack's trtexec is installed here")
    with pytest.raises(UsageError, match="--vs-trtexec: trtexec is not on the PATH"):
        find_trtexec()
    with pytest.raises(UsageError, match="--vs-trtexec"):
        run_bench(BenchConfig(targets=[str(tmp_path / "no-such-run")], vs_trtexec=True))


@pytest.mark.parametrize(("version", "qdq", "weak", "dla", "strong"), [
    ((8, 5, 2), True, False, None, False),    # no strong typing before 9.0
    ((8, 5, 2), True, True, None, False),
    ((10, 3, 0), True, False, None, True),    # Q/DQ on 10.x: strongly typed, as on 11
    ((10, 3, 0), True, True, None, False),    # --weak-typing: FP16+INT8 flags
    ((10, 3, 0), True, False, 0, False),      # DLA needs the precision flags
    ((10, 16, 2), False, False, None, False),  # FP32/FP16 ONNX on 10.x: the FP16 flag path
    ((11, 4, 1), False, False, None, True),   # always on 11
])
def test_which_builds_are_strongly_typed(version: tuple[int, ...], qdq: bool, weak: bool, dla: int | None,
                                         strong: bool) -> None:
    assert typed_strongly(version, qdq, weak, dla) is strong


def test_weak_typing_on_tensorrt_11_is_refused() -> None:
    with pytest.raises(UsageError, match="TensorRT 11 builds strongly typed networks only"):
        typed_strongly((11, 0, 0), True, True, None)


def test_bench_layers_table_shows_the_slowest_layers_and_time_per_precision() -> None:
    from rich.console import Console

    from edgetl.cli.render import layer_table as render

    _, layers = parse_inspector(_load("inspector.trt10.json"), "")
    rows = layer_table(layers, parse_profile(_load("profile.trtexec.json"), ""))
    doc = {"engine": "model.int8.engine", "tensorrt_version": "10.3.0", "format": "tensorrt-10", "batch": 1,
           "total_ms": round(sum(r["median_ms"] for r in rows), 4), "layers": rows}
    console = Console(record=True, width=200)
    console.print(render(doc, 3))
    text = console.export_text()
    assert "model.int8.engine: 6 layers" in text and "TensorRT 10.3.0" in text
    assert "/global_pool/GlobalAveragePool" in text and "68.0%" in text
    assert "/classifier/Gemm" in text and CONV_DW not in text  # only the 3 slowest
    assert "time by precision: fp16 68.0%, fp32 22.5%, int8 5.2%, ? 4.3%" in text  # ?: a reformat TensorRT added
