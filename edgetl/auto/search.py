"""`edgetl auto`: an Optuna study over model x strategy x input size x learning rate, each trial a normal
`edgetl finetune` run in OUT/trials/NNN, cheap trials cut after an epoch by successive halving; then the
best trials are exported to the deployment target and timed with `edgetl bench`'s own timing, and the
most accurate one within --max-latency-ms becomes OUT/winner.

The study lives in OUT/auto.db (SQLite), so Ctrl-C keeps every finished trial and `--resume` goes on
with the same sampler. The wall-clock budget covers the search and the finalists: trials stop at the
deadline less the time the finalists are expected to take.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import extras
from ..errors import EdgetlError, Interrupted, UsageError, one_line
from ..fileio import atomic_write_json, folder_lock
from ..progress import Log, as_log
from ..train.log_hooks import LogHooks
from ..train.loop import Signals
from .config import OFFLINE, OFFLINE_MODELS, AutoConfig

STUDY = "edgetl-auto"
EXPORT_SHARE = 0.25  # of the budget kept for the finalists' export and timing until a finalist has been timed
FAILS_IN_A_ROW = 3
RESUMABLE = ("time_budget", "trials", "finalists", "max_latency_ms")  # may change on --resume


class BudgetSpent(Exception):
    """The trial ran into the search's deadline: it stops like a pruned one."""


@dataclass
class Outcome:
    out: str
    trials: list[dict[str, Any]]
    finalists: list[dict[str, Any]]
    winner: dict[str, Any] | None
    why: str
    notes: list[str] = field(default_factory=list)


def auto(cfg: AutoConfig, resume: bool = False, log: Log | None = None) -> Outcome:
    cfg.validate()
    extras.require("optuna", "auto", "edgetl auto")
    log = as_log(log)
    out = cfg.out_dir
    start = time.monotonic()
    with folder_lock(out, "auto"):
        db = out / "auto.db"
        if resume and not db.exists():
            raise UsageError(f"{out}: no search to resume (no auto.db)")
        if not resume and db.exists():
            raise UsageError(f"{out}: already holds a search; pass --resume to continue it, or another --out")
        proxy = _latency_proxy(cfg)  # a limit that cannot be measured here is refused before any work
        _preflight(cfg, log)  # before auto.db exists: data it refuses leaves nothing to --resume
        study = _study(cfg, db, resume)
        models = _candidates(cfg, study, log)
        deadline = start + cfg.budget_seconds
        _search(cfg, study, out, deadline, log, models)
        trials = [_trial_record(t) for t in study.trials]
        finalists = _finalists(cfg, trials, deadline, log, proxy)
        winner, why = _choose(cfg, finalists, proxy)
        outcome = Outcome(str(out), trials, finalists, winner, why)
        if winner is not None:
            _crown(out, winner, why)
        else:
            outcome.notes.append(why)
        atomic_write_json(out / "auto.json", {"config": cfg.to_dict(), "models": models, "trials": trials,
                                              "finalists": finalists,
                                              "winner": winner, "why": why, "latency_proxy": proxy,
                                              "seconds": round(time.monotonic() - start, 1)})
        from .. import plots

        if plots.available() and finalists:
            plots.pareto(finalists, winner, cfg.target, out / "pareto.png", by_gflops=proxy is not None)
        elif finalists:
            outcome.notes.append(f"pareto.png not drawn: matplotlib is not installed ({plots.INSTALL_HINT})")
    return outcome


def _study(cfg: AutoConfig, db: Path, resume: bool) -> Any:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)  # failed trials get one line here, not its tracebacks
    db.parent.mkdir(parents=True, exist_ok=True)
    study = optuna.create_study(
        study_name=STUDY, storage=f"sqlite:///{db}", load_if_exists=resume, direction="maximize",
        sampler=optuna.samplers.TPESampler(seed=cfg.seed),
        pruner=optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=3))
    fixed = {k: v for k, v in cfg.to_dict().items() if k not in RESUMABLE}
    if resume:
        saved = study.user_attrs.get("config", {})
        changed = sorted(k for k in fixed if saved.get(k) != fixed[k])
        if changed:
            raise UsageError(f"{db}: --resume continues the search as it began; {', '.join(changed)} differ "
                             f"(only {', '.join(RESUMABLE)} may change)")
    else:
        study.set_user_attr("config", fixed)
    return study


