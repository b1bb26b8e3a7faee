#!/usr/bin/env bash
# One-shot GPU check (run on a machine with an NVIDIA GPU, from the repository root):
#   bash benchmarks/gpu_check.sh 2>&1 | tee gpu_check.log
# 1. the CUDA/TensorRT tests, 2. AMP fp16/bf16 vs fp32 training throughput with and without
# torch.compile, 3. PyTorch eager vs ONNX Runtime latency (CUDA provider where installed),
# 4. edgetl's CUDA-event timer (the one bench uses for TensorRT rows, through cuda-python) on
# PyTorch's CUDA stream against torch.cuda.Event, then a short summary. Uses the Python on PATH (or
# $PYTHON) with PyTorch already installed; installs nothing from the network. cuda-python (the timer)
# and nvidia-modelopt (QAT on CUDA) are installed from benchmarks/wheels/ when they are missing there;
# fetch their wheels for the GPU machine's Python beforehand (an ignored folder: pass it with the
# run's carry):
#   pip download --only-binary=:all: --python-version 3.12 --platform manylinux_2_28_x86_64 \
#     cuda-python nvidia-modelopt -d benchmarks/wheels
set -uo pipefail
PY=${PYTHON:-python3}
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
summary=()
note() { summary+=("$1"); }

echo "== environment"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
$PY - <<'PY'
import importlib
for m in ("torch", "torchvision", "timm", "onnx", "onnxruntime", "tensorrt"):
    try:
        mod = importlib.import_module(m)
        extra = ""
        if m == "torch":
            extra = f" cuda={mod.version.cuda} available={mod.cuda.is_available()}"
        if m == "onnxruntime":
            extra = f" providers={mod.get_available_providers()}"
        print(f"{m} {mod.__version__}{extra}")
    except Exception as e:
        print(f"{m} missing ({type(e).__name__})")
PY

if ls benchmarks/wheels/*.whl > /dev/null 2>&1; then
  $PY -c "import cuda.bindings.runtime" 2>/dev/null ||
    $PY -m pip install --quiet --no-index --find-links benchmarks/wheels cuda-python || true
  $PY -c "import modelopt.torch.quantization" 2>/dev/null ||
    $PY -m pip install --quiet --no-index --find-links benchmarks/wheels nvidia-modelopt || true
fi

echo "== 1. CUDA and TensorRT tests"
if $PY -m pytest -q -m "gpu or tensorrt" tests/test_gpu.py tests/test_tensorrt.py -p no:cacheprovider; then
  note "tests: gpu/tensorrt passed (skips shown above)"
else
  note "tests: FAILED (see above)"
fi

echo "== 2. AMP training throughput (Lite0, 224 px, batch 64, channels_last as edgetl trains)"
if $PY benchmarks/amp_throughput.py --device cuda --img-size 224 --batch-size 64 --steps 30 --formats channels_last | tee /tmp/amp.txt; then
  note "amp: $(tail -n +3 /tmp/amp.txt | tr -s ' ' | paste -sd ';' -)"
else
  note "amp: failed"
fi

echo "== 3. Latency: PyTorch eager vs ONNX Runtime"
$PY - <<'PY' | tee /tmp/latency.txt
import time, tempfile, numpy as np, torch
from pathlib import Path
from edgetl.models import build
from edgetl.export.onnx import export_onnx
import onnxruntime as ort

def timeit(fn, n=200):
    for _ in range(20):
        fn()
    ts = []
    for _ in range(n):
        t0 = time.perf_counter(); fn(); ts.append(time.perf_counter() - t0)
    return 1000 * float(np.median(ts))

model = build("efficientnet_lite0", 1000, "imagenet").model.eval().cuda()
for bs in (1, 8):
    x = torch.randn(bs, 3, 224, 224, device="cuda")
    def eager():
        with torch.inference_mode():
            model(x); torch.cuda.synchronize()
    print(f"torch eager fp32 batch {bs}: {timeit(eager):.2f} ms")
    with torch.autocast("cuda", dtype=torch.float16):
        def eager16():
            with torch.inference_mode():
                model(x); torch.cuda.synchronize()
        print(f"torch eager amp-fp16 batch {bs}: {timeit(eager16):.2f} ms")
with tempfile.TemporaryDirectory() as d:
    p = Path(d) / "m.onnx"
    export_onnx(model.cpu(), p, 224, 17)
    if "CUDAExecutionProvider" in ort.get_available_providers():
        s = ort.InferenceSession(str(p), providers=["CUDAExecutionProvider"])
        for bs in (1, 8):
            xn = np.random.randn(bs, 3, 224, 224).astype(np.float32)
            print(f"onnxruntime cuda fp32 batch {bs}: {timeit(lambda: s.run(None, {'input': xn})):.2f} ms")
    else:
        print("onnxruntime: no CUDAExecutionProvider here (pip install 'edgetl[gpu]'); skipped")
PY
note "latency: $(paste -sd ';' /tmp/latency.txt)"

echo "== 4. CUDA-event timer on PyTorch's stream vs torch.cuda.Event (Lite0, 224 px)"
$PY - <<'PY' | tee /tmp/events.txt
import numpy as np, torch
from edgetl.models import build
from edgetl.runtime.cuda import EventTimer

model = build("efficientnet_lite0", 1000, "imagenet").model.eval().cuda()
stream = torch.cuda.current_stream()
timer = EventTimer(stream.cuda_stream)
start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
for bs in (1, 8):
    x = torch.randn(bs, 3, 224, 224, device="cuda")
    ours, host, theirs = [], [], []
    with torch.inference_mode():
        for i in range(220):
            gpu, wall = timer.time(lambda: model(x))
            start.record(stream); model(x); end.record(stream); end.synchronize()
            if i >= 20:
                ours.append(gpu); host.append(wall); theirs.append(start.elapsed_time(end))
    print(f"batch {bs}: edgetl events {np.median(ours):.3f} ms (host {np.median(host):.3f} ms), "
          f"torch events {np.median(theirs):.3f} ms, ratio {np.median(ours) / np.median(theirs):.3f}")
timer.close()
PY
note "events: $(paste -sd ';' /tmp/events.txt)"

echo
echo "== summary"
printf '%s\n' "${summary[@]}"
