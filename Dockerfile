# syntax=docker/dockerfile:1
# edgetl on an x86_64 machine with an NVIDIA GPU: fine-tuning (PyTorch), export, INT8
# calibration, TensorRT engines and benchmarks (ONNX Runtime CPU/CUDA/TensorRT, TensorRT).
#
# Base: NGC TensorRT 24.08 = TensorRT 10.3, CUDA 12.6, cuDNN 9.3, Ubuntu 22.04, Python 3.10.
# TensorRT 10.3 is also JetPack 6.1/6.2's, so what builds here builds there (engines themselves
# are never portable: build them on the machine that runs them).
#   docker build -t edgetl .
#   docker run --rm --gpus all edgetl doctor
FROM nvcr.io/nvidia/tensorrt:24.08-py3

# The user that runs edgetl; pass your own id so files written to mounted folders are yours.
ARG EDGETL_UID=1000

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

WORKDIR /opt/edgetl-src
COPY pyproject.toml README.md ./
COPY edgetl ./edgetl

# 1. edgetl with the `trt` and `gpu` extras. The image's TensorRT already satisfies `trt`
#    (tensorrt>=10,<12), so pip keeps it; the last check fails the build if it did not.
#    On this image's Python 3.10 pip resolves onnxruntime-gpu 1.23.2, the last release for 3.10
#    and a CUDA 12 / cuDNN 9 build like the image (PyPI's 1.28 and later are CUDA 13 builds).
#    PyTorch from PyPI brings its own CUDA runtime; the host driver must be new enough for it.
# 2. onnxruntime (a core dependency) and onnxruntime-gpu install the same `onnxruntime` module
#    and the last one written wins: remove the CPU package, then rewrite the GPU one.
# 3. Fail the build here, not at run time, if the GPU providers or the CLI are missing
#    (provider lists are compiled in, so this needs no GPU during `docker build`).
RUN TRT_IMAGE="$(python3 -c 'import tensorrt; print(tensorrt.__version__)')" \
 && python3 -m pip install ".[trt,gpu]" \
 && ORT_GPU="$(python3 -c 'from importlib.metadata import version; print(version("onnxruntime-gpu"))')" \
 && python3 -m pip uninstall -y onnxruntime \
 && python3 -m pip install --force-reinstall --no-deps "onnxruntime-gpu==${ORT_GPU}" \
 && python3 -c "import onnxruntime as o, tensorrt as t; p = o.get_available_providers(); \
assert {'CUDAExecutionProvider', 'TensorrtExecutionProvider'} <= set(p), p; \
assert t.__version__ == '${TRT_IMAGE}', ('pip replaced the image TensorRT', t.__version__); \
print('onnxruntime-gpu', o.__version__, p, '| tensorrt', t.__version__)" \
 && edgetl --help > /dev/null

RUN useradd --create-home --non-unique --uid "${EDGETL_UID}" --user-group edgetl \
 && mkdir -p /work/data /work/runs \
 && chown -R edgetl:edgetl /work

USER edgetl
WORKDIR /work
ENTRYPOINT ["edgetl"]
CMD ["--help"]
