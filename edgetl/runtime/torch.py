"""PyTorch runner: the original fine-tuned model (best.pt), the reference every artifact is judged against."""

from __future__ import annotations

from pathlib import Path

import numpy as np


class TorchRunner:
    backend = "torch"
    precision = "fp32"

    def __init__(self, path: Path, *, device: str = "cpu", threads: int | None = None) -> None:
        import torch

        from ..evaluate import load_run_model

        path = Path(path)
        run, ck = (path.parent, path.name) if path.suffix == ".pt" else (path, "best.pt")
        if threads:
            torch.set_num_threads(threads)
        self.device = device
        self._torch = torch
        self.model = load_run_model(run, ck).model.to(device).eval()

    def run(self, x: np.ndarray) -> np.ndarray:
        t = self._torch
        with t.inference_mode():
            return self.model(t.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(self.device)).float().cpu().numpy()

    def close(self) -> None:
        self.model = None
