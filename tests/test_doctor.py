"""`edgetl doctor`: what this machine really runs, and Jetson facts parsed from real-format files."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console

from edgetl.cli.render import render_doctor
from edgetl.doctor import BACKENDS, collect
from edgetl.machine import JETPACK_FOR_L4T, jetson_info, parse_l4t, parse_nvpmodel

no_tensorrt_here = pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None,
                                      reason="TensorRT is installed here; these tests describe a machine without it")

# Real first lines of /etc/nv_tegra_release (JetPack 6.2, 6.0 and 5.1.2 boards) and what follows them.
R36_4_3 = ("# R36 (release), REVISION: 4.3, GCID: 38968081, BOARD: generic, EABI: aarch64, "
           "DATE: Wed Jan  8 01:49:37 UTC 2025\n# KERNEL_VARIANT: oot\nTARGET_USERSPACE_LIB_DIR=nvidia\n")
R36_3_0 = ("# R36 (release), REVISION: 3.0, GCID: 36191598, BOARD: generic, EABI: aarch64, "
           "DATE: Mon May  6 17:34:21 UTC 2024\n")
R35_4_1 = ("# R35 (release), REVISION: 4.1, GCID: 33958178, BOARD: t186ref, EABI: aarch64, "
           "DATE: Tue Aug  1 19:57:35 UTC 2023\n")
# The line's format as JetPack 5 and 6 write it, with JetPack 7.2's release number (R39.2).
R39_2_0 = ("# R39 (release), REVISION: 2.0, GCID: 41000000, BOARD: generic, EABI: aarch64, "
           "DATE: Mon Jun  8 10:00:00 UTC 2026\n")
# /proc/cpuinfo on an Orin (arm64 kernels print implementer/part codes, no model name).
ORIN_CPUINFO = "".join(
    f"processor\t: {i}\nBogoMIPS\t: 62.50\nFeatures\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp "
    "asimdhp cpuid asimdrdm lrcpc dcpop asimddp uscat ilrcpc flagm paca pacg\nCPU implementer\t: 0x41\n"
    "CPU architecture: 8\nCPU variant\t: 0x0\nCPU part\t: 0xd42\nCPU revision\t: 1\n\n" for i in range(6))


def fake_jetson(root: Path, release: str, model: str, *, sysfs: bool = False) -> Path:
    """A folder laid out like a Jetson's / for the files doctor reads; the device-tree model ends in a NUL."""
    (root / "etc").mkdir(parents=True)
    (root / "etc/nv_tegra_release").write_text(release)
    dt = root / ("sys/firmware/devicetree/base" if sysfs else "proc/device-tree")
    dt.mkdir(parents=True)
    (dt / "model").write_bytes(model.encode() + b"\x00")
    (root / "proc").mkdir(exist_ok=True)
    (root / "proc/cpuinfo").write_text(ORIN_CPUINFO)
    return root


def doctor(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "250"}
    return subprocess.run([sys.executable, "-m", "edgetl", "doctor", *args], capture_output=True, text=True,
                          env=env, timeout=300)


@pytest.fixture(scope="module")
def here() -> dict:
    return collect()


@no_tensorrt_here
def test_json_reports_tensorrt_missing_with_its_install_command_and_onnxruntime_cpu_working() -> None:
    r = doctor("--json")
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["schema_version"] == 1
    assert set(report["backends"]) == set(BACKENDS)
    trt = report["backends"]["tensorrt"]
    assert trt["ok"] is False and trt["install"] == "pip install 'edgetl[trt]'"
    assert "No module named 'tensorrt'" in trt["why"]
    cpu = report["backends"]["onnxruntime-cpu"]
    assert cpu["ok"] is True and cpu["install"] == ""
    assert report["onnxruntime"]["working"]["CPUExecutionProvider"] is None  # it ran a model, not just imported


@no_tensorrt_here
def test_table_shows_every_backend_and_install_commands_intact() -> None:
    r = doctor()
    assert r.returncode == 0, r.stderr
    for name in BACKENDS:
        assert name in r.stdout
    # rich would swallow "[trt]" as markup if the text were not escaped
    assert "edgetl[trt]" in r.stdout


def test_render_keeps_brackets_and_lists_the_machine(here: dict) -> None:
    console = Console(record=True, width=400)
    render_doctor(here, console)
    text = console.export_text()
    assert f"{here['python']['version']}" in text and "onnxruntime-cpu" in text
    for v in here["backends"].values():
        if v["install"]:
            assert v["install"] in text


def test_collect_matches_the_libraries_this_interpreter_has(here: dict) -> None:
    import onnxruntime

    assert here["onnxruntime"]["version"] == onnxruntime.__version__
    assert "CPUExecutionProvider" in here["onnxruntime"]["providers"]
    torch_spec = importlib.util.find_spec("torch")
    assert here["backends"]["torch-cpu"]["ok"] is (torch_spec is not None)
    if torch_spec is not None:
        import torch

        assert here["torch"]["version"] == torch.__version__
        assert here["backends"]["torch-cuda"]["ok"] is torch.cuda.is_available()
    assert here["cpu"]["cores"] == os.cpu_count()
    assert all(set(v) == {"ok", "why", "install"} for v in here["backends"].values())
    assert all(v["install"] for v in here["backends"].values() if not v["ok"])  # every gap says how to fill it
    json.dumps(here)  # plain data all the way down


