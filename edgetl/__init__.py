"""edgetl: fine-tune a pretrained CNN, export verified ONNX/INT8/TensorRT artifacts, benchmark them."""

__version__ = "0.1.0"
