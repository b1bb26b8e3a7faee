"""Library error hierarchy; the CLI maps each class to a one-line message and an exit code."""

from __future__ import annotations


class EdgetlError(Exception):
    """Base class: a failure the user can act on; the CLI exits with ``exit_code`` (README, "Failure modes")."""

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


class Interrupted(Exception):
    """SIGINT/SIGTERM arrived; ``exit_code`` is 128 + the signal number. Not an EdgetlError: it must pass
    the handlers that turn failures into messages, up to the command that saves and stops."""

    def __init__(self, signum: int) -> None:
        import signal

        super().__init__(f"interrupted by {signal.Signals(signum).name}")
        self.exit_code = 128 + signum
        self.hint = "the last complete epoch is in last.pt; continue with --resume"


class TrainingError(EdgetlError):
    """Training could not go on (NaN loss, ...); the last good checkpoint is kept."""

    exit_code = 1


def one_line(e: BaseException, limit: int = 300) -> str:
    """The reason an exception gives, on one line: what the CLI prints and what messages quote.

    DataLoader workers re-raise with the worker's traceback (the original message is its last line);
    PyTorch's ``load_state_dict`` puts its reason on the line after an "Error(s) in loading" header.
    """
    lines = [ln.strip() for ln in str(e).strip().splitlines() if ln.strip()]
    if not lines:
        return type(e).__name__
    if "Original Traceback" in str(e):
        last = lines[-1]
        return (last.split(": ", 1)[1] if ": " in last else last)[:limit]
    if lines[0].startswith("Error(s) in loading") and len(lines) > 1:
        return f"{lines[0]} {lines[1]}"[:limit]
    return lines[0][:limit]


def printable(text: str) -> str:
    """Control characters escaped (``\\n``, ``\\x1b``...): file names are data, and a name holding an
    escape sequence must not drive the terminal, nor a newline cut a one-line error."""
    return "".join(c if c.isprintable() or c == " " else repr(c)[1:-1] for c in text)