def _candidates(cfg: AutoConfig, study: Any, log: Log) -> list[str]:
    """The models the study samples: the ones named, or for ``offline`` the bundled ones and every model
    of `edgetl models` whose ImageNet weights are cached here. Resolved once, kept in the study, and
    reused by --resume (the sampler's choices cannot change within a study)."""
    saved = study.user_attrs.get("models")
    if saved:
        return list(saved)
    if cfg.model_list != [OFFLINE]:
        models = cfg.model_list
    else:
        from ..models import EDGE_MODELS, offline_available, resolve

        cached = [] if cfg.weights == "none" else [
            n for n in EDGE_MODELS if n not in OFFLINE_MODELS and offline_available(resolve(n))]
        models = [*OFFLINE_MODELS, *cached]
        log(f"candidate models: {', '.join(OFFLINE_MODELS)} (bundled)"
            + (f" and {', '.join(cached)} (weights cached here)" if cached else "; no other cached weights found"))
    study.set_user_attr("models", models)
    return models


def _preflight(cfg: AutoConfig, log: Log) -> None:
    """finetune's data check, once before any trial: data it refuses stops the search before it starts,
    and what it would leave out is said once (each trial then leaves it out, as finetune does)."""
    from ..data.check import check_data
    from ..data.sources import BUILTIN_SOURCES

    if cfg.data in BUILTIN_SOURCES:
        return
    report = check_data(Path(cfg.data), val_split=cfg.val_split)
    report.raise_for(strict=False)
    for line in report.lines(5) if report.findings else []:
        log(line)


def _search(cfg: AutoConfig, study: Any, out: Path, deadline: float, log: Log, models: list[str]) -> None:
    import optuna
    import torch

    counted = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)  # an interrupted one is not
    done = len([t for t in study.trials if t.state in counted])
    left = None if cfg.trials is None else max(0, cfg.trials - done)
    if left == 0:
        log(f"{done} trial(s) already in {out / 'auto.db'}; none left to run (--trials {cfg.trials})")
        return
    stop_at = deadline - EXPORT_SHARE * cfg.budget_seconds
    objective = _Objective(cfg, out, stop_at, log, models)

    def progress(study: Any, trial: Any) -> None:
        best = _best(study)
        failed = f" ({trial.user_attrs['error']})" if trial.user_attrs.get("error") else ""
        state = "stopped by the time budget" if trial.user_attrs.get("stopped") else trial.state.name.lower()
        log(f"trial {trial.number} {state}{failed}: {_describe(trial.params)}"
            f"{f', val top-1 {trial.value:.2f}%' if trial.value is not None else ''}; "
            f"{len(study.trials)} trial(s), best {best}; {max(0.0, deadline - time.monotonic()) / 60:.1f} min left")

    def give_up(study: Any, trial: Any) -> None:  # the same error each time: the rest of the budget would go alike
        last = study.trials[-FAILS_IN_A_ROW:]
        if len(last) == FAILS_IN_A_ROW and all(t.state == optuna.trial.TrialState.FAIL for t in last):
            log(f"the last {FAILS_IN_A_ROW} trials failed; stopping the search")
            study.stop()

    try:
        with Signals():  # SIGTERM between trials stops as cleanly as one during training
            study.optimize(objective, n_trials=left, timeout=max(1.0, stop_at - time.monotonic()),
                           catch=(EdgetlError, torch.OutOfMemoryError, MemoryError), callbacks=[progress, give_up],
                           gc_after_trial=True)
    except Interrupted as e:
        e.hint = (f"finished trials are kept in {out / 'auto.db'}; continue with `edgetl auto ... --resume` "
                  "and the same settings")
        raise
    if not any(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials):
        raise EdgetlError(f"{out}: no trial finished within --time-budget {cfg.time_budget}; give it more time "
                          "or smaller --img-sizes")


