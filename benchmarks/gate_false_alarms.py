"""How often does the latency gate fail a build that did not change? The same build, gated against itself.

    python benchmarks/gate_false_alarms.py runs/digits64 --trials 20 -- --backends torch,ort-fp32,ort-fp16,ort-int8

One baseline (``--save-baseline``), then ``--trials`` runs of ``edgetl bench RUN --baseline BASE`` with the
same arguments; every exit 1 is a false alarm. From the per-round medians each trial stores, the same
trials also say what a weaker gate would have done: one round and no re-check, or the rounds without the
re-check of suspect rows. The result is appended to benchmarks/RESULTS.md as its own section, with the
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
        base = {key(row): row for row in json.loads(base_path.read_text())["rows"] if row["status"] == "ok"}
        trials = []
        for i in range(args.trials):
            out = Path(tmp) / f"trial-{i}.json"
            r = bench(args.run, extra, "--baseline", str(base_path), "--json", str(out))
            if r.returncode not in (0, 1):
                sys.stderr.write(r.stderr)
                return r.returncode
            doc = json.loads(out.read_text())
            trials.append((r.returncode, doc))
            changes = [row["p50_ms"] / base[key(row)]["p50_ms"] - 1 for row in doc["rows"] if key(row) in base]
            print(f"trial {i + 1}/{args.trials}: exit {r.returncode}, largest p50 change {max(changes):+.1%}, "
                  f"load {os.getloadavg()[0]:.1f}", flush=True)
    minutes = (time.time() - t0) / 60

    def over(trial_rows: list[dict], stat: str) -> bool:
        """Would the gate have failed this trial had it judged on ``stat``?"""
        for row in trial_rows:
            b = base.get(key(row))
            if b is None or row["status"] != "ok":
                continue
            if stat == "one":  # a one-round gate: the first round against the baseline's first round
                now_p50, base_p50 = row["p50_rounds_ms"][0], b["p50_rounds_ms"][0]
            else:  # the rounds, without the re-check of suspect rows
                now_p50, base_p50 = statistics.median(row["p50_rounds_ms"][:rounds]), b["p50_ms"]
            if now_p50 / base_p50 - 1 > limit:
                return True
        return False

    n = len(trials)
    alarms = {"one": sum(over(d["rows"], "one") for _, d in trials),
              "rounds": sum(over(d["rows"], "rounds") for _, d in trials),
              "gate": sum(rc == 1 for rc, _ in trials)}
    per_row: dict[tuple, list[float]] = {}
    for _, doc in trials:
        for row in doc["rows"]:
            if key(row) in base and row["status"] == "ok":
                per_row.setdefault(key(row), []).append(row["p50_ms"] / base[key(row)]["p50_ms"] - 1)
    worst = max(max(v) for v in per_row.values())
    env = trials[0][1]["environment"]
    lines = [
        f"Date: {started}, {minutes:.0f} min. Command: `python benchmarks/gate_false_alarms.py {shlex.join(sys.argv[1:])}` "
        f"(one `--save-baseline` run, then {n} runs of `edgetl bench {args.run} --baseline BASE "
        f"{shlex.join(extra)}`).",
        "",
        f"Machine: {env['cpu']['model']}, {env['cpu']['usable_cores']} cores, {env['cpu']['threads']} threads, "
        f"fingerprint {env['fingerprint']}; load average {load_before[0]:.1f} before, {os.getloadavg()[0]:.1f} after "
        "(the machine was shared with other jobs).",
        "",
        f"| gate (limit +{limit:.0%} on p50) | false alarms |",
        "|---|---:|",
        f"| 1 round, no re-check | {alarms['one']}/{n} |",
        f"| {rounds} rounds, median of round medians, no re-check | {alarms['rounds']}/{n} |",
        f"| {rounds} rounds, then {rounds} more for rows over the limit (what `edgetl bench --baseline` does) | "
        f"**{alarms['gate']}/{n}** |",
        "",
        "p50 change against the baseline, per row, over the trials (final p50, after any re-check):",
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
