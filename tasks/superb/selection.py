"""One SUPERB task at the model's own best downstream learning rate, over downstream seeds.

SUPERB figures depend strongly on the downstream learning rate, and the best one differs per
model and task (HuBERT Base speaker ID: 81.4 % at lr 1e-1, 67.4 % at 1e-4, s3prl issue 268), so
comparing a student and its teacher at one shared lr measures the lr. :func:`run_selected`
runs the recipe once per lr of ``lr_grid`` (seed ``seed``), picks the lr by the **validation**
figure only (never test), then repeats the chosen setting with ``seeds - 1`` more downstream
seeds. ``metrics.json`` holds the chosen lr's record with ``value`` the mean over seeds, plus::

    lr_selection: {grid: [...], valid: {lr: best validation figure}, chosen: lr, by: "valid_best_<metric>"}
    seed_runs: {seeds: [...], values: [...], mean, sd}

Run folders: ``lr_<lr>/`` per lr (its seed ``seed``), ``lr_<lr>/seed_<s>/`` for the other
seeds. A finished run (``metrics.json`` next to a ``cell.json`` of the same settings) is reused,
so a killed selection resumes. With one lr and one seed the run is written to ``out`` itself,
as before.
"""

from __future__ import annotations

import json
import logging
import statistics
from dataclasses import asdict, replace
from pathlib import Path

from distill.core.fsutil import claim_run_folder, write_json_atomic
from tasks.superb.evaluate import run_task
from tasks.superb.protocol import MetricRecord
from tasks.superb.registry import get_task

log = logging.getLogger(__name__)

RECORD_KEYS = ("task", "metric", "value", "higher_is_better", "test_n", "chance", "units")


def fingerprint(spec: str) -> dict:
    """What identifies a model's weights: every file of its folder by size and modification time
    (a retrained student at the same path is a new model); a hub id by name."""
    folder = Path(spec)
    if not folder.exists():
        return {"spec": spec}
    files = [folder] if folder.is_file() else sorted(p for p in folder.rglob("*") if p.is_file())
    return {"spec": spec, "files": {str(p.relative_to(folder) if p != folder else p.name): [p.stat().st_size,
                                                                                            p.stat().st_mtime_ns]
                                    for p in files}}


def run_settings(cfg) -> dict:
    """How a run is measured (not where it is written): the key a finished run is reused under."""
    ignored = ("out", "suite", "models", "num_workers", "overwrite")
    settings = {k: v for k, v in asdict(cfg).items() if k not in ignored}
    return settings | {"model": fingerprint(cfg.model)}


def reused_or_run(cfg, runner=None) -> dict:
    """``cfg``'s run, reused when ``cfg.out`` holds its ``metrics.json`` with the same settings."""
    runner = runner or run_task
    out = Path(cfg.out)
    settings = json.loads(json.dumps(run_settings(cfg)))
    done, stamp = out / "metrics.json", out / "cell.json"
    if done.is_file() and stamp.is_file() and json.loads(stamp.read_text()) == settings:
        log.info("%s: finished run reused", out)
        return json.loads(done.read_text())
    out.mkdir(parents=True, exist_ok=True)
    stamp.unlink(missing_ok=True)  # a kill mid-run must not pair old settings with new metrics
    metrics = runner(cfg)
    write_json_atomic(stamp, settings)
    return metrics


def _lr_name(lr: float) -> str:
    return f"lr_{lr:g}"


def choose_lr(valid: dict[float, float | None], higher_is_better: bool) -> float:
    """The lr with the best validation figure (the first in grid order on a tie)."""
    missing = [lr for lr, v in valid.items() if v is None]
    if missing:
        raise ValueError(f"the recipe wrote no validation figure for lr {missing}: cannot choose an lr "
                         "(is eval_every at most steps?)")
    sign = 1 if higher_is_better else -1
    return max(valid, key=lambda lr: (sign * valid[lr], -list(valid).index(lr)))


def run_selected(cfg, runner=None) -> dict:
    """``cfg.task`` on ``cfg.model`` at the best lr of ``cfg.lr_grid`` (by validation), over ``cfg.seeds`` seeds.

    ``runner(cfg) -> metrics`` runs one recipe (default :func:`tasks.superb.evaluate.run_task`;
    tests pass a fake). Writes and returns ``metrics.json``'s content.
    """
    runner = runner or run_task
    task = get_task(cfg.task)
    grid = [float(lr) for lr in cfg.lr_grid] or [float(cfg.lr or task.default_lr)]
    if len(set(grid)) != len(grid) or any(lr <= 0 for lr in grid):
        raise ValueError(f"--lr_grid must list distinct positive learning rates, got {cfg.lr_grid}")
    if cfg.seeds < 0:
        raise ValueError(f"--seeds must be at least 1 (0: the command's default), got {cfg.seeds}")
    cfg = replace(cfg, seeds=cfg.seeds or 1)
    out = Path(cfg.out)
    if len(grid) == 1 and cfg.seeds == 1:
        return reused_or_run(replace(cfg, lr=grid[0], lr_grid=[], seeds=1), runner)

    def one(lr: float, seed: int, folder: Path) -> dict:
        return reused_or_run(replace(cfg, lr=lr, seed=seed, lr_grid=[], seeds=1, out=str(folder)), runner)

    by_lr = {lr: one(lr, cfg.seed, out / _lr_name(lr)) for lr in grid}
    key = f"valid_best_{task.metric}"
    valid = {lr: by_lr[lr].get(key) for lr in grid}
    chosen = choose_lr(valid, task.higher_is_better)
    seeds = [cfg.seed + i for i in range(cfg.seeds)]
    runs = [by_lr[chosen]] + [one(chosen, s, out / _lr_name(chosen) / f"seed_{s}") for s in seeds[1:]]
    values = [float(r["value"]) for r in runs]
    mean = statistics.fmean(values)
    first = runs[0]
    record = MetricRecord(**{k: first.get(k) for k in RECORD_KEYS} | {"value": mean})  # interval at the mean
    metrics = {**first, **record.as_dict(), "extra": first.get("extra", {}), f"test_{task.metric}": mean,
               "test_ci95": record.ci95, "lr": chosen, "seed": cfg.seed,
               "lr_selection": {"grid": grid, "valid": {f"{lr:g}": v for lr, v in valid.items()},
                                "chosen": chosen, "by": key},
               "seed_runs": {"seeds": seeds, "values": values, "mean": mean,
                             "sd": statistics.stdev(values) if len(values) > 1 else 0.0},
               "steps_total": sum(int(r.get("steps", 0)) for r in list(by_lr.values()) + runs[1:]),
               "seconds": sum(float(r.get("seconds", 0.0)) for r in list(by_lr.values()) + runs[1:])}
    done = out / "metrics.json"
    if not done.is_file() or json.loads(done.read_text()) != json.loads(json.dumps(metrics)):
        write_json_atomic(done, metrics)  # a resumed selection with nothing new leaves the file untouched
    log.info("%s %s: lr %g chosen by validation %s; test %s over seeds %s", cfg.model, task.name, chosen,
             {f"{lr:g}": v for lr, v in valid.items()}, values, seeds)
    return metrics


def evaluate_task(cfg) -> dict:
    """One task on one model into ``cfg.out`` (refused when it holds an earlier evaluation, unless ``overwrite``),
    at its best lr of ``cfg.lr_grid`` over ``cfg.seeds`` seeds (:func:`run_selected`)."""
    claim_run_folder(cfg.out, overwrite=cfg.overwrite)
    return run_selected(cfg)
