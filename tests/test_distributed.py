"""Two processes equal one: the same global batch gives the same losses and weights, files are written once.

1 process with ``train.grad_accum 2`` and 2 processes (``accelerate launch``, gloo on CPU) with
``grad_accum 1`` run the same optimizer steps over the same batches. Tolerance: losses within a
relative 1e-4 and weights within 1e-4, the size of float32 summation-order differences
(all-reduce against local accumulation, 1 against 2 threads) after a few AdamW steps.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from distill.cli import main

from .procs import launch

STEPS, SAVE_EVERY = 6, 3


def _args(teacher: Path, data: Path, out: Path, *extra: str) -> list[str]:
    return ["distill", "--teacher", str(teacher), "--data", str(data), "--out", str(out),
            "--student.mimic.mimic_dim", "16", "--train.max_steps", str(STEPS), "--train.lr", "3e-3",
            "--train.warmup_steps", "2", "--train.batch_seconds", "3", "--train.crop_seconds", "1.5",
            "--train.valid_fraction", "0.2", "--train.eval_every", "2", "--train.save_every", str(SAVE_EVERY),
            "--train.log_every", "1", *extra]


def _rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]


@pytest.mark.slow
@pytest.mark.parametrize("source", ["online", "cache"])
def test_two_processes_equal_one_with_the_same_global_batch(tiny_whisper_dir, sentences_corpus, tmp_path, source):
    one, two = tmp_path / "one", tmp_path / "two"
    # separate cache roots: the 2-process run builds its cache itself, shards split between the ranks
    cache = lambda root: ["--train.cache", "true", "--cache.root", str(root), "--cache.shard_mb", "0.05"] \
        if source == "cache" else []
    assert main(_args(tiny_whisper_dir, sentences_corpus, one, "--train.grad_accum", "2",
                      *cache(tmp_path / "cache1"))) == 0
    launch(_args(tiny_whisper_dir, sentences_corpus, two, *cache(tmp_path / "cache2")))

    rows1, rows2 = _rows(one), _rows(two)
    for key in ("train_loss", "valid_loss"):
        a = {r["step"]: r[key] for r in rows1 if key in r}
        b = {r["step"]: r[key] for r in rows2 if key in r}
        assert a.keys() == b.keys() and len(a) >= 3, key
        for step in a:
            assert b[step] == pytest.approx(a[step], rel=1e-4), (key, step)
    w1, w2 = load_file(one / "last" / "model.safetensors"), load_file(two / "last" / "model.safetensors")
    for k in w1:
        torch.testing.assert_close(w2[k], w1[k], atol=1e-4, rtol=1e-4, msg=k)

    # written once: one checkpoint event and one last/ export per save, one summary, one line per step
    for rows in (rows1, rows2):
        saves = [r["step"] for r in rows if r.get("event") == "checkpoint"]
        assert saves == [SAVE_EVERY, 2 * SAVE_EVERY]
        assert [r["step"] for r in rows if r.get("event") == "export" and r["path"] == "last"] == saves
        steps = [r["step"] for r in rows if "train_loss" in r]
        assert steps == sorted(set(steps)) == list(range(1, STEPS + 1))
    assert sorted(p.name for p in (two / "checkpoints").iterdir()) == ["step_3", "step_6"]
    summary = json.loads((two / "summary.json").read_text())
    assert summary["num_processes"] == 2 and summary["targets"]["source"] == source
    ranks = [json.loads((two / "ranks" / f"rank_{r}.json").read_text()) for r in (0, 1)]
    assert all(r["steps"] == STEPS and r["source"] == source for r in ranks)
    assert set(ranks[0]["indices"][:2]).isdisjoint(ranks[1]["indices"][:2])  # each rank its own batches
    if source == "cache":  # built once, by both ranks in parallel, read by both
        manifest = json.loads((Path(summary["targets"]["cache"]["folder"]) / "manifest.json").read_text())
        assert {s["built_by"] for s in manifest["shards"]} == {0, 1}
        assert len(list((tmp_path / "cache2").glob("*/*/manifest.json"))) == 1
