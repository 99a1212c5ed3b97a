"""The redundancy paper's protocol end to end on a tiny corpus: stages, baselines, the report's keys."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from distill.analysis.prune import knn_block_influence, removal_order
from distill.jobs.paper import PaperConfig, run_paper
from distill.training.loop import TrainConfig

from .conftest import save_tiny_model


def test_knn_block_influence_ranks_an_identity_layer_first(tiny_whisper_dir):
    from distill.models.teacher import load_teacher

    teacher = load_teacher(str(tiny_whisper_dir))
    layer = teacher.stack.layers[1]
    original = layer.forward
    layer.forward = lambda hidden_states, *a, **k: (hidden_states,)  # layer 2 changes nothing
    g = torch.Generator().manual_seed(0)
    batches = [{"wav": 0.1 * torch.randn(6, 16000, generator=g), "lengths": torch.full((6,), 16000)}
               for _ in range(3)]
    influence = knn_block_influence(teacher, batches, k=4)
    layer.forward = original
    assert len(influence) == 3 and influence[1] == pytest.approx(0.0, abs=1e-9)  # identical neighbours
    assert all(0.0 <= v <= 1.0 for v in influence)
    order = removal_order("knn_block_influence", 3, knn_influence=influence)
    assert order[0] == 2 and order[-1] == 1  # the first layer goes last
    with pytest.raises(ValueError, match="more than 4 utterances"):
        knn_block_influence(teacher, [{"wav": batches[0]["wav"][:3], "lengths": torch.full((3,), 16000)}], k=4)


def _train(steps: int, **kw) -> TrainConfig:
    return TrainConfig(max_steps=steps, lr=kw.pop("lr", 3e-3), warmup_steps=2, batch_seconds=4.0,
                       eval_every=kw.pop("eval_every", max(1, steps // 2)), save_every=steps, log_every=2, cache=True,
                       **kw)


def _tones(root: Path, per_label: int = 30) -> Path:
    """Three classes of noisy tones, 0.5 s each: easy to learn, so every stage shows what it does."""
    rng = np.random.default_rng(0)
    t = np.arange(8000) / 16000
    for label, hz in (("low", 200), ("mid", 800), ("high", 2400)):
        (root / label).mkdir(parents=True)
        for n in range(per_label):
            wav = 0.3 * np.sin(2 * np.pi * hz * (1 + 0.05 * rng.standard_normal()) * t)
            sf.write(root / label / f"{n:03d}.wav", (wav + 0.05 * rng.standard_normal(8000)).astype(np.float32), 16000)
    return root


@pytest.mark.slow
def test_paper_protocol_end_to_end(tmp_path):
    # a tiny random HuBERT: its group-normed CNN keeps the tones apart (a tiny random Whisper's
    # features are dominated by its position table); the pipeline test runs the protocol on Whisper
    teacher_dir = save_tiny_model("hubert", tmp_path / "hubert")
    cfg = PaperConfig(out=str(tmp_path / "paper"), teacher=str(teacher_dir), task="folders",
                      data=str(_tones(tmp_path / "tones")), valid_fraction=0.25, test_fraction=0.25,
                      finetune=_train(60), stage1=_train(4), stage2=_train(60), analysis_utterances=40,
                      timing_utterances=4, student_steps={}, non_mimicker=["mimic-mlp", "mimic-transformer"])
    cfg.cache.root = str(tmp_path / "cache")
    r = run_paper(cfg, pruned={"pruned-comflp": [3]})
    out = tmp_path / "paper"
    saved = json.loads((out / "paper.json").read_text())
    n_test = saved["corpus"]["test"]
    assert n_test == 22 and saved["labels"] == ["high", "low", "mid"]
    teacher = saved["models"]["teacher"]
    assert teacher["paper_test_accuracy"] == teacher["test"]["accuracy"] and teacher["test"]["n"] == n_test
    assert teacher["paper_test_accuracy"] > 0.6  # fine-tuning learnt the task
    for name in ("mimic-mlp", "mimic-transformer"):
        m = saved["models"][name]
        assert m["paper_retention_pct"] == pytest.approx(100 * m["paper_test_accuracy"] / teacher["paper_test_accuracy"])
        lo, hi = m["test"]["ci95"]
        assert lo <= m["paper_test_accuracy"] <= hi and m["test"]["n"] == n_test
        assert m["time_ratio"] > 0 and m["stack_compression_pct"] > 0
        assert m["stages"]["target_layers"] == saved["block_targets"]
        # stage 1 logged the student's accuracy through the teacher's frozen head at every validation
        rows = [json.loads(line) for line in (out / "stage1" / name / "metrics.jsonl").read_text().splitlines()]
        head = [row["valid_head_accuracy"] for row in rows if "valid_loss" in row]
        assert len(head) == 2 and all(0 <= a <= 1 for a in head)
        # stage 2 learns from the labels: its validation accuracy ends above stage 1's through the teacher's head
        assert m["stages"]["stage2"]["best_valid_accuracy"] > head[-1]
        assert m["stages"]["non_mimicker"]["test"]["n"] == n_test
        # stage 1 by hand (states through the head, outside the scorer) gives the scorer's figure
        check = m["stages"]["stage1"]["check"]
        assert check["n"] == n_test and check["accuracy"] == pytest.approx(m["stages"]["stage1"]["test"]["accuracy"])
        assert -1 <= check["cosine"] <= 1 and check["norm_ratio"] > 0 and 1 / 3 <= check["majority_share"] <= 1
    assert saved["models"]["pruned-comflp"]["removed_layers"] == [3]
    assert saved["frontend_linear"]["test"]["n"] == n_test
    curves = saved["pruning"]["orderings"]
    assert set(curves) == {"last", "first", "block_influence", "knn_block_influence", "similarity_block"}
    assert all(len(c["accuracy"]) == 3 and c["accuracy"][0] == teacher["test"] for c in curves.values())
    goal, mlp = saved["goal"], saved["models"]["mimic-mlp"]
    assert goal["student"] == "mimic-mlp"
    # the goal reads the student's own figures (recomputed from the accuracies) against its thresholds
    reached = 100 * mlp["test"]["accuracy"] / teacher["test"]["accuracy"]
    assert goal["retention_reached_pct"] == pytest.approx(reached) and goal["time_ratio"] == mlp["time_ratio"]
    assert goal["met"] is (reached >= goal["retention_pct"] and mlp["time_ratio"] <= goal["max_time_ratio"]
                           and mlp["stack_compression_pct"] >= goal["min_stack_compression_pct"])
    md = (out / "paper.md").read_text()
    assert "fine-tuned teacher" in md and "non-mimicker" in md and f"n = {n_test}" in md and "by hand" in md
    assert r["models"].keys() == saved["models"].keys()
    # the fine-tuned teacher is a standard classification folder, and a teacher again
    config = json.loads((out / "finetune" / "best" / "config.json").read_text())
    assert config["architectures"] == ["HubertForSequenceClassification"] and len(config["id2label"]) == 3
