"""`edgetl export`: its options (`config`), FP32 ONNX (`onnx`), FP16 (`fp16`), INT8 (`int8/`) and the
pipeline that makes and verifies them all and writes manifest.json (`pipeline`)."""
