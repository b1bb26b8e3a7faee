"""The machine a report was measured on, and the fingerprint a baseline must match: CPU model and the ISA
flags that pick kernels, usable cores, threads, GPUs, Jetson power mode and clock lock."""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import platform
from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__, machine
from ..errors import EdgetlError
from .plan import tensorrt_available

FINGERPRINT_VERSION = 2  # 2: the CPU's kernel-selecting ISA flags are part of it (1: model name only)


def environment(threads: int, torch_ok: bool, root: Path = Path("/")) -> dict[str, Any]:
    """Hardware, versions and, on a Jetson, power mode and clock lock; plus the fingerprint baselines match on."""
    root = Path(root)
    cpuinfo = machine.read_file(root / "proc/cpuinfo") or ""
    model = machine.cpu_model(cpuinfo)
    flags = machine.cpu_flags(cpuinfo)
    cpu = {"model": model, "cores": os.cpu_count(), "usable_cores": machine.usable_cores(), "threads": threads,
           "flags": [f for f in machine.CPU_FLAGS if f in flags],
           "governor": machine.read_file(root / "sys/devices/system/cpu/cpu0/cpufreq/scaling_governor")}
    jetson = machine.jetson_info(root)
    if jetson is not None:
        jetson["clocks"] = machine.jetson_clocks(root)
    import onnxruntime as ort

    trt_ok, trt_why = tensorrt_available()
    env: dict[str, Any] = {
        "hostname": platform.node(), "os": platform.platform(), "python": platform.python_version(),
        "cpu": cpu, "gpus": _gpus(torch_ok), "jetson": jetson,
        "versions": {"edgetl": __version__, "numpy": np.__version__, "torch": _version("torch"),
                     "torchvision": _version("torchvision"), "onnxruntime": ort.__version__,
                     "tensorrt": _tensorrt_version(trt_ok)},
        "onnxruntime_providers": ort.get_available_providers(),
        "tensorrt": {"usable": trt_ok, "detail": trt_why},
        "accuracy_preprocessing": ("torchvision, as `edgetl eval`" if torch_ok else
                                   "PIL/numpy, as `edgetl predict` (PyTorch is not installed)"),
    }
    fields = {"version": FINGERPRINT_VERSION, "machine": platform.machine(), "cpu": model, "isa": cpu["flags"],
              "usable_cores": cpu["usable_cores"], "threads": threads,
              "gpus": [g["name"] for g in env["gpus"]],
              "jetson": None if jetson is None else {"model": jetson.get("model"), "power_mode": jetson.get("power_mode"),
                                                     "clocks_locked": jetson["clocks"]["locked"]}}
    env["fingerprint_fields"] = fields
    env["fingerprint"] = hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]
    return env


def _gpus(torch_ok: bool) -> list[dict[str, Any]]:
    """Name and compute capability from PyTorch (or cuda-python), driver version from nvidia-smi."""
    found: list[dict[str, Any]] = []
    if torch_ok:
        import torch

        if torch.cuda.is_available():
            for i in range(torch.cuda.device_count()):
                p = torch.cuda.get_device_properties(i)
                found.append({"name": p.name, "compute_capability": f"{p.major}.{p.minor}"})
    if not found:
        try:
            from ..runtime.cuda import gpu_info

            name, cc = gpu_info()
            found.append({"name": name, "compute_capability": cc})
        except EdgetlError:
            pass
    smi = machine.nvidia_smi_gpus()
    for g in found:
        g["driver"] = smi[0][1] if smi else None
    return found


def _tensorrt_version(usable: bool) -> str | None:
    version = _version("tensorrt")
    if version is None and usable:  # JetPack's apt bindings carry no pip metadata
        from ..runtime.tensorrt import import_tensorrt

        version = str(import_tensorrt().__version__)
    return version


def _version(dist: str) -> str | None:
    for name in (dist, f"{dist}-gpu", f"{dist}-cu12", f"{dist}-cu13"):
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None
