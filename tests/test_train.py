"""Distillation training: the loss falls, an interrupted run resumes exactly, two ranks share the work."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from safetensors.torch import load_file

from distill.train import DistillConfig, TrainConfig, TrainingInterrupted, distill
from students.mimic import MimicOptions
from students.registry import StudentSpec


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
    for name in ("config.yaml", "metrics.jsonl", "summary.json", "loss.png", "best/config.json",
                 "best/model.safetensors", "last/model.safetensors", "checkpoints/step_40/trainer_state.json"):
        assert (out / name).exists(), name
    assert any((out / "tb").rglob("events.out.tfevents*"))
    assert not list((out / "checkpoints").glob(".*tmp*"))  # no half-written checkpoint left


def test_resume_after_interruption_matches_uninterrupted_run(tiny_whisper_dir, sentences_corpus, tmp_path):
    full = tmp_path / "full"
    distill(_cfg(tiny_whisper_dir, sentences_corpus, full))
    cut = tmp_path / "cut"
    with pytest.raises(TrainingInterrupted):
        distill(_cfg(tiny_whisper_dir, sentences_corpus, cut, interrupt_after=6))
    state = json.loads((cut / "checkpoints" / "step_4" / "trainer_state.json").read_text())
    assert state["step"] == 4 and state["batch_in_epoch"] > 0  # the checkpoint is mid-epoch
    summary = distill(_cfg(tiny_whisper_dir, sentences_corpus, cut, resume=True))
    assert summary["resumed_from_step"] == 4 and summary["steps"] == 12
    assert any(r.get("event") == "resume" for r in _rows(cut))
    a = load_file(full / "last" / "model.safetensors")
    b = load_file(cut / "last" / "model.safetensors")
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=1e-5, msg=k)


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
    assert summary["files_listed"] == good + 1  # nan.wav's header reads fine
    assert summary["files_used"] == good  # ... but it was skipped when loaded, so it was not used


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


STUDENT_FLAGS = {
    "mimic": ["--student.mimic.mimic_dim", "16"],
    # two groups over three applications: a sampled depth of 1 leaves a group unused on both ranks
    "shared": ["--student.kind", "shared", "--student.shared.groups", "2"],
    # the layers to prune are chosen on rank 0 and sent to rank 1
    "pruned": ["--student.kind", "pruned"],
}


@pytest.mark.slow
@pytest.mark.parametrize("kind", list(STUDENT_FLAGS))
def test_two_process_accelerate_launch(tiny_whisper_dir, sentences_corpus, tmp_path, kind):
    out = tmp_path / "ddp"
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--main_process_port", str(_free_port()), "-m", "distill.cli", "distill",
           "--teacher", str(tiny_whisper_dir), "--data", str(sentences_corpus), "--out", str(out),
           "--train.max_steps", "6", "--train.batch_seconds", "4", "--train.crop_seconds", "1.5",
           "--train.eval_every", "3", "--train.save_every", "3", *STUDENT_FLAGS[kind]]
    # own session: on a timeout the launcher *and* its ranks are killed, none left holding the CPU
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        _, stderr = proc.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        _, stderr = proc.communicate()
        pytest.fail(f"2-process run timed out; its output ended with:\n{stderr[-3000:]}")
    assert proc.returncode == 0, stderr[-3000:]
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
