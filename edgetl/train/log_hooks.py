"""Training progress through a library `Log`, for commands that train inside a bigger job (export --qat,
auto): a task per epoch ticked per step, and a line per finished epoch."""

from __future__ import annotations

from contextlib import ExitStack

from ..progress import Log
from .loop import Hooks


class LogHooks(Hooks):
    """``what`` names the epochs ("QAT epoch"); ``note`` follows the validation figure."""

    def __init__(self, log: Log, what: str = "epoch", note: str = "") -> None:
        self.log, self.what, self.note = log, what, note
        self.stack, self.tick = ExitStack(), None

    def _task(self, what: str, steps: int) -> None:
        self.stack.close()
        self.tick = self.stack.enter_context(self.log.task(what, steps))

    def preparing(self, what: str, steps: int) -> None:
        self._task(what, steps)

    def advance(self, n: int = 1) -> None:
        if self.tick is not None:
            self.tick(n)

    def epoch_start(self, epoch: int, epochs: int, steps: int) -> None:
        self._task(f"{self.what} {epoch}/{epochs}", steps)

    def step(self, loss: float, top1: float, images_per_s: float) -> None:
        self.advance()

    def validating(self, steps: int) -> None:
        self.stack.close()
        self.tick = None

    def epoch_end(self, row: dict[str, float]) -> None:
        self.log(f"{self.what} {int(row['epoch'])}: loss {row['train_loss']:.3f}, val top-1 {row['val_top1']:.2f}%"
                 f"{' ' + self.note if self.note else ''}, {row['seconds']:.0f} s")
