#!/usr/bin/env bash
# Latency and accuracy regression gate for CI: bench a run's artifacts against a committed baseline.
#
#   benchmarks/ci/latency-gate.sh RUN BASELINE [more `edgetl bench` options...]
#
#   RUN        run folder whose RUN/export holds this build's artifacts (engines built on this machine)
#   BASELINE   committed baseline, e.g. benchmarks/baselines/<machine>-<model>.json
#
# Exit 0: no row regressed. Exit 1: a row's fastest round grew by more than MAX_REGRESSION and is
# slower than every baseline round, its top-1 fell by more than MAX_DROP points, or it ran in the
# baseline and does not run now (the offending rows are printed). Other codes are edgetl's (2 usage,
# 3 data, 4 artifact). PyTorch rows are the noisiest; to gate only the deployed artifacts pass e.g.
# `--backends ort-fp32,ort-int8` or `--backends trt-fp16,trt-int8`.
# A missing BASELINE is recorded from this run (commit it) and the gate passes with a warning. A
# baseline from another machine (its fingerprint differs) compares nothing: `edgetl bench` exits 5,
# which this script turns into a warning, or with STRICT=1 into a failure (exit 5).
#
# Environment: EDGETL (command, default `edgetl`), OUT_DIR (default bench-out: bench.json, bench.md),
# MAX_REGRESSION (0.10), MAX_DROP (1.0), ROUNDS (3), STRICT (0).
# On GitHub Actions the markdown table goes to the job summary and warnings become annotations.
set -euo pipefail

if [[ $# -lt 2 ]]; then
  sed -n '2,20p' "$0" >&2
  exit 2
fi
run=$1 baseline=$2
shift 2
read -r -a edgetl <<<"${EDGETL:-edgetl}"
out=${OUT_DIR:-bench-out}

mkdir -p "$out"

warn() { if [[ -n ${GITHUB_ACTIONS:-} ]]; then echo "::warning::$*"; else echo "warning: $*" >&2; fi; }
fail() { if [[ -n ${GITHUB_ACTIONS:-} ]]; then echo "::error::$*"; else echo "error: $*" >&2; fi; }
summary() {
  if [[ -n ${GITHUB_STEP_SUMMARY:-} && -f $out/bench.md ]]; then
    cat "$out/bench.md" >>"$GITHUB_STEP_SUMMARY"
  fi
}

bench=("${edgetl[@]}" bench "$run" --json "$out/bench.json" --markdown "$out/bench.md" --rounds "${ROUNDS:-3}" "$@")

if [[ ! -f $baseline ]]; then
  "${bench[@]}" --save-baseline "$baseline"
  summary
  warn "no baseline at $baseline: recorded one from this run; commit it so that later runs are gated"
  exit 0
fi

rc=0
"${bench[@]}" --baseline "$baseline" --max-regression "${MAX_REGRESSION:-0.10}" --max-drop "${MAX_DROP:-1.0}" || rc=$?
summary
if [[ $rc -eq 5 ]]; then
  msg="the gate compared no row with $baseline (recorded on another machine, or other artifacts); see $out/bench.md"
  if [[ ${STRICT:-0} == 1 ]]; then
    fail "$msg"
    exit 5
  fi
  warn "$msg"
  exit 0
elif [[ $rc -eq 1 ]]; then
  fail "latency or accuracy regression against $baseline; the offending rows are listed above and in $out/bench.md"
fi
exit $rc