class _Objective:
    """One trial: sample, fine-tune in OUT/trials/NNN, report each epoch's val top-1 to the pruner."""

    def __init__(self, cfg: AutoConfig, out: Path, stop_at: float, log: Log, models: list[str]) -> None:
        self.cfg, self.out, self.stop_at, self.log, self.models = cfg, out, stop_at, log, models

    def __call__(self, trial: Any) -> float:
        import optuna

        from ..train.loop import finetune

        cfg = self.cfg
        params = {"model": trial.suggest_categorical("model", self.models),
                  "strategy": trial.suggest_categorical("strategy", cfg.strategy_list),
                  "img_size": trial.suggest_categorical("img_size", cfg.size_list),
                  "lr": trial.suggest_float("lr", cfg.lr_min, cfg.lr_max, log=True)}
        folder = self.out / "trials" / f"{trial.number:03d}"
        trial.set_user_attr("folder", str(folder.relative_to(self.out)))
        if folder.exists():  # a trial that an interrupt cut short: its number is new, its folder is stale
            shutil.rmtree(folder)
        tcfg = _train_config(cfg, params, folder)
        hooks = _TrialHooks(self.log, trial, self.stop_at)
        t0 = time.monotonic()
        try:
            summary = finetune(tcfg, hooks=hooks)  # bad files are left out, as the preflight listed
        except BudgetSpent:
            trial.set_user_attr("stopped", "time budget")
            raise optuna.TrialPruned() from None
        except optuna.TrialPruned:
            raise
        except Exception as e:  # recorded; the search goes on, unless it was an interrupt
            trial.set_user_attr("error", one_line(e))
            raise
        finally:
            trial.set_user_attr("seconds", round(time.monotonic() - t0, 1))
        trial.set_user_attr("epochs", summary.epochs)
        trial.set_user_attr("val_top5", summary.val_top5)
        return summary.val_top1


class _TrialHooks(LogHooks):
    """Progress as LogHooks draws it; each epoch's val top-1 goes to the pruner, and the trial stops at the
    search's deadline."""

    def __init__(self, log: Log, trial: Any, stop_at: float) -> None:
        super().__init__(log, f"trial {trial.number} epoch")
        self.trial, self.stop_at = trial, stop_at

    def step(self, loss: float, top1: float, images_per_s: float) -> None:
        super().step(loss, top1, images_per_s)
        if time.monotonic() > self.stop_at:  # an epoch of a big candidate can take minutes
            raise BudgetSpent()

    def epoch_end(self, row: dict[str, float]) -> None:
        import optuna

        super().epoch_end(row)
        epoch = int(row["epoch"])
        self.trial.report(row["val_top1"], epoch)
        self.trial.set_user_attr("epochs", epoch)
        self.trial.set_user_attr("last_val_top1", row["val_top1"])
        if self.trial.should_prune():
            raise optuna.TrialPruned()
        if time.monotonic() > self.stop_at:
            raise BudgetSpent()


def _train_config(cfg: AutoConfig, params: dict[str, Any], folder: Path) -> Any:
    from ..train.config import TrainConfig

    strategy = params["strategy"]
    unfreeze = int(strategy[len("partial"):]) if strategy.startswith("partial") else 2
    return TrainConfig(data=cfg.data, out=str(folder), model=params["model"], weights=cfg.weights,
                       img_size=params["img_size"], strategy="partial" if strategy.startswith("partial") else strategy,
                       unfreeze=unfreeze, epochs=cfg.epochs, lr=params["lr"], batch_size=cfg.batch_size,
                       val_split=cfg.val_split, cache=cfg.cache, workers=cfg.workers, seed=cfg.seed)


def _describe(params: dict[str, Any]) -> str:
    if not params:
        return "(no parameters)"
    return f"{params['model']} {params['strategy']} {params['img_size']}px lr {params['lr']:.2g}"


def _best(study: Any) -> str:
    try:
        t = study.best_trial
    except ValueError:
        return "none yet"
    return f"{t.value:.2f}% (trial {t.number}: {_describe(t.params)})"


def _trial_record(t: Any) -> dict[str, Any]:
    return {"number": t.number, "state": t.state.name.lower(), "params": t.params, "val_top1": t.value,
            "epochs": t.user_attrs.get("epochs"), "seconds": t.user_attrs.get("seconds"),
            "folder": t.user_attrs.get("folder"), "stopped": t.user_attrs.get("stopped"),
            "last_val_top1": t.user_attrs.get("last_val_top1"), "error": t.user_attrs.get("error")}


