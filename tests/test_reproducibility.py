"""The same command with the same seed gives the same figures, whatever the load (issue 17).

Two fresh processes run the same short distillation and the same SUPERB KS evaluation (an lr
grid and two downstream seeds); the second runs beside two processes spinning on every core.
The student's weights must be bit-identical and every figure equal.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(args: list[str]) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-m", "distill.cli", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]


def _distill_and_evaluate(teacher: Path, sentences: Path, ks: Path, out: Path) -> dict:
    _run(["distill", "--teacher", str(teacher), "--data", str(sentences), "--out", str(out / "distill"),
          "--student.mimic.mimic_dim", "8", "--train.max_steps", "12", "--train.eval_every", "6",
          "--train.save_every", "12", "--train.batch_seconds", "4", "--train.crop_seconds", "1",
          "--cache.root", str(out / "cache")])
    _run(["evaluate", "--task", "ks", "--model", str(out / "distill" / "best"), "--data", str(ks),
          "--out", str(out / "eval"), "--steps", "6", "--eval_every", "3", "--batch_size", "4",
          "--lr_grid", "1e-3,1e-2", "--seeds", "2"])
    summary = json.loads((out / "distill" / "summary.json").read_text())
    metrics = json.loads((out / "eval" / "metrics.json").read_text())
    weights = hashlib.sha256((out / "distill" / "best" / "model.safetensors").read_bytes()).hexdigest()
    return {"weights": weights, "best_valid_loss": summary["best_valid_loss"],
            "valid_rows": [json.loads(r) for r in (out / "distill" / "metrics.jsonl").read_text().splitlines()
                           if "valid_loss" in r],
            "ks": {k: metrics[k] for k in ("value", "lr", "lr_selection", "seed_runs", "ci95")}}


@pytest.mark.slow
def test_two_runs_of_the_same_command_give_the_same_figures_under_load(tiny_whisper_dir, sentences_corpus,
                                                                      ks_corpus, tmp_path):
    first = _distill_and_evaluate(tiny_whisper_dir, sentences_corpus, ks_corpus, tmp_path / "a")
    spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(os.cpu_count() or 2)]
    try:
        second = _distill_and_evaluate(tiny_whisper_dir, sentences_corpus, ks_corpus, tmp_path / "b")
    finally:
        for p in spinners:
            p.kill()
            p.wait()
    for row in first["valid_rows"] + second["valid_rows"]:
        row.pop("elapsed", None)
    assert first == second
