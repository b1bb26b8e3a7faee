"""edgetl: fine-tune a pretrained CNN, export verified ONNX/INT8/TensorRT artifacts, benchmark them."""

import importlib.util

__version__ = "0.1.0"

# The distribution installed: the full `edgetl`, or `edgetl-runtime` (the deploy side for Python 3.8+,
# built from this tree without the training packages). Install hints name the one to extend.
DISTRIBUTION = "edgetl" if importlib.util.find_spec(f"{__name__}.train") is not None else "edgetl-runtime"