def _latency_proxy(cfg: AutoConfig) -> str | None:
    """None when finalists are timed as ``cfg.target`` here; for a TensorRT target where TensorRT cannot
    run, what ranks them instead and why (--max-latency-ms, which needs a measurement, is then refused)."""
    if not cfg.target.startswith("trt-"):
        return None
    from ..runtime.tensorrt import available

    ok, why = available()
    if ok:
        return None
    proxy = f"GFLOPs per image (FP32 ONNX), since TensorRT cannot run here: {why}"
    if cfg.max_latency_ms is not None:
        raise UsageError(f"--max-latency-ms needs the finalists timed as {cfg.target}, and TensorRT cannot run here "
                         f"({why}); without it they are ranked by top-1, with {proxy.split(',')[0]} shown as the "
                         "latency proxy: drop --max-latency-ms, or run auto where TensorRT runs")
    return proxy


def _finalists(cfg: AutoConfig, trials: list[dict[str, Any]], deadline: float, log: Log,
               proxy: str | None = None) -> list[dict[str, Any]]:
    """The best finished trials, exported to the target artifact and timed by `edgetl bench`; past the
    deadline, once one has been timed, the rest are left out.

    With --max-latency-ms, trials are taken in accuracy order until ``cfg.finalists`` of them fit the
    limit, and a trial is left out unexported when its model at its input size or a smaller one was
    already timed over the limit: latency depends on the model and the input size, not on the
    strategy or the learning rate, and grows with the size."""
    def score(t: dict[str, Any]) -> float | None:  # a trial the deadline cut still has the best.pt of its epochs
        if t["state"] == "complete":
            return t["val_top1"]
        return t["last_val_top1"] if t["stopped"] == "time budget" and t["epochs"] else None

    done = sorted((t for t in trials if score(t) is not None), key=lambda t: -score(t))  # type: ignore[operator]
    finalists: list[dict[str, Any]] = []
    over: dict[str, dict[str, Any]] = {}  # model -> the timed finalist at the smallest size found over the limit
    for t in done:
        if sum(f.get("status") == "ok" and not _over(cfg, f) for f in finalists) >= cfg.finalists:
            break
        run = Path(cfg.out_dir) / t["folder"]
        entry = {"trial": t["number"], "params": t["params"], "val_top1": score(t), "run": t["folder"],
                 "epochs": t["epochs"]}
        slow = over.get(t["params"]["model"])
        if slow is not None and t["params"]["img_size"] >= slow["params"]["img_size"]:
            finalists.append({**entry, "status": f"skipped: trial {slow['trial']}, the same model at "
                                                 f"{slow['params']['img_size']} px, took {slow['latency_ms']:.2f} ms, "
                                                 f"over --max-latency-ms {cfg.max_latency_ms:g}"})
            continue
        if time.monotonic() > deadline and any(f.get("status") == "ok" for f in finalists):
            finalists.append({**entry, "status": "skipped: time budget spent"})
            continue
        log(f"finalist: trial {t['number']} ({_describe(t['params'])}, val top-1 {entry['val_top1']:.2f}%): exporting "
            f"and {'scoring' if proxy else 'timing'} as {cfg.target}")
        try:
            entry.update(_measure(cfg, run, log, proxy))
        except EdgetlError as e:
            entry.update(status=f"failed: {e}")
            log(f"  trial {t['number']} left out: {e}")
        finalists.append(entry)
        if entry.get("status") == "ok" and _over(cfg, entry):
            model = t["params"]["model"]
            if model not in over or t["params"]["img_size"] < over[model]["params"]["img_size"]:
                over[model] = entry
            log(f"  {entry['latency_ms']:.2f} ms: over --max-latency-ms {cfg.max_latency_ms:g}")
    return finalists


def _over(cfg: AutoConfig, finalist: dict[str, Any]) -> bool:
    return cfg.max_latency_ms is not None and finalist["latency_ms"] is not None and \
        finalist["latency_ms"] > cfg.max_latency_ms


# The artifact each target deploys, and the ONNX Runtime row that scores it where TensorRT cannot run.
TARGET_FILES = {"ort-int8": "model.int8-cpu.onnx", "ort-fp32": "model.onnx", "trt-int8": "model.int8.engine",
                "trt-fp16": "model.fp16.engine"}
PROXY_ROWS = {"trt-int8": ("ort-int8", "model.int8.onnx"), "trt-fp16": ("ort-fp16", "model.fp16.onnx")}


