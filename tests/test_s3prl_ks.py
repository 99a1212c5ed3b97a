"""SUPERB KS through s3prl on a stackdistill model registered in-process."""

from __future__ import annotations

import json

import pytest
import torch

import students
from distill.models.teacher import load_teacher
from tasks.corpora.layouts import resolve_ks_roots
from tasks.superb.evaluate import EvaluateConfig
from tasks.superb.s3prl_upstream import register
from tasks.superb.suite import evaluate

from . import references


def test_adapter_speaks_s3prl_upstream_interface(tiny_whisper_dir):
    from s3prl.nn import S3PRLUpstream

    register()
    up = S3PRLUpstream("stackdistill", path_or_url=str(tiny_whisper_dir))
    assert up.num_layers == 4 and up.downsample_rates == [320] * 4 and up.hidden_sizes == [32] * 4
    up.train()  # s3prl flips modes; the wrapped model must stay frozen in eval
    assert not up.upstream.model.training
    wavs = torch.randn(2, 16000) * 0.1
    hs, hs_len = up(wavs, torch.tensor([16000, 8000]))
    assert hs[0].shape == (2, 50, 32) and hs_len[0].tolist() == [50, 25]


@pytest.mark.slow
def test_short_ks_run_writes_metrics(tiny_whisper_dir, ks_corpus, tmp_path):
    teacher = load_teacher(str(tiny_whisper_dir))
    folder = tmp_path / "student"
    students.mimic_from_teacher(teacher).save_pretrained(folder)
    out = tmp_path / "ks"
    m = evaluate(EvaluateConfig(model=str(folder), data=str(ks_corpus), out=str(out), steps=20, eval_every=10,
                                batch_size=16))
    saved = json.loads((out / "metrics.json").read_text())
    assert saved == m
    assert m["steps"] == 20 and m["seconds"] > 0
    assert m["test_n"] == len(list((ks_corpus / "test").rglob("*.wav")))  # every test file scored, once
    correct = references.count_of(m["test_accuracy"], m["test_n"])
    assert m["test_ci95"] == pytest.approx(references.wilson95(correct, m["test_n"]), abs=1e-9)  # scipy's
    # the test score is s3prl's own, read from its result file, not a figure of ours
    result = (out / "s3prl" / "evaluate" / "valid_best" / "test" / "result.yaml").read_text()
    assert f"accuracy: {m['test_accuracy']}" in result
    assert (out / "s3prl" / "train" / "valid_best").is_dir()
    # the frozen student's states were kept per clip: a second seed on the same model computes none
    first = m["state_cache"]
    assert first["clips_computed"] > 0 and first["clips_reused"] > 0 and first["clips_not_kept"] == 0
    again = evaluate(EvaluateConfig(model=str(folder), data=str(ks_corpus), out=str(tmp_path / "ks_seed1"), steps=20,
                                    eval_every=10, batch_size=16, seed=1))["state_cache"]
    assert again["clips_computed"] == 0
    assert again["clips_reused"] == first["clips_reused"] + first["clips_computed"]


def test_ks_roots_are_checked(tmp_path):
    with pytest.raises(ValueError, match="not found"):
        resolve_ks_roots(str(tmp_path / "nope"))
    (tmp_path / "train").mkdir()
    (tmp_path / "test").mkdir()
    with pytest.raises(ValueError, match="_background_noise_"):
        resolve_ks_roots(str(tmp_path))


def test_unknown_task_is_an_error():
    with pytest.raises(ValueError, match="unknown task"):
        evaluate(EvaluateConfig(task="sd"))
