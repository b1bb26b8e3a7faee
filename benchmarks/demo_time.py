"""`edgetl demo` wall time of this tree against another revision, side by side in one run.

Both run from the same virtualenv, alternating (base, this, base, this, ...) so that a slow spell of a
shared machine hits both; prints each time, the medians and the ratio this / base.

    python benchmarks/demo_time.py --base 7b3094b --runs 2
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def demo_seconds(tree: Path, out: Path) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "edgetl", "demo", "--out", str(out)], cwd=tree, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # -m: the tree's own edgetl comes first
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", required=True, help="git revision to compare against")
    ap.add_argument("--runs", type=int, default=2)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="edgetl-demo-time-") as tmp:
        base = Path(tmp) / "base"
        subprocess.run(["git", "worktree", "add", "--detach", str(base), args.base], cwd=ROOT, check=True,
                       capture_output=True)
        try:
            times: dict[str, list[float]] = {"base": [], "this": []}
            for i in range(args.runs):
                for name, tree in (("base", base), ("this", ROOT)):
                    secs = demo_seconds(tree, Path(tmp) / f"{name}-{i}")
                    times[name].append(secs)
                    print(f"run {i + 1} {name}: {secs:.1f} s", flush=True)
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(base)], cwd=ROOT, check=True)
    b, t = statistics.median(times["base"]), statistics.median(times["this"])
    print(f"median: base {args.base} {b:.1f} s, this tree {t:.1f} s, ratio this/base {t / b:.2f}")


if __name__ == "__main__":
    main()
