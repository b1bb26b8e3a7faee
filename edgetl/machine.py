"""Facts about this machine that bench (its report and fingerprint), doctor (its verdicts) and the INT8
kernel choice all need: the CPU's model, feature flags and usable cores, the GPUs' driver, and a
Jetson's L4T/JetPack release, power mode and clock lock. Read from /proc, /sys and /etc under
``root`` (tests point it at real-format copies of a Jetson's files) and from tools on PATH; nothing
heavy is imported, so the deploy runtime may use it."""

from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

CPU_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "avx512_fp16", "amx_tile",
             "amx_int8", "amx_bf16", "asimd", "asimddp", "i8mm", "bf16", "sve")
GPU_DEVFREQ = ("gpu", "gv11b", "ga10b", "gp10b", "gb10b")  # Jetson GPU devfreq node names
CMD_TIMEOUT_S = 5.0

# L4T release (first line of /etc/nv_tegra_release) -> (JetPack, TensorRT it ships), from
# NVIDIA's JetPack archive. Exact releases only: 35.1 was JetPack 5.0.2 and 35.2.1 was 5.1,
# so an unlisted revision gets the major series below rather than a guessed minor.
JETPACK_FOR_L4T: dict[str, tuple[str, str]] = {
    "35.1.0": ("5.0.2", "8.4.1"),
    "35.2.1": ("5.1", "8.5.2"),
    "35.3.1": ("5.1.1", "8.5.2"),
    "35.4.1": ("5.1.2", "8.5.2"),
    "35.5.0": ("5.1.3", "8.5.2"),
    "35.6.0": ("5.1.4", "8.5.2"),
    "35.6.1": ("5.1.5", "8.5.2"),
    "36.2.0": ("6.0 DP", "8.6.2"),
    "36.3.0": ("6.0", "8.6.2"),
    "36.4.0": ("6.1", "10.3.0"),
    "36.4.3": ("6.2", "10.3.0"),
    "36.4.4": ("6.2.1", "10.3.0"),
    "36.4.7": ("6.2.1", "10.3.0"),
}
# JetPack 7 (R38: 7.0/7.1 on Thor; R39: 7.2, Thor and Orin) is SBSA-aligned: TensorRT 10.13+ and CUDA 13.
JETPACK_SERIES = {"32": "4.x", "34": "5.0.x DP", "35": "5.x", "36": "6.x", "38": "7.0/7.1", "39": "7.2"}

_L4T_LINE = re.compile(r"#\s*R(\d+)\s*\(release\),\s*REVISION:\s*(\d+(?:\.\d+)*)")
_L4T_BOARD = re.compile(r"BOARD:\s*([^,\s]+)")
_POWER_MODE = re.compile(r"NV Power Mode:\s*(\S+)")



# --- CPU --------------------------------------------------------------------------------------------

def cpu_flags(cpuinfo: str | None = None) -> set[str]:
    """The CPU feature flags in /proc/cpuinfo (x86 ``flags``, Arm ``Features``); empty where unreadable."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return set()
    flags: set[str] = set()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            flags.update(value.split())
    return flags


def usable_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def cpu_model(cpuinfo: str) -> str:
    """/proc/cpuinfo's model name (x86) or Hardware line; ARM kernels print implementer/part codes instead."""
    fields: dict[str, str] = {}
    for line in cpuinfo.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields.setdefault(key.strip(), value.strip())
    model = fields.get("model name") or fields.get("Hardware")
    if not model and "CPU part" in fields:
        model = f"ARM (implementer {fields.get('CPU implementer', '?')}, part {fields['CPU part']})"
    return model or platform.processor() or platform.machine()


# --- GPUs ---------------------------------------------------------------------------------------------

