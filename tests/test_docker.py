"""The Dockerfiles, read the way Docker reads them (no Docker engine here): pinned bases, a non-root
user after the installs, `edgetl` as the entrypoint, the right TensorRT per platform."""

from __future__ import annotations

import fnmatch
import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
X86 = ROOT / "Dockerfile"
JETPACK = {line: ROOT / f"Dockerfile.jetpack{line}" for line in (5, 6, 7)}  # one per JetPack line
ALL = [X86, *JETPACK.values()]


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order: comment lines dropped, backslash continuations joined."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue  # Docker drops comment lines, even in the middle of a continued instruction
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        text = pending + line
        pending = ""
        word, _, args = text.partition(" ")
        out.append((word.upper(), args.strip()))
    assert not pending, f"{path.name}: ends inside a continued line"
    return out


def runs(path: Path) -> list[str]:
    return [args for word, args in instructions(path) if word == "RUN"]


def pip_installs(path: Path) -> list[list[str]]:
    """The arguments of every `pip install` in RUN steps (up to the next `&&`, `;` or pipe), split like the shell."""
    return [shlex.split(m.group(1)) for cmd in runs(path) for m in re.finditer(r"\bpip install ([^&;|]*)", cmd)]


@pytest.mark.parametrize("path", ALL, ids=lambda p: p.name)
def test_every_base_image_is_pinned(path: Path) -> None:
    bases = [args.split() for word, args in instructions(path) if word == "FROM"]
    assert bases
    for args in bases:
        image = next(a for a in args if not a.startswith("--"))
        assert "$" not in image, f"{image}: a base chosen by a build argument is not pinned in the file"
        name, _, digest = image.partition("@")
        tag = name.rpartition(":")[2] if ":" in name.rpartition("/")[2] else ""
        assert digest.startswith("sha256:") or (tag and tag != "latest"), f"{image}: pin a tag other than latest"


@pytest.mark.parametrize("path", ALL, ids=lambda p: p.name)
def test_runs_as_a_non_root_user_set_after_every_install(path: Path) -> None:
    steps = instructions(path)
    users = [(i, args) for i, (word, args) in enumerate(steps) if word == "USER"]
    assert users, "no USER: the container would run as root"
    last_user, name = users[-1]
    assert name.split(":")[0] not in ("root", "0")
    installs = [i for i, (word, args) in enumerate(steps)
                if word == "RUN" and re.search(r"pip install|apt-get install|useradd", args)]
    assert installs and max(installs) < last_user
    assert any(re.search(rf"useradd\b[^&;]*\s{re.escape(name)}(\s|$)", args) for word, args in steps if word == "RUN")


@pytest.mark.parametrize("path", ALL, ids=lambda p: p.name)
def test_entrypoint_is_edgetl_in_exec_form(path: Path) -> None:
    entry = [args for word, args in instructions(path) if word == "ENTRYPOINT"]
    assert entry and json.loads(entry[-1]) == ["edgetl"]  # exec form: signals reach edgetl, exit codes come back
    cmd = [args for word, args in instructions(path) if word == "CMD"]
    assert cmd and json.loads(cmd[-1]) == ["--help"]


@pytest.mark.parametrize("path", ALL, ids=lambda p: p.name)
def test_copied_sources_exist_and_are_not_ignored(path: Path) -> None:
    ignored = [ln.strip() for ln in (ROOT / ".dockerignore").read_text().splitlines()
               if ln.strip() and not ln.startswith("#")]
    copies = [args.split()[:-1] for word, args in instructions(path) if word == "COPY"]
    assert copies
    for sources in copies:
        for src in sources:
            assert (ROOT / src).exists(), src
            assert not any(fnmatch.fnmatch(src, pattern) for pattern in ignored), src


def test_x86_installs_the_trt_and_gpu_extras_and_keeps_only_the_gpu_onnxruntime() -> None:
    extras = set()
    for args in pip_installs(X86):
        for token in args:
            m = re.fullmatch(r"\.\[([\w,\s-]+)\]", token)
            if m:
                extras |= {e.strip() for e in m.group(1).split(",")}
    assert {"trt", "gpu"} <= extras
    assert any("uninstall -y onnxruntime" in cmd for cmd in runs(X86))


