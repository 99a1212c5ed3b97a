"""``stackdistill evaluate --task T``: one SUPERB task through its own s3prl recipe.

The model under test (teacher, student, pruned model or exported folder) is frozen and
registered as an in-process s3prl upstream; the task's recipe runs with its own settings, save
for the overrides here (steps, batch size, learning rate). The layout is checked before any
model is loaded. ``metrics.json`` holds the task's :class:`~tasks.superb.protocol.MetricRecord` (primary
metric, value, higher-is-better, chance, test-set size, 95 % interval) plus steps and time; KS
keeps its historical ``test_accuracy`` key.
"""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from distill.core.fsutil import write_json_atomic
from tasks.superb import state_cache
from tasks.superb.protocol import RecipeOverrides, read_yaml
from tasks.superb.registry import get_task

log = logging.getLogger(__name__)

@dataclass
class EvaluateConfig:
    task: str = field(default="ks", metadata={"help": "SUPERB task, a name in tasks.superb.registry (ks, sid, ic, er, pr, asr)"})
    model: str = field(default="whisper-tiny.en", metadata={"help": "teacher/student spec or exported folder"})
    data: str = field(default="", metadata={"help": "dataset root in the task's official layout"})
    test_data: str = field(default="", metadata={"help": "KS: test root (default: <data>/test)"})
    out: str = field(default="runs/evaluate", metadata={"help": "output folder"})
    overwrite: bool = field(default=False, metadata={
        "help": "write over an earlier evaluation in out (else refused; a suite resumes its finished cells)"})
    steps: int = field(default=0, metadata={"help": "downstream training steps (0: the task's default here)"})
    batch_size: int = field(default=0, metadata={"help": "downstream batch size (0: the task's default here)"})
    lr: float = field(default=0.0, metadata={"help": "downstream learning rate (0: the task's default here)"})
    lr_grid: list[float] = field(default_factory=list, metadata={
        "help": "downstream learning rates to try (e.g. 1e-4,1e-3,1e-2): the one with the best validation figure "
                "is kept; empty: --lr alone (one task) or, in a suite, the task's lr and ten times it"})
    seeds: int = field(default=0, metadata={
        "help": "downstream seeds the chosen setting is run with (mean, sd); 0: 1 for one task, 2 in a suite"})
    eval_every: int = field(default=100, metadata={"help": "validate (and keep the best) every N steps"})
    hidden_size: int = field(default=256, metadata={"help": "utterance tasks and PR: downstream projection width"})
    rnn_hidden: int = field(default=0, metadata={"help": "ASR: BLSTM width (0: the recipe's 1024)"})
    fold: int = field(default=0, metadata={"help": "ER: test session fold + 1 (SUPERB averages folds 0-4)"})
    suite: str = field(default="", metadata={"help": "comma-separated tasks: run the suite grid instead"})
    models: str = field(default="", metadata={"help": "suite: comma-separated models (first = the teacher)"})
    state_cache_mb: int = field(default=4096, metadata={
        "help": "keep the frozen model's hidden states of each clip in memory, reused across steps, lrs and seeds "
                "(MB; 0: compute them for every batch)"})
    seed: int = 0
    num_workers: int = 0
    device: str = field(default="auto", metadata={"help": "cpu, cuda or auto"})


def run_task(cfg: EvaluateConfig) -> dict:
    """Run ``cfg.task`` on ``cfg.model``; writes and returns ``metrics.json``'s content."""
    import s3prl.problem

    from tasks.superb.s3prl_upstream import register

    task = get_task(cfg.task)
    roots = task.resolve(cfg.data, cfg.test_data)  # before any model is loaded
    steps = cfg.steps or task.default_steps
    batch_size = cfg.batch_size or task.default_batch_size
    lr = cfg.lr or task.default_lr
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    name = register()
    device = ("cuda" if torch.cuda.is_available() else "cpu") if cfg.device == "auto" else cfg.device
    problem = getattr(s3prl.problem, task.recipe)()
    conf = problem.default_config()
    target_dir = out / "s3prl"
    conf.update(target_dir=str(target_dir), cache_dir=str(out / "s3prl_cache"), remove_all_cache=False)
    conf["build_upstream"] = {"name": name, "path_or_url": cfg.model}
    if "hidden_size" in (conf.get("build_downstream") or {}):
        conf["build_downstream"]["hidden_size"] = cfg.hidden_size
    overrides = RecipeOverrides(batch_size, cfg.rnn_hidden, cfg.fold)
    task.configure(conf, roots, overrides)
    conf["build_optimizer"] = {"name": "Adam", "conf": {"lr": lr}}
    every = max(1, min(cfg.eval_every, steps))  # s3prl keeps valid_best only at multiples of eval_step
    conf["train"].update(total_steps=steps, log_step=max(1, every // 2), eval_step=every, save_step=every,
                         auto_resume=False, seed=cfg.seed)  # s3prl seeds itself from train.seed
    accumulate = int(conf["train"].get("gradient_accumulate", 1))  # the recipe's: a step is this many batches
    # s3prl caches train lengths by row index under target_dir: stale for another corpus in the same folder
    shutil.rmtree(target_dir / "train_stats", ignore_errors=True)
    torch.manual_seed(cfg.seed)
    log.info("SUPERB %s (%s) on %s: %d steps, batch %d, lr %g", task.name, task.recipe, cfg.model, steps,
             batch_size, lr)
    t0 = time.time()
    with task.running(roots), state_cache.use(cfg.state_cache_mb) as cache:
        before = replace(cache.counts) if cache else None
        problem.run(**conf, num_workers=cfg.num_workers, device=device)
    elapsed = time.time() - t0
    cached = None
    if cache is not None:
        cached = {"clips_reused": cache.counts.reused - before.reused,
                  "clips_computed": cache.counts.computed - before.computed,
                  "clips_not_kept": cache.counts.not_kept - before.not_kept, "cache_mb": cache.nbytes / 2**20}
        log.info("state cache: %d clips reused, %d computed (%.0f MB kept)", cached["clips_reused"],
                 cached["clips_computed"], cached["cache_mb"])
    record = task.read_result(target_dir, roots, overrides)
    stats_file = target_dir / "train" / "valid_best" / "training_stats.yaml"
    valid_best = None
    if stats_file.is_file():
        valid_best = (read_yaml(stats_file).get("valid_best_metrics") or {}).get(task.metric)
    metrics = {"model": cfg.model, **record.as_dict(), **record.extra,
               # the historical KS keys (test_accuracy, test_ci95), for every task by its metric
               f"test_{record.metric}": record.value, "test_ci95": record.ci95,
               f"valid_best_{record.metric}": valid_best, "steps": steps, "gradient_accumulate": accumulate,
               "batches_seen": steps * accumulate, "batch_size": batch_size, "lr": lr, "seed": cfg.seed,
               "seconds": elapsed, "state_cache": cached, "roots": {k: str(v) for k, v in roots.items()}}
    write_json_atomic(out / "metrics.json", metrics)
    return metrics
