"""Top-1/top-5 and confusion counting shared by `eval`, export's accuracy guard and `bench`."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class EvalResult:
    top1: float  # percent
    top5: float  # percent (top-k with k = min(5, classes))
    loss: float  # mean cross-entropy, NaN where not computed
    confusion: np.ndarray  # [true, predicted] counts

    def per_class(self) -> list[float]:
        totals = np.maximum(self.confusion.sum(1), 1)
        return (100.0 * np.diag(self.confusion) / totals).tolist()

    @property
    def images(self) -> int:
        return int(self.confusion.sum())


class Scorer:
    """Accumulates logits batch by batch; numpy only, so torch-free backends can use it."""

    def __init__(self, num_classes: int) -> None:
        self.k = min(5, num_classes)
        self.conf = np.zeros((num_classes, num_classes), dtype=np.int64)
        self.topk_hits = 0
        self.loss_sum = 0.0
        self.n = 0

    def update(self, logits: np.ndarray, labels: np.ndarray) -> None:
        logits = np.asarray(logits, dtype=np.float64)
        labels = np.asarray(labels, dtype=np.int64)
        top = np.argsort(-logits, axis=1, kind="stable")[:, : self.k]
        self.topk_hits += int((top == labels[:, None]).any(1).sum())
        np.add.at(self.conf, (labels, top[:, 0]), 1)
        z = logits - logits.max(1, keepdims=True)
        logp = z - np.log(np.exp(z).sum(1, keepdims=True))
        self.loss_sum += float(-logp[np.arange(len(labels)), labels].sum())
        self.n += len(labels)

    def state(self) -> np.ndarray:
        """Everything ``result`` needs, as one float64 vector (to sum across processes)."""
        return np.concatenate([self.conf.ravel().astype(np.float64), [self.topk_hits, self.loss_sum, self.n]])

    def merge(self, total: np.ndarray) -> None:
        """Replace the counts with ``total``, the sum of every process's ``state()``."""
        k = self.conf.size
        self.conf = total[:k].round().astype(np.int64).reshape(self.conf.shape)
        self.topk_hits, self.loss_sum, self.n = int(round(total[k])), float(total[k + 1]), int(round(total[k + 2]))

    def result(self) -> EvalResult:
        if self.n == 0:
            from .errors import DataError

            raise DataError("the evaluation set is empty")
        return EvalResult(100.0 * float(np.trace(self.conf)) / self.n, 100.0 * self.topk_hits / self.n,
                          self.loss_sum / self.n, self.conf)