def _measure(cfg: AutoConfig, run: Path, log: Log, proxy: str | None = None) -> dict[str, Any]:
    """Export the finalist to its target and time it with `edgetl bench`; under a proxy, score the ONNX the
    engine would be built from (the TensorRT-layout INT8 file judged in float simulation, or the FP16
    file) and count its FLOPs instead of timing."""
    from ..bench.config import BenchConfig
    from ..bench.session import run_bench
    from ..export.config import ExportConfig
    from ..export.pipeline import export

    trt = cfg.target.startswith("trt-")
    int8 = cfg.target in ("ort-int8", "trt-int8")
    export(ExportConfig(run=str(run), int8=int8, int8_cpu=cfg.target == "ort-int8", fp16=cfg.target == "trt-fp16",
                        engine=trt and proxy is None, max_drop=cfg.max_drop, seed=cfg.seed), log=log)
    backend, artifact = PROXY_ROWS[cfg.target] if proxy else (cfg.target, TARGET_FILES[cfg.target])
    report = run_bench(BenchConfig(targets=[str(run)], backends=(backend,), batch_sizes=(cfg.batch_size_deploy,),
                                   e2e=False, rounds=1 if proxy else 3, iters=5 if proxy else None,
                                   min_seconds=None if proxy else 0.5))
    row = next((r for r in report.rows if r["artifact"] == artifact and str(r["status"]).startswith("ok")), None)
    if row is None:
        why = next((r["status"] for r in report.rows if r["artifact"] == artifact), "no such artifact")
        raise EdgetlError(f"{run}: {cfg.target} was not {'scored' if proxy else 'timed'} ({why})")
    out = {"status": "ok", "artifact": row["artifact"], "latency_ms": None if proxy else row["p50_ms"],
           "top1": row["top1"], "numerics": row["numerics"], "batch_size": cfg.batch_size_deploy}
    if proxy:
        from ..roofline import count_flops

        out["gflops"] = round(count_flops(run / "export" / "model.onnx").flops / 1e9, 4)
    return out


def _choose(cfg: AutoConfig, finalists: list[dict[str, Any]],
            proxy: str | None = None) -> tuple[dict[str, Any] | None, str]:
    timed = [f for f in finalists if f.get("status") == "ok"]
    if not timed:
        return None, f"no finalist could be exported and {'scored' if proxy else 'timed'}"
    if proxy:
        best = max(timed, key=lambda f: (f["top1"], -f["gflops"]))
        return best, (f"highest {cfg.target} top-1 ({best['top1']:.2f}%, {best['numerics']}, from its ONNX) of "
                      f"{len(timed)} finalist(s); not timed: ranked with {proxy} ({best['gflops']:.3f} GFLOPs)")
    fits = [f for f in timed if cfg.max_latency_ms is None or f["latency_ms"] <= cfg.max_latency_ms]
    for f in timed:
        f["within_latency"] = f in fits
    if not fits:
        fastest = min(timed, key=lambda f: f["latency_ms"])
        return None, (f"no finalist is within --max-latency-ms {cfg.max_latency_ms:g} (fastest: trial "
                      f"{fastest['trial']} at {fastest['latency_ms']:.2f} ms); allow more, or try smaller "
                      "--img-sizes or models")
    best = max(fits, key=lambda f: (f["top1"], -f["latency_ms"]))
    limit = f" within --max-latency-ms {cfg.max_latency_ms:g}" if cfg.max_latency_ms is not None else ""
    others = len(timed) - 1
    return best, (f"highest {cfg.target} top-1 ({best['top1']:.2f}%, {best['numerics']}) of {len(timed)} timed "
                  f"finalist(s){limit}, at {best['latency_ms']:.2f} ms (batch {cfg.batch_size_deploy})"
                  + (f"; {len(timed) - len(fits)} were over the limit" if len(fits) < len(timed) else "")
                  + ("" if others else "; the only one timed"))


def _crown(out: Path, winner: dict[str, Any], why: str) -> None:
    """OUT/winner: a copy of the winning trial's run folder (with its export) whose run.json says why."""
    src, dst = out / winner["run"], out / "winner"
    tmp = out / ".winner.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src, tmp, ignore=shutil.ignore_patterns(".edgetl.lock"))
    run = json.loads((tmp / "run.json").read_text())
    run["chosen_by"] = {"command": "edgetl auto", "trial": winner["trial"], "why": why,
                        "search": str(out / "auto.json")}
    atomic_write_json(tmp / "run.json", run)
    shutil.rmtree(dst, ignore_errors=True)
    tmp.rename(dst)
