"""TensorRT engines made here: the builder behind `edgetl build` and export, and its INT8 calibrator."""
