"""The files edgetl writes and reads back, one typed reader each: run.json (`run`), manifest.json
and artifact names (`manifest`), engine provenance records (`engine`), and which record describes
a given artifact (`record`). Torch-free and TensorRT-free: the deploy runtime reads these too."""
