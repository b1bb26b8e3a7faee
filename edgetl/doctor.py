"""`edgetl doctor`: what this machine can run, and the exact command that fixes what it cannot.

Every heavy library is imported inside its own ``try``, because the machines this
reports on differ most in exactly those: a Jetson runtime usually has no PyTorch,
an x86 CPU box no TensorRT. Backends are not judged by whether a package imports
but by running it: a one-node ONNX model through each listed ONNX Runtime
provider, a TensorRT builder on the GPU. ``get_available_providers()`` alone lies,
because it lists what onnxruntime was compiled with, not what loads here. Those
probes run in a fresh interpreter: torch imported first would lend its CUDA
libraries and hide what a plain `edgetl predict` process meets.

File locations hang off ``root`` so tests can point them at a folder holding
real-format copies of a Jetson's files.
"""

from __future__ import annotations

import json
import os
import platform
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

from . import DISTRIBUTION, __version__, machine
from .errors import one_line
from .runtime.numerics import ISA_OVERRIDE, int8_can_saturate, int8_isa, kernel_config

SCHEMA_VERSION = 1
BACKENDS = ("torch-cpu", "torch-cuda", "onnxruntime-cpu", "onnxruntime-cuda", "onnxruntime-tensorrt", "tensorrt")

# NVIDIA's Jetson AI Lab pip indexes hold the Jetson (aarch64 + CUDA) builds of
# onnxruntime-gpu and torch that PyPI does not have; one per JetPack/CUDA pairing.
_JETSON_INDEX = {
    "35": "https://pypi.jetson-ai-lab.io/jp5/cu114",
    "36.2": "https://pypi.jetson-ai-lab.io/jp6/cu122",
    "36.3": "https://pypi.jetson-ai-lab.io/jp6/cu122",
    "36": "https://pypi.jetson-ai-lab.io/jp6/cu126",
    "38": "https://pypi.jetson-ai-lab.io/sbsa/cu130",  # JetPack 7: SBSA-aligned, CUDA 13
    "39": "https://pypi.jetson-ai-lab.io/sbsa/cu130",
}
_PROBE_TIMEOUT_S = 120.0  # the TensorRT provider builds an engine, even for one node


def collect(root: Path = Path("/")) -> dict[str, Any]:
    """Everything ``edgetl doctor`` reports, as plain JSON-able data (``schema_version`` 1)."""
    root = Path(root)
    jetson = machine.jetson_info(root)
    runtimes = _probe_in_child()
    ort_info, trt_info = runtimes["onnxruntime"], runtimes["tensorrt"]
    torch_info = _torch()
    gpus = _gpus(torch_info)
    report: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "edgetl": __version__,
        "python": {"version": platform.python_version(), "implementation": platform.python_implementation(),
                   "executable": sys.executable},
        "platform": {"system": platform.system(), "release": platform.release(), "machine": platform.machine(),
                     "container": (root / ".dockerenv").exists() or (root / "run/.containerenv").exists()},
        "cpu": _cpu(root),
        "torch": {k: v for k, v in torch_info.items() if k != "devices"},
        "onnxruntime": ort_info,
        "tensorrt": trt_info,
        "gpus": gpus,
        "jetson": jetson,
    }
    report["backends"] = _backends(torch_info, ort_info, trt_info, gpus, jetson)
    return report


# --------------------------------------------------------------------------- Jetson

def jetson_index(jetson: dict[str, Any]) -> str:
    """The Jetson AI Lab pip index for this L4T (JetPack 6.0 ships CUDA 12.2, 6.1+ CUDA 12.6)."""
    parts = str(jetson.get("l4t", "")).split(".")
    return _JETSON_INDEX.get(".".join(parts[:2])) or _JETSON_INDEX.get(parts[0]) or _JETSON_INDEX["36"]


# --------------------------------------------------------------------------- libraries

def probe_runtimes() -> dict[str, Any]:
    """ONNX Runtime, then TensorRT, as this process finds them; ``collect`` runs it in a fresh interpreter."""
    return {"onnxruntime": _onnxruntime(), "tensorrt": _tensorrt()}


def _probe_in_child() -> dict[str, Any]:
    """``probe_runtimes()`` in a child Python; a provider that crashes or hangs takes only the child with it."""
    code = (f"import json, sys; sys.path.insert(0, {str(Path(__file__).resolve().parents[1])!r}); "
            "from edgetl.doctor import probe_runtimes; print(json.dumps(probe_runtimes()))")
    try:
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=_PROBE_TIMEOUT_S)
        lines = r.stdout.strip().splitlines()
        if r.returncode == 0 and lines:
            return json.loads(lines[-1])
        tail = (r.stderr.strip().splitlines() or [""])[-1][:200]
        why = f"the probe process exited with {r.returncode}: {tail}"
    except subprocess.TimeoutExpired:
        why = f"the probe process did not finish in {_PROBE_TIMEOUT_S:.0f} s"
    except ValueError as e:
        why = f"the probe process printed no report ({e})"
    return {"onnxruntime": {"version": None, "error": why, "packages": [], "providers": [], "working": {}},
            "tensorrt": {"version": None, "error": why, "builder": False, "builder_error": None}}


