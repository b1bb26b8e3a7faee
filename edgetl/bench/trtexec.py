"""`edgetl bench --vs-trtexec`: NVIDIA's own timer on the same engine, for a second opinion on edgetl's.

trtexec is run the way its best-practice guide times an engine (``--useCudaGraph --noDataTransfers
--useSpinWait``: model-only GPU time, no copies, no launch overhead), and the median of its
``GPU Compute Time`` summary line is what edgetl's CUDA-event p50 is compared with. TensorRT 11 made
those three the defaults and keeps the flags as no-ops, so one command serves 8.5, 10 and 11.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

from ..errors import EdgetlError, UsageError, one_line

JETPACK_TRTEXEC = Path("/usr/src/tensorrt/bin/trtexec")  # where JetPack and NVIDIA's containers put it
TIMEOUT_S = 600.0
# "[07/09/2026-12:00:00] [I] GPU Compute Time: min = 0.41 ms, max = 0.52 ms, mean = 0.43 ms, median = 0.43 ms, ..."
_SUMMARY = re.compile(r"\]?\s*(GPU Compute Time|Latency|Enqueue Time|H2D Latency|D2H Latency):\s*(.*)$")
_STAT = re.compile(r"(min|max|mean|median|percentile\(\d+(?:\.\d+)?%\))\s*=\s*([0-9.eE+-]+)\s*ms")
_THROUGHPUT = re.compile(r"Throughput:\s*([0-9.eE+-]+)\s*qps")


def find_trtexec() -> Path:
    """trtexec on the PATH, else JetPack's; UsageError saying where to get it when neither exists."""
    found = shutil.which("trtexec")
    if found:
        return Path(found)
    if JETPACK_TRTEXEC.is_file() and os.access(JETPACK_TRTEXEC, os.X_OK):
        return JETPACK_TRTEXEC
    raise UsageError("--vs-trtexec: trtexec is not on the PATH (nor at /usr/src/tensorrt/bin/trtexec); it comes "
                     "with TensorRT (JetPack, NVIDIA's TensorRT containers, the TensorRT tar package)")


def command(trtexec: Path, engine: Path, input_name: str, shape: tuple[int, ...],
            dla_core: int | None = None) -> list[str]:
    """trtexec timing ``engine`` at ``shape`` (its dynamic batch fixed by --shapes), as NVIDIA recommends
    (--warmUp in ms, --duration in s); on the DLA core the engine was built for, as edgetl runs it."""
    dims = "x".join(str(d) for d in shape)
    dla = [] if dla_core is None else [f"--useDLACore={dla_core}"]
    return [str(trtexec), f"--loadEngine={engine}", f"--shapes={input_name}:{dims}", *dla, "--useCudaGraph",
            "--noDataTransfers", "--useSpinWait", "--warmUp=500", "--duration=3"]


def parse_summary(text: str) -> dict[str, dict[str, float]]:
    """trtexec's performance summary as ``{"GPU Compute Time": {"median": ms, ...}, ..., "Throughput":
    {"qps": q}}``; the format is the same in TensorRT 8.5, 10 and 11 (``samples/common/sampleReporting.cpp``)."""
    out: dict[str, dict[str, float]] = {}
    for line in text.splitlines():
        m = _SUMMARY.search(line)
        if m and "=" in m.group(2):
            out[m.group(1)] = {k: float(v) for k, v in _STAT.findall(m.group(2))}
        t = _THROUGHPUT.search(line)
        if t:
            out["Throughput"] = {"qps": float(t.group(1))}
    return out


def gpu_median_ms(trtexec: Path, engine: Path, input_name: str, shape: tuple[int, ...],
                  dla_core: int | None = None) -> float:
    """The median GPU compute time trtexec measures for ``engine`` at ``shape``."""
    argv = command(trtexec, engine, input_name, shape, dla_core)
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise EdgetlError(f"{engine}: trtexec did not finish ({one_line(e)})") from e
    stats = parse_summary(r.stdout).get("GPU Compute Time", {})
    if r.returncode != 0 or "median" not in stats:
        last = _last_error(r.stdout + r.stderr)
        raise EdgetlError(f"{engine}: trtexec exited {r.returncode} without a GPU Compute Time summary ({last})")
    return stats["median"]


def _last_error(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if "[E]" in ln or "Error" in ln]
    return (lines[-1] if lines else text.strip().splitlines()[-1] if text.strip() else "no output")[:300]
