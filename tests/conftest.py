"""Shared fixtures: real data (../shared/datasets when present), tiny image folders, one trained digits run."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

# `torchrun` with two CPU processes over gloo, one thread each (the machine has two cores)
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "edgetl"]
TORCHRUN_ENV = {**os.environ, "OMP_NUM_THREADS": "1"}

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("EDGETL_SHARED_DATASETS", ROOT.parent / "shared" / "datasets"))
CIFAR = SHARED / "cifar10-mini"
IMAGENET = SHARED / "imagenet-sample-100"

needs_cifar = pytest.mark.skipif(not CIFAR.is_dir(), reason=f"{CIFAR} is absent (a fresh clone has no ../shared; CI has it)")
needs_imagenet = pytest.mark.skipif(not IMAGENET.is_dir(), reason=f"{IMAGENET} is absent (a fresh clone has no ../shared; CI has it)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """GPU and TensorRT tests are skipped, never faked, where the hardware is missing."""
    import importlib.util

    import torch

    has_gpu = torch.cuda.is_available()
    has_trt = has_gpu and importlib.util.find_spec("tensorrt") is not None
    for item in items:
        if item.get_closest_marker("gpu") and not has_gpu:
            item.add_marker(pytest.mark.skip(reason="needs a CUDA GPU"))
        if item.get_closest_marker("tensorrt") and not has_trt:
            item.add_marker(pytest.mark.skip(reason="needs TensorRT and a CUDA GPU"))


def make_image_folder(root: Path, classes: int = 3, per_class: int = 6, size: int = 24, seed: int = 0) -> Path:
    """Distinct colour per class plus noise: learnable in a few steps, so tiny runs mean something."""
    rng = np.random.default_rng(seed)
    for c in range(classes):
        d = root / f"class_{c}"
        d.mkdir(parents=True, exist_ok=True)
        base = np.zeros(3)
        base[c % 3] = 200
        for i in range(per_class):
            arr = np.clip(base + rng.normal(0, 25, (size, size, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(arr).save(d / f"img_{i}.png")
    return root


def copy_subset(src: Path, dst: Path, per_class: int) -> Path:
    """A small real-image ImageFolder: the first ``per_class`` files of each class of ``src``."""
    import shutil

    for cls in sorted(p for p in src.iterdir() if p.is_dir()):
        (dst / cls.name).mkdir(parents=True)
        for f in sorted(cls.iterdir())[:per_class]:
            shutil.copy(f, dst / cls.name / f.name)
    return dst


def copy_run(run: Path, dst: Path) -> Path:
    """A copy of a run folder without its export, for a test that exports it its own way."""
    import shutil

    shutil.copytree(run, dst, ignore=shutil.ignore_patterns("export"))
    return dst


def wait_for(path: Path, proc: object, timeout: float) -> None:
    """Block until ``path`` exists, the process ``proc`` (a Popen) has ended, or ``timeout`` seconds pass."""
    import time

    deadline = time.monotonic() + timeout
    while not path.exists() and proc.poll() is None and time.monotonic() < deadline:  # type: ignore[attr-defined]
        time.sleep(0.05)


EMULATED_AVX2_CPU = "EPYC-Rome"  # QEMU's Zen 2 EPYC: AVX2 and FMA, no AVX-512, no VNNI (issue 12's CPU kind)


@pytest.fixture(scope="session")
def avx2_emulator() -> list[str]:
    """The command prefix that runs a program on an emulated AVX2-only EPYC: QEMU's user-mode TCG answers
    ONNX Runtime's CPUID check without AVX-512 or VNNI, and its vpmaddubsw saturates at int16 as the real
    instruction does. /proc/cpuinfo still shows the host's flags there, hence ``EDGETL_INT8_ISA``.
    On an AVX2-only host no emulator is needed: the programs run on the real CPU (an empty prefix)."""
    import platform
    import shutil

    from edgetl.runtime.numerics import ISA_OVERRIDE, int8_isa

    if ISA_OVERRIDE not in os.environ and int8_isa() == "avx2":
        return []
    qemu = shutil.which("qemu-x86_64")
    if platform.machine() != "x86_64" or qemu is None:
        pytest.skip("no qemu-x86_64 on an x86-64 host (Debian: apt-get install qemu-user; `make test` installs it "
                    "when run as root): the emulated AVX2-only CPU tests need it")
    return [qemu, "-cpu", EMULATED_AVX2_CPU]


def run_emulated(prefix: list[str], code: str, *args: str, timeout: int = 300) -> str:
    """Run ``python -c code args`` under ``prefix`` (``avx2_emulator``) with edgetl told the emulated ISA
    (avx2); returns its stdout. QEMU's warnings about host-only CPUID bits are dropped from a failure's message."""
    import subprocess

    env = {**os.environ, "EDGETL_INT8_ISA": "avx2"}
    r = subprocess.run([*prefix, sys.executable, "-c", code, *args], capture_output=True, text=True, env=env,
                       timeout=timeout)
    errors = "\n".join(ln for ln in r.stderr.splitlines() if "TCG doesn't support" not in ln)
    assert r.returncode == 0, errors[-2000:]
    return r.stdout


@pytest.fixture(scope="module")
def gray_calib(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A calibration set that teaches near-zero ranges: INT8 then saturates on real images."""
    d = tmp_path_factory.mktemp("gray")
    rng = np.random.default_rng(0)
    for i in range(8):
        Image.fromarray((128 + rng.integers(-2, 3, (32, 32, 3))).astype(np.uint8)).save(d / f"{i}.png")
    return d


