"""The `edgetl` command line: thin Typer commands that parse, call one library function and print.
Heavy imports stay inside the commands, so `edgetl --help` starts without torch. Importing this
package registers every command on `app`, in pipeline order (the order `--help` lists them)."""

# isort: off
from .app import app, main
from . import train, auto, demo, export, deploy  # noqa: F401 (each registers its commands on app)
# isort: on

__all__ = ["app", "main"]
