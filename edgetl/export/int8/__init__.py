"""INT8 for TensorRT and ONNX Runtime: calibration (`calibrate`), Q/DQ placement and the INT8 share
(`qdq`), the shared hand-off (`job`), bias correction (`bias`), the accuracy guard (`guard`) and the
build that runs them in order (`build`)."""
