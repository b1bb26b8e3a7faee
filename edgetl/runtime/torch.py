"""PyTorch runner: a loaded model behind the same interface as the deployed backends, the reference
every artifact is judged against. It takes the model, it does not load it: loading a checkpoint
needs the model registry and the trainer's checkpoint format (`edgetl.evaluate.open_runner`), which
the runtime does not import."""

from __future__ import annotations

from typing import Any

import numpy as np


class TorchRunner:
    backend = "torch"
    precision = "fp32"

    def __init__(self, model: Any, *, device: str = "cpu", threads: int | None = None) -> None:
        import torch

        if threads:
            torch.set_num_threads(threads)
        self.device = device
        self._torch = torch
        self.model = model.to(device).eval()

    def run(self, x: np.ndarray) -> np.ndarray:
        t = self._torch
        with t.inference_mode():
            return self.model(t.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(self.device)).float().cpu().numpy()

    def close(self) -> None:
        self.model = None