@pytest.fixture(scope="session")
def digits_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The embedded default, trained once per session: Lite0 on digits, 2 epochs at 64 px."""
    from edgetl.train.config import TrainConfig
    from edgetl.train.loop import finetune

    out = tmp_path_factory.mktemp("runs") / "digits"
    finetune(TrainConfig(data="digits", out=str(out), epochs=2, img_size=64, batch_size=32, lr=2e-3,
                         warmup_epochs=0.3, workers=0))
    return out


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """timm's test_resnet (0.5M parameters) on real digits at 32 px: ~94% in 3 quick epochs."""
    from edgetl.train.config import TrainConfig
    from edgetl.train.loop import finetune

    out = tmp_path_factory.mktemp("tiny") / "run"
    finetune(TrainConfig(data="digits", out=str(out), model="timm/test_resnet", weights="none", img_size=32,
                         epochs=3, batch_size=32, lr=3e-3, workers=0))
    return out


@pytest.fixture(scope="session")
def tiny_export(tiny_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of ``tiny_run`` exported to FP32, FP16 and INT8 ONNX; returns the run folder."""
    import shutil

    from edgetl.export.config import ExportConfig
    from edgetl.export.pipeline import export

    run = tmp_path_factory.mktemp("tiny_export") / "run"
    shutil.copytree(tiny_run, run)
    export(ExportConfig(run=str(run), int8=True, fp16=True, engine=False, calib_size=128))
    return run


@pytest.fixture(scope="session")
def tiny_cpu_export(tiny_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of ``tiny_run`` exported to INT8 in both layouts (``--int8 --int8-cpu``); returns the run folder."""
    from edgetl.export.config import ExportConfig
    from edgetl.export.pipeline import export

    run = copy_run(tiny_run, tmp_path_factory.mktemp("tiny_cpu_export") / "run")
    export(ExportConfig(run=str(run), int8=True, int8_cpu=True, engine=False, calib_size=64))
    return run


def assert_tensorrt_int8_shape(model: object, float_layers: tuple[str, ...] | list[str]) -> None:
    """What TensorRT needs from model.int8.onnx: opset <= 17, symmetric INT8 Q/DQ (every zero point 0),
    weights quantized per output channel, and each weighted layer outside ``float_layers`` reading both
    its activation and its weight through DequantizeLinear (float layers read float weights)."""
    import onnx

    g = model.graph  # type: ignore[attr-defined]
    assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) <= 17  # type: ignore[attr-defined]
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in g.initializer}
    qs = [n for n in g.node if n.op_type == "QuantizeLinear"]
    assert qs and all(not inits[n.input[2]].any() and inits[n.input[2]].dtype == np.int8 for n in qs)
    dq_out = {n.output[0]: n for n in g.node if n.op_type == "DequantizeLinear"}
    weighted = [n for n in g.node if n.op_type in ("Conv", "Gemm")]
    assert weighted
    for node in weighted:
        if node.name in float_layers:
            assert inits[node.input[1]].dtype == np.float32, node.name
            continue
        assert node.input[0] in dq_out, f"{node.name}: activation not quantized"
        w_dq = dq_out[node.input[1]]
        w = inits[w_dq.input[0]]
        assert w.dtype == np.int8 and inits[w_dq.input[1]].shape == (w.shape[0],), node.name  # per output channel
