"""Distillation training: the loss falls, bad files are skipped, two ranks share the work.

Resume after SIGKILL and 2-process = 1-process equivalence: tests/test_resume.py, tests/test_distributed.py."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from distill.training.distillation import DistillConfig, TrainConfig, distill
from students.mimic import MimicOptions
from students.registry import StudentSpec

from .procs import launch


def _cfg(teacher: Path, data: Path, out: Path, **train) -> DistillConfig:
    base = dict(max_steps=12, lr=3e-3, warmup_steps=2, batch_seconds=4.0, crop_seconds=1.5, valid_fraction=0.15,
                eval_every=4, save_every=4, log_every=2, seed=0)
    base.update(train)
    return DistillConfig(teacher=str(teacher), data=[str(data)], out=str(out), student=StudentSpec(sections={"mimic": MimicOptions(mimic_dim=16)}),
                         train=TrainConfig(**base))


def _rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_short_run_reduces_loss_and_fills_the_run_folder(tiny_whisper_dir, sentences_corpus, tmp_path):
    out = tmp_path / "run"
    summary = distill(_cfg(tiny_whisper_dir, sentences_corpus, out, max_steps=40, eval_every=20, save_every=20))
    rows = _rows(out)
    train = [r["train_loss"] for r in rows if "train_loss" in r]
    valid = [r["valid_loss"] for r in rows if "valid_loss" in r]
    assert train[-1] < 0.7 * train[0]
    assert valid[-1] < valid[0]
    assert summary["steps"] == 40 and summary["best_valid_loss"] == min(valid)
    # the folder explains itself: each file holds what it says
    from safetensors.torch import load_file

    from distill.core.config import load_config
    from distill.models.teacher import load_teacher

    cfg = _cfg(tiny_whisper_dir, sentences_corpus, out, max_steps=40, eval_every=20, save_every=20)
    assert load_config(DistillConfig, out / "config.yaml") == cfg  # the resolved config, round trip
    assert json.loads((out / "summary.json").read_text()) == json.loads(json.dumps(summary))
    assert [r["step"] for r in rows if "train_loss" in r] == list(range(2, 41, 2))  # a row every log_every
    best_step = 20 * (1 + valid.index(min(valid)))
    exports = [r for r in rows if r.get("event") == "export"]
    assert [r["step"] for r in exports if r["path"] == "best"][-1] == best_step
    last = load_file(str(out / "last" / "model.safetensors"))
    state = load_file(str(out / "checkpoints" / "step_40" / "model.safetensors"))
    # last/ is the student whose trainable stack the step-40 checkpoint holds
    assert state and all(torch.equal(last[f"stack.{k}"], v) for k, v in state.items())
    assert json.loads((out / "checkpoints" / "step_40" / "trainer_state.json").read_text())["step"] == 40
    best = load_teacher(str(out / "best"))
    assert best.num_layers == summary["student"]["num_layers"] and best.info.params_total == summary["student"][
        "params_total"]
    from PIL import Image

    with Image.open(out / "loss.png") as im:
        assert im.size == (660, 440)
    assert any((out / "tb").rglob("events.out.tfevents*"))
    assert not list((out / "checkpoints").glob(".*tmp*"))  # no half-written checkpoint left
    # this process's memory in every log row and the summary: the peak counted from the loop's start
    mem = summary["memory"]
    assert mem["peak_since"] == "reset at start" and mem["growth_mb"] == mem["peak_rss_mb"] - mem["rss_at_start_mb"]
    assert all(r["peak_rss_mb"] >= r["rss_mb"] > 0 for r in rows if "train_loss" in r)
    assert max(r["peak_rss_mb"] for r in rows if "train_loss" in r) <= mem["peak_rss_mb"]


def test_bad_files_in_training_data_are_skipped(tiny_whisper_dir, sentences_corpus, tmp_path):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(sentences_corpus, data)
    (data / "broken.wav").write_bytes(b"RIFF....WAVEnothing")
    (data / "tiny.flac").write_bytes((sentences_corpus / "100" / "1000" / "100-1000-0000.flac").read_bytes()[:60])
    nan = 0.1 * np.ones(16000, np.float32)
    nan[5] = np.nan
    sf.write(data / "nan.wav", nan, 16000, subtype="FLOAT")  # a fine header: listed, then skipped when loaded
    summary = distill(_cfg(tiny_whisper_dir, data, tmp_path / "run", max_steps=12))  # more than an epoch
    assert any("broken.wav" in p for p in summary["skipped"])
    assert any("nan.wav" in p for p in summary["skipped"])
    good = len(list(sentences_corpus.rglob("*.flac")))
    assert summary["files_listed"] == good + 3  # every file found, readable header or not
    assert summary["files_used"] == good  # nan.wav's header reads fine, but it was skipped when loaded
    assert summary["files_skipped"] == 3 == len(summary["skipped"])
    assert summary["files_listed"] == summary["files_used"] + summary["files_skipped"]


STUDENT_FLAGS = {
    # two groups over three applications: a sampled depth of 1 leaves a group unused on both ranks
    "shared": ["--student.kind", "shared", "--student.shared.groups", "2"],
    # the layers to prune are chosen on rank 0 and sent to rank 1
    "pruned": ["--student.kind", "pruned"],
}


@pytest.mark.slow
@pytest.mark.parametrize("kind", list(STUDENT_FLAGS))
def test_two_process_accelerate_launch(tiny_whisper_dir, sentences_corpus, tmp_path, kind):
    out = tmp_path / "ddp"
    launch(["distill", "--teacher", str(tiny_whisper_dir), "--data", str(sentences_corpus), "--out", str(out),
            "--train.max_steps", "6", "--train.batch_seconds", "4", "--train.crop_seconds", "1.5",
            "--train.eval_every", "3", "--train.save_every", "3", *STUDENT_FLAGS[kind]])
    ranks = [json.loads((out / "ranks" / f"rank_{r}.json").read_text()) for r in (0, 1)]
    assert all(r["num_processes"] == 2 and r["steps"] == 6 and r["indices"] for r in ranks)
    # in each epoch the two ranks see different utterances
    assert set(ranks[0]["indices"][:2]).isdisjoint(ranks[1]["indices"][:2])
    summary = json.loads((out / "summary.json").read_text())
    assert summary["num_processes"] == 2 and summary["student"]["kind"] == kind
    if kind == "pruned":  # the choice made on rank 0 is written down, so a resume rebuilds the same student
        import yaml

        assert len(yaml.safe_load((out / "config.yaml").read_text())["student"]["pruned"]["removed"]) == 1
    assert (out / "best" / "model.safetensors").is_file()