def nvidia_smi_gpus() -> list[tuple[str, str]]:
    """(name, driver version) per GPU from nvidia-smi; empty where it is missing or silent."""
    smi = read_tool(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"])
    return [(r[0], r[1]) for r in ([c.strip() for c in ln.split(",")] for ln in (smi or "").splitlines()) if len(r) == 2]


# --- Jetson -------------------------------------------------------------------------------------------

def parse_l4t(text: str) -> dict[str, str] | None:
    """``# R36 (release), REVISION: 4.3, GCID: ..., BOARD: generic, ...`` -> l4t "36.4.3", JetPack, TensorRT."""
    m = _L4T_LINE.search(text)
    if not m:
        return None
    major, revision = m.group(1), m.group(2)
    parts = [major, *revision.split(".")]
    l4t = ".".join(parts + ["0"] * (3 - len(parts)))
    jetpack, trt = JETPACK_FOR_L4T.get(l4t, (JETPACK_SERIES.get(major, "unknown"), "unknown"))
    board = _L4T_BOARD.search(text)
    return {"l4t": l4t, "jetpack": jetpack, "jetpack_tensorrt": trt, "board": board.group(1) if board else ""}


def parse_nvpmodel(text: str) -> dict[str, str] | None:
    """``nvpmodel -q`` prints ``NV Power Mode: MAXN`` and then the mode id on a line of its own."""
    m = _POWER_MODE.search(text)
    if not m:
        return None
    ids = [ln.strip() for ln in text.splitlines() if ln.strip().isdigit()]
    return {"name": m.group(1), "id": ids[0] if ids else ""}


def jetson_info(root: Path = Path("/")) -> dict[str, Any] | None:
    """L4T/JetPack, board model and power mode; None when this is not a Jetson (no L4T release, no Jetson model)."""
    release = read_file(root / "etc/nv_tegra_release")
    model = read_file(root / "proc/device-tree/model") or read_file(root / "sys/firmware/devicetree/base/model")
    l4t = parse_l4t(release) if release else None
    if l4t is None and "jetson" not in (model or "").lower():
        return None
    info: dict[str, Any] = {**(l4t or {"l4t": "unknown", "jetpack": "unknown", "jetpack_tensorrt": "unknown",
                                        "board": ""}), "model": model or "unknown"}
    mode = parse_nvpmodel(read_tool(["nvpmodel", "-q"]) or "")
    info["power_mode"] = None if mode is None else mode["name"] + (f" (mode {mode['id']})" if mode["id"] else "")
    return info


def jetson_clocks(root: Path = Path("/")) -> dict[str, bool | None]:
    """Whether `jetson_clocks` has pinned the clocks: every CPU's and the GPU's minimum frequency equals its maximum.

    Read from sysfs (``cpufreq`` and ``devfreq``), which needs no root, unlike ``jetson_clocks --show``.
    """
    cpu_states = []
    for d in sorted((root / "sys/devices/system/cpu").glob("cpu[0-9]*/cpufreq")):
        lo, hi = read_file(d / "scaling_min_freq"), read_file(d / "scaling_max_freq")
        if lo and hi:
            cpu_states.append(lo.strip() == hi.strip())
    gpu_states = []
    devfreq = root / "sys/class/devfreq"
    for d in sorted(devfreq.iterdir()) if devfreq.is_dir() else []:
        if any(k in d.name for k in GPU_DEVFREQ):
            lo, hi = read_file(d / "min_freq"), read_file(d / "max_freq")
            if lo and hi:
                gpu_states.append(lo.strip() == hi.strip())
    cpu_locked = all(cpu_states) if cpu_states else None
    gpu_locked = all(gpu_states) if gpu_states else None
    known = [s for s in (cpu_locked, gpu_locked) if s is not None]
    return {"cpu": cpu_locked, "gpu": gpu_locked, "locked": all(known) if known else None}



# --- reading ------------------------------------------------------------------------------------------

def read_file(path: Path) -> str | None:
    """A small system file as text, NULs stripped (device-tree strings end in one); None if unreadable."""
    try:
        return path.read_bytes().decode("utf-8", "replace").replace("\x00", "").strip() or None
    except OSError:
        return None


def read_tool(cmd: list[str]) -> str | None:
    """stdout of a tool if it is on PATH and answers within a few seconds; None otherwise."""
    exe = shutil.which(cmd[0])
    if exe is None:
        return None
    try:
        r = subprocess.run([exe, *cmd[1:]], capture_output=True, text=True, timeout=CMD_TIMEOUT_S)
    except (OSError, subprocess.SubprocessError):
        return None
    return r.stdout.strip() if r.returncode == 0 and r.stdout.strip() else None
