"""Inference backends behind one small interface. Importing this package never imports torch or tensorrt."""

from .base import Runner, open_runner

__all__ = ["Runner", "open_runner"]
