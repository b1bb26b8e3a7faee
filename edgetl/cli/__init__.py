"""The `edgetl` command line: thin Typer commands that parse, call one library function and print.
Heavy imports stay inside the commands, so `edgetl --help` starts without torch. Importing this
package registers every command on `app`, in pipeline order (the order `--help` lists them): the
training side's where it is installed (`TRAINING`), the deploy commands everywhere."""

# isort: off
from .app import TRAINING, app, main
if TRAINING:
    from . import train, auto, demo, export  # noqa: F401 (each registers its commands on app)
from . import deploy  # noqa: F401,E402
# isort: on

__all__ = ["app", "main"]
