"""CUDA paths: AMP fine-tuning and the PyTorch runner on a GPU. Skipped where there is none."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from edgetl.train.config import TrainConfig
from edgetl.train.loop import finetune

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("amp", [True, False])
def test_cuda_finetune_with_and_without_amp(tmp_path: Path, amp: bool) -> None:
    import torch

    s = finetune(TrainConfig(data="digits", out=str(tmp_path / "run"), model="timm/test_resnet", weights="none",
                             img_size=32, epochs=2, batch_size=64, lr=3e-3, device="cuda", amp=amp))
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["device"].startswith("cuda") and s.val_top1 > 80
    expected = ("bf16" if torch.cuda.is_bf16_supported() else "fp16") if amp else None
    assert run["amp"] == expected


def test_torch_runner_on_cuda_matches_cpu(tiny_run: Path) -> None:
    from edgetl.evaluate import open_runner

    x = np.random.default_rng(0).standard_normal((4, 3, 32, 32)).astype(np.float32)
    cpu = open_runner(tiny_run, device="cpu").run(x)
    gpu = open_runner(tiny_run, device="cuda").run(x)
    np.testing.assert_allclose(gpu, cpu, atol=1e-3)


def _cuda_python() -> None:
    try:
        from edgetl.runtime.cuda import cudart

        cudart()
    except Exception as e:  # noqa: BLE001 - whatever stops cuda-python, the reason is the skip
        pytest.skip(f"cuda-python is not usable here ({e}); benchmarks/gpu_check.sh installs it from wheels/")


def test_the_cuda_event_timer_on_pytorchs_stream_agrees_with_torch_events() -> None:
    """edgetl's TensorRT timer (cuda-python events, spin-waited) timing PyTorch work on PyTorch's own
    stream: the same GPU time as torch.cuda.Event measures, and a host time that covers it."""
    import torch

    from edgetl.runtime.cuda import EventTimer

    _cuda_python()
    a, b = torch.randn(2048, 2048, device="cuda"), torch.randn(2048, 2048, device="cuda")
    stream = torch.cuda.current_stream()
    timer = EventTimer(stream.cuda_stream)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    try:
        ours, host, theirs = [], [], []
        for _ in range(30):
            gpu, wall = timer.time(lambda: torch.mm(a, b))
            ours.append(gpu)
            host.append(wall)
            start.record(stream)
            torch.mm(a, b)
            end.record(stream)
            end.synchronize()
            theirs.append(start.elapsed_time(end))
    finally:
        timer.close()
    assert np.median(ours) == pytest.approx(np.median(theirs), rel=0.2)
    assert np.median(host) >= 0.9 * np.median(ours)


def test_a_cuda_graph_captured_on_pytorchs_stream_replays_the_work() -> None:
    import torch

    from edgetl.runtime.cuda import CudaGraph, EventTimer

    _cuda_python()
    s = torch.cuda.Stream()
    a, b = torch.ones(1 << 20, device="cuda"), torch.full((1 << 20,), 2.0, device="cuda")
    c = torch.zeros_like(a)
    with torch.cuda.stream(s):
        torch.add(a, b, out=c)  # uncaptured first run, as for TensorRT
        s.synchronize()
        c.zero_()
        s.synchronize()
        graph = CudaGraph(s.cuda_stream, lambda: torch.add(a, b, out=c))
        timer = EventTimer(s.cuda_stream)
        try:
            assert float(c.sum()) == 0.0  # captured, not run
            gpu, _ = timer.time(graph.launch)
            assert gpu > 0 and float(c.sum()) == 3.0 * (1 << 20)
        finally:
            timer.close()
            graph.close()


def test_qat_on_cuda_trains_with_amp_and_exports_the_tensorrt_shape(tmp_path: Path) -> None:
    """`export --int8 --qat` on a run trained on CUDA: QAT continues there with the run's AMP, and the
    result has post-training INT8's TensorRT shape."""
    import torch
    from conftest import assert_tensorrt_int8_shape

    pytest.importorskip("modelopt", reason="the qat extra (nvidia-modelopt) is not installed")
    import onnx

    from edgetl.export.config import ExportConfig
    from edgetl.export.pipeline import export

    run = tmp_path / "run"
    finetune(TrainConfig(data="digits", out=str(run), model="timm/test_resnet", weights="none", img_size=32, epochs=2,
                         batch_size=64, lr=3e-3, device="cuda"))
    export(ExportConfig(run=str(run), int8=True, engine=False, calib_size=64, qat="on", quantize_stem=True))
    trained = json.loads((run / "export" / "qat" / "run.json").read_text())
    assert trained["device"].startswith("cuda") and trained["status"] == "finished"
    assert trained["amp"] == ("bf16" if torch.cuda.is_bf16_supported() else "fp16")
    man = json.loads((run / "export" / "manifest.json").read_text())
    assert man["qat"]["qat"]["top1"] > 80
    entry = next(a for a in man["artifacts"] if a["file"] == "model.int8.onnx")
    assert_tensorrt_int8_shape(onnx.load(str(run / "export" / "model.int8.onnx")),
                               [x["name"] for x in entry.get("float_layers", [])])
