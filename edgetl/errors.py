"""Library error hierarchy; the CLI maps each class to a one-line message and an exit code."""

from __future__ import annotations


class EdgetlError(Exception):
    """Base class: a failure the user can act on. ``exit_code`` follows DESIGN.md."""

    exit_code = 1


class UsageError(EdgetlError):
    """Bad or conflicting options, an unknown model name."""

    exit_code = 2


class DataError(EdgetlError):
    """A data set, image or calibration set that cannot be used."""

    exit_code = 3


class ArtifactError(EdgetlError):
    """An untrusted, corrupt or incompatible checkpoint, ONNX file or engine."""

    exit_code = 4


class TrainingError(EdgetlError):
    """Training could not go on (NaN loss, ...); the last good checkpoint is kept."""

    exit_code = 1
