"""Inference backends behind one small interface. Importing this package never imports torch or tensorrt."""

from .base import Runner, open_runner
from .predictor import Prediction, Predictor

__all__ = ["Prediction", "Predictor", "Runner", "open_runner"]