def _torch() -> dict[str, Any]:
    try:
        import torch
    except Exception as e:  # a broken install raises OSError/RuntimeError as well as ImportError
        return {"version": None, "error": one_line(e), "cuda_build": None, "cuda_available": False,
                "cudnn": None, "devices": []}
    devices: list[dict[str, Any]] = []
    try:
        available = bool(torch.cuda.is_available())
        for i in range(torch.cuda.device_count() if available else 0):
            p = torch.cuda.get_device_properties(i)
            devices.append({"name": p.name, "compute_capability": f"{p.major}.{p.minor}",
                            "memory_mb": p.total_memory // 2**20})
    except Exception as e:
        available, devices = False, [{"error": one_line(e)}]
    try:
        cudnn = _cudnn_version(torch.backends.cudnn.version())
    except Exception:
        cudnn = None
    return {"version": torch.__version__, "error": None, "cuda_build": torch.version.cuda,
            "cuda_available": available, "cudnn": cudnn, "devices": devices}


def _cudnn_version(v: int | None) -> str | None:
    """cuDNN 9 encodes major*10000 + minor*100 + patch; cuDNN 8 and older major*1000 + minor*100 + patch."""
    if not v:
        return None
    if v >= 90000:
        return f"{v // 10000}.{v % 10000 // 100}.{v % 100}"
    return f"{v // 1000}.{v % 1000 // 100}.{v % 100}"


def _tensorrt() -> dict[str, Any]:
    """Version, and whether a builder can be created: that needs a CUDA GPU, so it is the real test."""
    try:
        import tensorrt as trt
    except Exception as e:
        return {"version": None, "error": one_line(e), "builder": False, "builder_error": None}

    class _Collect(trt.ILogger):  # keep TensorRT's own words for the report instead of printing them
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.errors: list[str] = []

        def log(self, severity: Any, msg: str) -> None:
            if severity in (trt.ILogger.Severity.INTERNAL_ERROR, trt.ILogger.Severity.ERROR):
                self.errors.append(msg)

    logger = _Collect()
    try:
        ok = trt.Builder(logger) is not None
        why = None if ok else (logger.errors[:1] or ["trt.Builder returned None"])[0]
    except Exception as e:
        ok, why = False, (logger.errors[:1] or [one_line(e)])[0]
    return {"version": trt.__version__, "error": None, "builder": ok, "builder_error": why}


def _onnxruntime() -> dict[str, Any]:
    """Version, compiled-in providers, which of them really ran a model here, and a CPU/GPU package clash."""
    from importlib import metadata

    dists = []
    for name in ("onnxruntime", "onnxruntime-gpu"):
        try:
            dists.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            pass
    try:
        import onnxruntime as ort
    except Exception as e:
        return {"version": None, "error": one_line(e), "packages": dists, "providers": [], "working": {}}
    providers = list(ort.get_available_providers())
    working = {p: _ort_probe(ort, p) for p in ("CPUExecutionProvider", "CUDAExecutionProvider",
                                                "TensorrtExecutionProvider") if p in providers}
    return {"version": ort.__version__, "error": None, "packages": dists, "providers": providers, "working": working}


def _ort_probe(ort: Any, provider: str) -> str | None:
    """Run a one-node Relu model on ``provider`` alone; None when it ran there, else the reason it did not.

    ONNX Runtime silently falls back to the CPU when a provider's libraries do not load,
    so the session's own provider list is what tells.
    """
    try:
        import numpy as np
        from onnx import TensorProto, helper
    except Exception as e:
        return f"not run: {one_line(e)}"
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "doctor",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    # IR 8 / opset 13: old enough for the onnxruntime builds on JetPack 5.
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    x = np.array([[-1.0, 0.0, 0.5, 2.0]], dtype=np.float32)
    with _StderrCapture() as log:  # ONNX Runtime names the library that failed to load on fd 2, nowhere else
        try:
            sess = ort.InferenceSession(model.SerializeToString(), providers=[provider])
            y = sess.run(None, {"x": x})[0] if provider in sess.get_providers() else None
        except Exception as e:
            return one_line(e)
    if y is None:
        return "its libraries did not load" + _load_failure(log.text)
    return None if np.array_equal(y, np.maximum(x, 0)) else "wrong result from a Relu"


def _load_failure(log: str) -> str:
    """``: libcublasLt.so.13: cannot open shared object file ... (needs cuDNN 9.* and CUDA 13.*)`` from ORT's log."""
    log = re.sub(r"\x1b\[[0-9;]*m", "", log)
    lib = re.search(r"with error: ([^\n]+)", log)
    needs = re.search(r"Require (cuDNN [0-9]+(?:\.(?:[0-9]+|\*))* and CUDA [0-9]+(?:\.(?:[0-9]+|\*))*)", log)
    return (f": {lib.group(1).strip()}" if lib else "") + (f" (needs {needs.group(1)})" if needs else "")


class _StderrCapture:
    """Redirect file descriptor 2 (C libraries write there, not to ``sys.stderr``) into a temporary file."""

    def __enter__(self) -> _StderrCapture:
        import tempfile

        self.text = ""
        self._file = tempfile.TemporaryFile()
        sys.stderr.flush()
        self._saved = os.dup(2)
        os.dup2(self._file.fileno(), 2)
        return self

    def __exit__(self, *exc: object) -> None:
        sys.stderr.flush()
        os.dup2(self._saved, 2)
        os.close(self._saved)
        self._file.seek(0)
        self.text = self._file.read().decode("utf-8", "replace")
        self._file.close()


# --------------------------------------------------------------------------- hardware

def _gpus(torch_info: dict[str, Any]) -> list[dict[str, Any]]:
    """From torch when it sees CUDA (name, capability, memory), joined with nvidia-smi's driver version."""
    rows = machine.nvidia_smi_gpus()
    devices = [d for d in torch_info["devices"] if "name" in d]
    if devices:  # one driver serves every GPU, whatever order CUDA_VISIBLE_DEVICES gives them
        return [{**d, "driver": rows[0][1] if rows else None, "source": "torch"} for d in devices]
    return [{"name": name, "driver": driver, "source": "nvidia-smi"} for name, driver in rows]


def _cpu(root: Path) -> dict[str, Any]:
    text = machine.read_file(root / "proc/cpuinfo") or ""
    isa = int8_isa(machine.cpu_flags(text))
    return {"model": machine.cpu_model(text), "cores": os.cpu_count(), "usable_cores": machine.usable_cores(),
            "int8_isa": isa, "int8_isa_from": ISA_OVERRIDE if os.environ.get(ISA_OVERRIDE) else "/proc/cpuinfo",
            "int8_can_saturate": int8_can_saturate(isa), "int8_session_config": kernel_config(isa)}


# --------------------------------------------------------------------------- verdicts

def _backends(torch_info: dict[str, Any], ort: dict[str, Any], trt: dict[str, Any], gpus: list[dict[str, Any]],
              jetson: dict[str, Any] | None) -> dict[str, dict[str, Any]]:
    """``{"ok", "why", "install"}`` per backend; ``install`` is the command to run when not ok."""
    hint = _install_hints(jetson)
    out: dict[str, dict[str, Any]] = {}

    def put(name: str, ok: bool, why: str, install: str = "") -> None:
        out[name] = {"ok": ok, "why": why, "install": "" if ok else install}

    tv = torch_info["version"]
    if tv is None:
        put("torch-cpu", False, f"torch does not import: {torch_info['error']}", hint["torch"])
        put("torch-cuda", False, "torch does not import", hint["torch"])
    else:
        put("torch-cpu", True, f"torch {tv}")
        if torch_info["cuda_available"]:
            names = ", ".join(d["name"] for d in torch_info["devices"] if "name" in d)
            put("torch-cuda", True, f"torch {tv}, CUDA {torch_info['cuda_build']}, cuDNN {torch_info['cudnn']}: {names}")
        elif not torch_info["cuda_build"]:
            put("torch-cuda", False, f"torch {tv} is a CPU-only build", hint["torch-cuda"])
        else:
            put("torch-cuda", False, f"torch {tv} is a CUDA {torch_info['cuda_build']} build but sees no usable GPU",
                hint["gpu"])

    ov, working, providers = ort["version"], ort["working"], ort["providers"]
    clash = len(ort["packages"]) == 2
    no_gpu = not gpus and jetson is None  # a JetPack 5 Jetson has no nvidia-smi, yet a GPU
    for name, provider, fix in (("onnxruntime-cpu", "CPUExecutionProvider", hint["onnxruntime"]),
                                ("onnxruntime-cuda", "CUDAExecutionProvider", hint["onnxruntime-gpu"]),
                                ("onnxruntime-tensorrt", "TensorrtExecutionProvider", hint["onnxruntime-trt"])):
        if ov is None:
            put(name, False, f"onnxruntime does not import: {ort['error']}", fix)
        elif provider in working and working[provider] is None:
            put(name, True, f"onnxruntime {ov}: {provider} ran a test model")
        elif provider in working:
            gpu_missing = no_gpu and provider != "CPUExecutionProvider"
            put(name, False, f"onnxruntime {ov} lists {provider} but it failed: {working[provider]}",
                hint["gpu"] if gpu_missing else hint["cuda-libs"] if jetson is None else fix)
        else:
            why = f"onnxruntime {ov} has no {provider} (has {', '.join(providers)})"
            if clash:
                why += f"; both {' and '.join(ort['packages'])} are installed and share one module"
            if no_gpu and provider != "CPUExecutionProvider":
                why += "; no NVIDIA GPU was found either"
            put(name, False, why, fix)

    if trt["version"] is None:
        why = f"tensorrt does not import: {trt['error']}" + ("; no NVIDIA GPU was found either" if no_gpu else "")
        put("tensorrt", False, why, hint["tensorrt"])
    elif trt["builder"]:
        put("tensorrt", True, f"tensorrt {trt['version']}: builder created on the GPU")
    else:
        put("tensorrt", False, f"tensorrt {trt['version']} imports but cannot build: {trt['builder_error']}",
            hint["gpu"])
    return out


def _install_hints(jetson: dict[str, Any] | None) -> dict[str, str]:
    """The commands that fix each gap. A Jetson differs: TensorRT comes from JetPack's apt packages,
    GPU wheels from NVIDIA's Jetson index, never from PyPI."""
    # onnxruntime and onnxruntime-gpu both install the `onnxruntime` module; with both present the
    # one installed last wins, so the CPU package goes before the GPU one is (re)installed.
    swap = "pip uninstall -y onnxruntime && "
    if jetson is None:
        def gpu(extras: str) -> str:
            return f"pip install '{DISTRIBUTION}[{extras}]' && {swap}pip install --force-reinstall --no-deps onnxruntime-gpu"

        return {
            "torch": "pip install torch torchvision",
            "torch-cuda": "pip install --force-reinstall torch torchvision (PyPI's Linux x86_64 wheels are CUDA "
                          "builds; for another CUDA version see pytorch.org/get-started/locally)",
            "gpu": "needs an NVIDIA GPU and driver (check nvidia-smi); in Docker run with --gpus all",
            "cuda-libs": "install the CUDA/cuDNN (and for TensorRT, TensorRT) libraries this onnxruntime-gpu names "
                         "in `why`, system-wide or as pip packages: pip install 'onnxruntime-gpu[cuda,cudnn]'",
            "onnxruntime": "pip install onnxruntime",
            "onnxruntime-gpu": gpu("gpu"),
            "onnxruntime-trt": gpu("gpu,trt"),
            "tensorrt": f"pip install '{DISTRIBUTION}[trt]'",
        }
    index = jetson_index(jetson)
    ort_gpu = f"{swap}pip install onnxruntime-gpu --index-url {index}"
    ort_cpu = f"pip install onnxruntime-gpu --index-url {index}"
    trt = ("use JetPack's system TensorRT: sudo apt install python3-libnvinfer (its Python bindings); "
           "a venv sees it only if made with --system-site-packages; do not pip install tensorrt on a Jetson")
    major = str(jetson.get("l4t", "")).split(".")[0]
    if major == "35":
        trt += ("; JetPack 5's bindings are for its Python 3.8, where edgetl-runtime runs "
                "(pip install ./packaging/runtime)")
    elif major in ("38", "39"):
        ort_cpu, ort_gpu = "pip install onnxruntime", ("no onnxruntime-gpu build runs on JetPack 7 yet (none for Orin's sm_87 on NVIDIA's sbsa/cu130 "
                   "index; microsoft/onnxruntime#27098 for Thor): ONNX runs on the CPU provider here and TensorRT "
                   "engines on the GPU (edgetl build, bench trt-*); or build onnxruntime with CUDA from source")
        trt = ("JetPack 7 takes NVIDIA's SBSA TensorRT: the nvcr.io/nvidia/tensorrt container (Dockerfile.jetpack7) "
               f"or pip install '{DISTRIBUTION}[trt]' on its Python 3.12")
    return {
        "torch": f"optional on a Jetson (ONNX and engine runtimes do not need it); to train here: "
                 f"pip install torch torchvision --index-url {index}",
        "torch-cuda": f"pip install --force-reinstall torch torchvision --index-url {index}",
        "gpu": "run on the Jetson itself; in Docker add --runtime nvidia",
        "onnxruntime": ort_cpu,
        "onnxruntime-gpu": ort_gpu,
        "onnxruntime-trt": ort_gpu,  # its TensorRT libraries (libnvinfer) are JetPack's own
        "tensorrt": trt,
    }


# --------------------------------------------------------------------------- output