@pytest.mark.parametrize("line", sorted(JETPACK))
def test_jetson_images_install_edgetl_runtime_without_torch_or_pip_tensorrt(line: int) -> None:
    path = JETPACK[line]
    installs = pip_installs(path)
    for args in installs:
        for token in args:
            assert not re.match(r"['\"]?tensorrt", token), f"pip-installs TensorRT: {args}"
            assert "trt" not in (re.fullmatch(r"['\"]?\./packaging/runtime\[(.*)\]['\"]?", token) or [None, ""])[1], args
            assert not re.match(r"['\"]?torch", token), f"pip-installs torch: {args}"
            assert token != ".", f"installs the full edgetl (torch, timm, scikit-learn): {args}"
    runtime = [t for args in installs for t in args if re.fullmatch(r"['\"]?\./packaging/runtime(\[[\w,]+\])?['\"]?", t)]
    assert len(runtime) == 1, installs
    assert ("[cpu]" in runtime[0]) is (line == 7)  # the CPU onnxruntime only where no Jetson GPU build exists
    pins = [t for args in installs for t in args if re.match(r"['\"]?cuda-python", t)]
    assert len(pins) == 1 and "<" in pins[0]  # the TensorRT runner's CUDA calls, pinned to the image's CUDA
    text = path.read_text()
    assert "--system-site-packages" in text  # the venv must see the system's tensorrt
    assert "COPY packaging/runtime ./packaging/runtime" in text and "COPY edgetl ./edgetl" in text


@pytest.mark.parametrize(("line", "base", "index"), [
    (5, "nvcr.io/nvidia/l4t-jetpack:r35.4.1", "https://pypi.jetson-ai-lab.io/jp5/cu114"),
    (6, "nvcr.io/nvidia/l4t-jetpack:r36.4.0", "https://pypi.jetson-ai-lab.io/jp6/cu126"),
])
def test_jetpack5_and_6_take_tensorrt_from_apt_and_onnxruntime_gpu_from_the_jetson_index(line: int, base: str,
                                                                                       index: str) -> None:
    path = JETPACK[line]
    assert [args for word, args in instructions(path) if word == "FROM"] == [base]
    assert any("python3-libnvinfer" in cmd and "apt-get install" in cmd for cmd in runs(path))
    assert f"ARG JETSON_INDEX={index}" in path.read_text()
    ort = [args for args in pip_installs(path) if any("onnxruntime-gpu" in a or "ORT_GPU" in a for a in args)]
    assert ort and any(a.startswith("--index-url") for a in ort[0])
    order = [i for i, args in enumerate(pip_installs(path)) for a in args if "onnxruntime-gpu" in a or "ORT_GPU" in a
             or "packaging/runtime" in a]
    assert order == sorted(order) and len(order) == 2  # the GPU build first: edgetl-runtime adds no CPU one


def test_jetpack7_runs_onnx_on_the_cpu_and_says_so() -> None:
    path = JETPACK[7]
    assert [args for word, args in instructions(path) if word == "FROM"] == ["nvcr.io/nvidia/tensorrt:25.08-py3"]
    assert not any("onnxruntime-gpu" in a for args in pip_installs(path) for a in args)
    assert not any("python3-libnvinfer" in cmd for cmd in runs(path))
    assert any("find_spec('tensorrt')" in cmd for cmd in runs(path))  # the build fails without the image's TensorRT
    assert "no onnxruntime-gpu" in path.read_text()


def test_dockerignore_keeps_local_state_out_of_the_context() -> None:
    patterns = set((ROOT / ".dockerignore").read_text().split())
    assert {".venv", "runs", ".git"} <= patterns
    assert any("__pycache__" in p for p in patterns)


def test_the_entrypoint_script_exists_and_runs() -> None:
    scripts = re.search(r"^\[project\.scripts\]\n(.*?)(?:^\[|\Z)", (ROOT / "pyproject.toml").read_text(), re.M | re.S)
    assert scripts and re.search(r'^edgetl\s*=\s*"edgetl\.cli:main"', scripts.group(1), re.M)
    from edgetl.cli import main

    assert callable(main)
    r = subprocess.run([sys.executable, "-m", "edgetl", "--help"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "Commands" in r.stdout


def test_docker_readme_shows_gpu_flags_mounts_and_commands() -> None:
    text = (ROOT / "docker/README.md").read_text().replace("\\\n  ", "")  # join continued shell lines
    for needle in ("--runtime nvidia", "--gpus all", "-v $PWD/runs:/work/runs", "-v $PWD/data:/work/data",
                   "-f Dockerfile.jetpack5", "-f Dockerfile.jetpack6", "-f Dockerfile.jetpack7"):
        assert needle in text, needle
    for image in ("edgetl", "edgetl:jetpack5", "edgetl:jetpack6", "edgetl:jetpack7"):  # each runs doctor, predict, build
        for command in ("doctor", "predict /work/", "build /work/"):
            assert re.search(rf"--(gpus all|runtime nvidia) .*{re.escape(image)} {command}", text), (image, command)
    for line in text.splitlines():  # every docker run names an image these files build
        if line.startswith("docker run"):
            assert re.search(r"\bedgetl(:jetpack[567])?\b", line), line
