"""How often does the latency gate fail a build that did not change? The same build, gated against itself.

    python benchmarks/gate_false_alarms.py runs/digits64 --trials 20 -- --backends torch,ort-fp32,ort-fp16,ort-int8

One baseline (``--save-baseline``), then ``--trials`` runs of ``edgetl bench RUN --baseline BASE`` with the
same arguments; every exit 1 is a false alarm. From the per-round medians each trial stores, the same
trials also say what other gates would have done: one round, the median of the rounds' medians, the
fastest round, or the fastest round that is also slower than every baseline round, each without the
re-check of suspect rows. Trials are also split by the CPU time other
processes took while they were timed (the report's ``contention``). The result is appended to benchmarks/RESULTS.md as its own section, with the
command, the date and the load average (the machine may be shared). ``$EDGETL`` names the command
(default ``python -m edgetl``).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from results_md import EDGETL, append_section, now, split_argv

from edgetl.bench.gate import RECHECKS
from edgetl.bench.gate import best_round_ms as gate_ms
from edgetl.bench.timing import BUSY, busy_share


def key(row: dict) -> tuple:
    return row["artifact"], row["backend"], row["precision"], row["batch_size"], row["device"]


def bench(run: str, extra: list[str], *flags: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*EDGETL, "bench", run, "--quiet", *extra, *flags], capture_output=True, text=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", help="Run folder to bench (its RUN/export artifacts).")
    ap.add_argument("--trials", type=int, default=20)
    ap.add_argument("--max-regression", type=float, default=0.10)
    ap.add_argument("--rounds", type=int, default=3, help="Rounds of the baseline and of every trial (the gate's default).")
    ap.add_argument("--no-record", action="store_true", help="Print the result, do not append it to RESULTS.md.")
    own, extra = split_argv(sys.argv[1:])
    args = ap.parse_args(own)
    extra += ["--max-regression", str(args.max_regression), "--rounds", str(args.rounds)]
    limit, rounds = args.max_regression, args.rounds
    started, load_before, t0 = now(), os.getloadavg(), time.time()
    with tempfile.TemporaryDirectory() as tmp:
        base_path = Path(tmp) / "baseline.json"
        r = bench(args.run, extra, "--save-baseline", str(base_path))
        if r.returncode != 0:
            sys.stderr.write(r.stderr)
            return r.returncode
        base_doc = json.loads(base_path.read_text())
        base = {key(row): row for row in base_doc["rows"] if row["status"] == "ok"}
        trials = []
        for i in range(args.trials):
            out = Path(tmp) / f"trial-{i}.json"
            r = bench(args.run, extra, "--baseline", str(base_path), "--json", str(out))
            if r.returncode not in (0, 1):
                sys.stderr.write(r.stderr)
                return r.returncode
            doc = json.loads(out.read_text())
            trials.append((r.returncode, doc))
            changes = [gate_ms(row) / gate_ms(base[key(row)]) - 1 for row in doc["rows"] if key(row) in base]
            print(f"trial {i + 1}/{args.trials}: exit {r.returncode}, largest change of the fastest round "
                  f"{max(changes):+.1%}, other processes took {busy_share(doc.get('contention')):.0%} of the CPU", flush=True)
    minutes = (time.time() - t0) / 60

    def over(trial_rows: list[dict], stat: str) -> bool:
        """Would a gate judging on ``stat`` over the first ``rounds`` rounds (no re-check) have failed?"""
        for row in trial_rows:
            b = base.get(key(row))
            if b is None or row["status"] != "ok":
                continue
            now_r, base_r = row["p50_rounds_ms"][:rounds], b["p50_rounds_ms"]
            if stat == "one":  # a one-round gate: the first round against the baseline's first round
                now_ms, base_ms = now_r[0], base_r[0]
            elif stat == "median":  # median of round medians
                now_ms, base_ms = statistics.median(now_r), statistics.median(base_r)
            else:  # fastest round ("best"), and for "gate" also slower than every baseline round
                now_ms, base_ms = min(now_r), min(base_r)
                if stat == "gate" and now_ms <= max(base_r):
                    continue
            if now_ms / base_ms - 1 > limit:
                return True
        return False

    n = len(trials)
    alarms = {stat: sum(over(d["rows"], stat) for _, d in trials) for stat in ("one", "median", "best", "gate")}
    alarms["exit"] = sum(rc == 1 for rc, _ in trials)
    quiet = [(rc, d) for rc, d in trials if busy_share(d.get("contention")) <= BUSY]
    per_row: dict[tuple, list[float]] = {}
    for _, doc in trials:
        for row in doc["rows"]:
            if key(row) in base and row["status"] == "ok":
                per_row.setdefault(key(row), []).append(gate_ms(row) / gate_ms(base[key(row)]) - 1)
    worst = max(max(v) for v in per_row.values())
    env = trials[0][1]["environment"]
    shares = [busy_share(d.get("contention")) for _, d in trials]
    lines = [
        f"Date: {started}, {minutes:.0f} min. Command: `python benchmarks/gate_false_alarms.py {shlex.join(sys.argv[1:])}` "
        f"(one `--save-baseline` run, then {n} runs of `edgetl bench {args.run} --baseline BASE "
        f"{shlex.join(extra)}`).",
        "",
        f"Machine: {env['cpu']['model']}, {env['cpu']['usable_cores']} cores, {env['cpu']['threads']} threads, "
        f"fingerprint {env['fingerprint']}; load average {load_before[0]:.1f} before, {os.getloadavg()[0]:.1f} after. "
        f"CPU time other processes took while the rows were timed (the report's `contention`): "
        f"{min(shares):.0%} to {max(shares):.0%} per trial, baseline {busy_share(base_doc.get('contention')):.0%}.",
        "",
        f"| gate (limit +{limit:.0%}) | false alarms |",
        "|---|---:|",
        f"| 1 round, no re-check | {alarms['one']}/{n} |",
        f"| {rounds} rounds, median of round medians, no re-check | {alarms['median']}/{n} |",
        f"| {rounds} rounds, fastest round, no re-check | {alarms['best']}/{n} |",
        f"| {rounds} rounds, fastest round that is also slower than every baseline round, no re-check | {alarms['gate']}/{n} |",
        f"| the same, and rows over the limit timed again up to {RECHECKS}x{rounds} more rounds "
        f"(what `edgetl bench --baseline` does) | **{alarms['exit']}/{n}** |",
        f"| the same, trials in which others took <= {BUSY:.0%} of the CPU | {sum(rc == 1 for rc, _ in quiet)}/{len(quiet)} |",
        "",
        "Change of each row's fastest round against the baseline's, over the trials (after any re-check):",
        "",
        "| row | median | min | max | trials over the limit |",
        "|---|---:|---:|---:|---:|",
    ]
    for k, v in per_row.items():
        lines.append(f"| {k[1]} {k[0]} batch {k[3]} | {statistics.median(v):+.1%} | {min(v):+.1%} | {max(v):+.1%} | "
                     f"{sum(c > limit for c in v)} |")
    lines += ["", f"Smallest `--max-regression` without a false alarm in these {n} trials: {worst:+.1%}."]
    body = "\n".join(lines)
    print(body)
    if not args.no_record:
        append_section(f"Gate false-alarm rate: the same build gated against itself {n} times", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
