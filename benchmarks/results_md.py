"""Record an `edgetl bench` run in benchmarks/RESULTS.md: the command, the date, the markdown table.

    python benchmarks/results_md.py "Demo run: Lite0 on digits, 64 px" -- runs/digits64 --roofline

Everything after ``--`` goes to `edgetl bench` as is (``$EDGETL`` names the command, default
``python -m edgetl``). The section is appended under its own
``## heading``; other sections of the file (other people's) are left as they are. The JSON report is
kept next to RESULTS.md as ``results/<slug>.json`` so the numbers can be re-read later.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

from edgetl.fileio import atomic_write_json, atomic_write_text

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "RESULTS.md"
EDGETL = shlex.split(os.environ.get("EDGETL", f"{shlex.quote(sys.executable)} -m edgetl"))
TITLE = "# Benchmark results\n\nMeasured with the commands shown; each section is appended by the script named in it.\n"


def append_section(heading: str, body: str, path: Path = RESULTS) -> None:
    """Add ``## heading`` and ``body`` at the end of the file, creating it with a title when absent."""
    text = path.read_text() if path.exists() else TITLE
    atomic_write_text(path, text.rstrip("\n") + f"\n\n## {heading}\n\n{body.strip()}\n")


def split_argv(argv: list[str]) -> tuple[list[str], list[str]]:
    """This script's arguments, and the ones after ``--`` that go to `edgetl bench`."""
    if "--" not in argv:
        return argv, []
    i = argv.index("--")
    return argv[:i], argv[i + 1:]


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:60]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("heading", help="Section heading in RESULTS.md.")
    ap.add_argument("--note", default="", help="A paragraph to put under the table.")
    own, bench_args = split_argv(sys.argv[1:])
    args = ap.parse_args(own)
    with tempfile.TemporaryDirectory() as tmp:
        md, js = Path(tmp) / "bench.md", Path(tmp) / "bench.json"
        cmd = [*EDGETL, "bench", *bench_args, "--markdown", str(md), "--json", str(js)]
        started = now()
        r = subprocess.run(cmd, stdout=sys.stdout, stderr=sys.stderr)
        if r.returncode not in (0, 1) or not md.exists():
            print(f"edgetl bench exited with {r.returncode}; nothing recorded", file=sys.stderr)
            return r.returncode or 1
        table = md.read_text()
        atomic_write_json(HERE / "results" / f"{slug(args.heading)}.json", json.loads(js.read_text()))
    shown = "edgetl bench " + shlex.join(bench_args)
    body = (f"Date: {started}. Command: `{shown}` (JSON: `benchmarks/results/{slug(args.heading)}.json`).\n\n"
            f"{table}\n{args.note}")
    append_section(args.heading, body)
    print(f"appended '{args.heading}' to {RESULTS}")
    return r.returncode


if __name__ == "__main__":
    sys.exit(main())
