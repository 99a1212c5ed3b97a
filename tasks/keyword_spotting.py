"""SUPERB keyword spotting (Speech Commands v0.01) through s3prl's ``SuperbKS`` recipe.

The model under test is frozen; s3prl trains its learnable weighted sum of hidden states and
a mean-pooling linear head on the train root, keeps the best checkpoint by validation
accuracy, and scores it on the test root. ``metrics.json`` in the output folder holds the
test accuracy with the test-set size and its 95 % Wilson interval, the best validation
accuracy, the steps and the time.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml

from distill.fsutil import write_json_atomic
from distill.stats import accuracy_record

log = logging.getLogger(__name__)


@dataclass
class EvaluateConfig:
    task: str = field(default="ks", metadata={"help": "downstream task: ks"})
    model: str = field(default="whisper-tiny.en", metadata={"help": "teacher/student spec or exported folder"})
    data: str = field(default="", metadata={"help": "corpus root holding train/ and test/ (or the train root)"})
    test_data: str = field(default="", metadata={"help": "test root (default: <data>/test)"})
    out: str = field(default="runs/evaluate", metadata={"help": "output folder"})
    steps: int = field(default=300, metadata={"help": "downstream training steps"})
    batch_size: int = 32
    lr: float = field(default=1e-3, metadata={"help": "Adam learning rate of the downstream head"})
    eval_every: int = field(default=100, metadata={"help": "validate (and keep the best) every N steps"})
    hidden_size: int = field(default=256, metadata={"help": "downstream projection width"})
    seed: int = 0
    num_workers: int = 0
    device: str = field(default="auto", metadata={"help": "cpu, cuda or auto"})


def resolve_ks_roots(data: str, test_data: str = "") -> tuple[Path, Path]:
    root = Path(data)
    if not root.is_dir():
        raise ValueError(f"KS data folder not found: {root}")
    train = root / "train" if (root / "train").is_dir() else root
    test = Path(test_data) if test_data else root / "test"
    if not test.is_dir():
        raise ValueError(f"KS test folder not found: {test} (pass test_data=...)")
    if not (train / "_background_noise_").is_dir():
        raise ValueError(f"{train} is not a Speech Commands v0.01 train root (no _background_noise_ folder)")
    return train, test


def run_ks(cfg: EvaluateConfig) -> dict:
    """Run SUPERB KS on ``cfg.model``; writes and returns ``metrics.json``'s content."""
    from s3prl.problem import SuperbKS

    from .s3prl_upstream import register

    train_root, test_root = resolve_ks_roots(cfg.data, cfg.test_data)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    name = register()
    device = ("cuda" if torch.cuda.is_available() else "cpu") if cfg.device == "auto" else cfg.device
    problem = SuperbKS()
    conf = problem.default_config()
    conf.update(target_dir=str(out / "s3prl"), cache_dir=str(out / "s3prl_cache"), remove_all_cache=False)
    conf["prepare_data"] = {"gsc1": str(train_root), "gsc1_test": str(test_root)}
    conf["build_upstream"] = {"name": name, "path_or_url": cfg.model}
    conf["build_downstream"] = {"hidden_size": cfg.hidden_size}
    conf["build_optimizer"] = {"name": "Adam", "conf": {"lr": cfg.lr}}
    for split in ("train", "valid", "test"):
        conf["build_batch_sampler"][split]["batch_size"] = cfg.batch_size
    conf["train"].update(total_steps=cfg.steps, log_step=max(1, cfg.eval_every // 2), eval_step=cfg.eval_every,
                         save_step=cfg.eval_every, auto_resume=False)
    torch.manual_seed(cfg.seed)
    t0 = time.time()
    problem.run(**conf, num_workers=cfg.num_workers, device=device)
    elapsed = time.time() - t0
    result_file = out / "s3prl" / "evaluate" / "valid_best" / "test" / "result.yaml"
    if not result_file.is_file():
        raise RuntimeError(f"s3prl finished without {result_file}")
    test = yaml.safe_load(result_file.read_text())
    stats_file = out / "s3prl" / "train" / "valid_best" / "training_stats.yaml"
    valid_best = None
    if stats_file.is_file():
        stats = yaml.safe_load(stats_file.read_text()) or {}
        valid_best = (stats.get("valid_best_metrics") or {}).get("accuracy")
    n_test = sum(1 for _ in test_root.rglob("*.wav"))  # s3prl scores every clip of the test root once
    record = accuracy_record(round(float(test["accuracy"]) * n_test), n_test)
    metrics = {"task": "ks", "model": cfg.model, "test_accuracy": float(test["accuracy"]),
               "test_n": n_test, "test_ci95": record["ci95"],
               "test_loss": float(test.get("loss", float("nan"))), "valid_best_accuracy": valid_best,
               "steps": cfg.steps, "seconds": elapsed, "train_root": str(train_root), "test_root": str(test_root)}
    write_json_atomic(out / "metrics.json", metrics)
    return metrics


TASKS = {"ks": run_ks}


def evaluate(cfg: EvaluateConfig) -> dict:
    if cfg.task not in TASKS:
        raise ValueError(f"unknown task {cfg.task!r}; available: {sorted(TASKS)}")
    return TASKS[cfg.task](cfg)