@pytest.mark.parametrize(("release", "l4t", "jetpack", "trt", "index"), [
    (R36_4_3, "36.4.3", "6.2", "10.3.0", "jp6/cu126"),
    (R36_3_0, "36.3.0", "6.0", "8.6.2", "jp6/cu122"),
    (R35_4_1, "35.4.1", "5.1.2", "8.5.2", "jp5/cu114"),
])
def test_jetson_root_gives_jetpack_model_and_jetson_install_commands(tmp_path: Path, release: str, l4t: str,
                                                                     jetpack: str, trt: str, index: str) -> None:
    root = fake_jetson(tmp_path, release, "NVIDIA Jetson AGX Orin Developer Kit")
    report = collect(root)
    j = report["jetson"]
    assert (j["l4t"], j["jetpack"], j["jetpack_tensorrt"]) == (l4t, jetpack, trt)
    assert j["model"] == "NVIDIA Jetson AGX Orin Developer Kit"  # NUL terminator gone
    assert report["cpu"]["model"] == "ARM (implementer 0x41, part 0xd42)"
    assert report["cpu"]["cores"] == os.cpu_count()  # counts come from this machine, not the file
    b = report["backends"]
    if not b["tensorrt"]["ok"]:
        assert "python3-libnvinfer" in b["tensorrt"]["install"] and "edgetl[trt]" not in b["tensorrt"]["install"]
    if not b["onnxruntime-cuda"]["ok"]:
        assert f"https://pypi.jetson-ai-lab.io/{index}" in b["onnxruntime-cuda"]["install"]
    console = Console(record=True, width=400)
    render_doctor(report, console)
    assert f"R{l4t} / JetPack {jetpack}" in console.export_text()


def test_jetpack7_says_onnx_runs_on_the_cpu_and_tensorrt_is_the_sbsa_one(tmp_path: Path) -> None:
    root = fake_jetson(tmp_path, R39_2_0, "NVIDIA Jetson AGX Orin Developer Kit")
    report = collect(root)
    assert (report["jetson"]["l4t"], report["jetson"]["jetpack"]) == ("39.2.0", "7.2")
    b = report["backends"]
    if not b["onnxruntime-cuda"]["ok"]:
        assert "no onnxruntime-gpu build runs on JetPack 7" in b["onnxruntime-cuda"]["install"]
        assert "ONNX runs on the CPU provider" in b["onnxruntime-cuda"]["install"]
    if not b["tensorrt"]["ok"]:
        assert "SBSA TensorRT" in b["tensorrt"]["install"] and "python3-libnvinfer" not in b["tensorrt"]["install"]
    if not b["onnxruntime-cpu"]["ok"]:
        assert b["onnxruntime-cpu"]["install"] == "pip install onnxruntime"


def test_jetpack6_from_the_sysfs_model_and_brief_release_line(tmp_path: Path) -> None:
    release = ("# R36 (release), REVISION: 4.0, GCID: 37537400, BOARD: generic, EABI: aarch64, "
               "DATE: Fri Sep 13 04:36:44 UTC 2024\n")
    root = fake_jetson(tmp_path, release, "NVIDIA Jetson Orin Nano Developer Kit", sysfs=True)
    j = jetson_info(root)
    assert j is not None
    assert (j["l4t"], j["jetpack"], j["model"]) == ("36.4.0", "6.1", "NVIDIA Jetson Orin Nano Developer Kit")


def test_unlisted_revision_names_only_the_series() -> None:
    info = parse_l4t("# R36 (release), REVISION: 9.9, GCID: 1, BOARD: generic, EABI: aarch64\n")
    assert info == {"l4t": "36.9.9", "jetpack": "6.x", "jetpack_tensorrt": "unknown", "board": "generic"}
    assert parse_l4t("# R35 (release), REVISION: 4.1, GCID: 33958178, BOARD: t186ref")["board"] == "t186ref"
    assert parse_l4t("Ubuntu 22.04.4 LTS") is None


def test_every_known_l4t_is_jetpack5_or_6_as_its_major_says() -> None:
    for l4t, (jetpack, _) in JETPACK_FOR_L4T.items():
        assert jetpack.startswith({"35": "5.", "36": "6."}[l4t.split(".")[0]]), l4t


def test_not_a_jetson_without_release_or_jetson_model(tmp_path: Path) -> None:
    assert jetson_info(tmp_path) is None
    (tmp_path / "proc/device-tree").mkdir(parents=True)
    (tmp_path / "proc/device-tree/model").write_bytes(b"Raspberry Pi 4 Model B Rev 1.4\x00")
    assert jetson_info(tmp_path) is None


def test_nvpmodel_output() -> None:
    assert parse_nvpmodel("NVPM WARN: fan mode is not set!\nNV Power Mode: MAXN\n0\n") == {"name": "MAXN", "id": "0"}
    assert parse_nvpmodel("NVPM WARN: fan mode is not set to cool\nNV Power Mode: MODE_30W_2CORE\n2\n") == {
        "name": "MODE_30W_2CORE", "id": "2"}
    assert parse_nvpmodel("NV Power Mode: 15W\n0\n") == {"name": "15W", "id": "0"}
    assert parse_nvpmodel("nvpmodel: command failed") is None
