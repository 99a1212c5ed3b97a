"""Nothing lost, nothing run, nothing silently wrong (issue 15).

A diverged run stops with a non-zero exit and leaves no non-finite tensor anywhere; resume
skips a damaged newest checkpoint for an intact older one; a pickle planted in a run folder is
never executed; a second run into the same ``--out`` is refused; a command that fails before
doing work leaves no folder behind.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from distill.cli import main
from distill.core.protocol import NonFiniteError
from distill.deploy.export import ExportConfig, export, export_student, load_student
from distill.training.checkpoints import verify_checkpoint
from distill.training.distillation import DistillConfig, TrainConfig, distill
from students.mimic import MimicOptions
from students.registry import StudentSpec

from .procs import LAUNCH_ENV, free_port, start


def _cfg(teacher: Path, data: Path, out: Path, **train) -> DistillConfig:
    base = dict(max_steps=12, lr=3e-3, warmup_steps=2, batch_seconds=4.0, crop_seconds=1.5, valid_fraction=0.15,
                eval_every=4, save_every=4, log_every=1, seed=0)
    base.update(train)
    return DistillConfig(teacher=str(teacher), data=[str(data)], out=str(out),
                         student=StudentSpec(sections={"mimic": MimicOptions(mimic_dim=16)}),
                         train=TrainConfig(**base))


def _args(teacher: Path, data: Path, out: Path, *extra: str) -> list[str]:
    return ["distill", "--teacher", str(teacher), "--data", str(data), "--out", str(out),
            "--student.mimic.mimic_dim", "16", "--train.batch_seconds", "4", "--train.crop_seconds", "1.5",
            "--train.valid_fraction", "0.15", "--train.log_every", "1", *extra]


def _non_finite_tensors(folder: Path) -> list[str]:
    """Every NaN or infinite tensor in any safetensors file under ``folder`` (``file:tensor``)."""
    bad = []
    for path in folder.rglob("*.safetensors"):
        for name, t in load_file(str(path)).items():
            if t.is_floating_point() and not torch.isfinite(t).all():
                bad.append(f"{path.relative_to(folder)}:{name}")
    return bad


def _rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]


# -- 1. divergence ----------------------------------------------------------------------------------

@pytest.mark.parametrize("precision", ["no", "fp16"])
def test_a_diverging_run_stops_non_zero_and_writes_nothing_non_finite(tiny_whisper_dir, sentences_corpus, tmp_path,
                                                                      capsys, precision):
    out = tmp_path / "run"
    code = main(_args(tiny_whisper_dir, sentences_corpus, out, "--train.lr", "1e6", "--train.warmup_steps", "2",
                      "--train.max_steps", "40", "--train.eval_every", "2", "--train.save_every", "2",
                      "--train.nonfinite_patience", "4", "--train.mixed_precision", precision))
    err = capsys.readouterr().err
    assert code != 0
    line = [ln for ln in err.splitlines() if "diverged" in ln]
    assert len(line) == 1 and "lower --train.lr" in line[0] and "step" in line[0], err[-2000:]
    rows = _rows(out)
    assert any(r.get("event") == "diverged" for r in rows)
    assert any(r.get("event") == "nonfinite_step" for r in rows)
    # whatever was written before the stop is finite: checkpoints, best/, last/
    assert _non_finite_tensors(out) == []
    for row in rows:  # a NaN validation score is never the best model
        if row.get("event") == "export" and row["path"] == "best":
            valid = [r["valid_loss"] for r in rows if r["step"] == row["step"] and "valid_loss" in r]
            assert valid and valid[0] is not None
    assert not (out / "summary.json").exists()


def test_save_pretrained_and_export_refuse_non_finite_weights(tiny_whisper_dir, sentences_corpus, tmp_path):
    summary = distill(_cfg(tiny_whisper_dir, sentences_corpus, tmp_path / "run", max_steps=4))
    assert summary["skipped_updates"] == 0
    student = load_student(tmp_path / "run")
    name, param = next(iter(student.stack.named_parameters()))
    with torch.no_grad():
        param.view(-1)[0] = float("nan")
    with pytest.raises(NonFiniteError, match=f"stack.{name}"):
        student.save_pretrained(tmp_path / "saved")
    with pytest.raises(NonFiniteError, match=f"stack.{name}"):
        export_student(student, tmp_path / "export")
    assert not (tmp_path / "saved").exists() and not (tmp_path / "export").exists()


_NAN_ON_RANK_1 = '''
import os
import torch
import distill.training.distillation as train

_loss = train.DistillObjective.loss

def loss(self, batch, step, model):
    value, logs = _loss(self, batch, step, model)
    if os.environ.get("RANK") == "1" and step >= 3:
        value = value * float("nan")
    return value, logs

train.DistillObjective.loss = loss
'''


@pytest.mark.slow
def test_a_non_finite_loss_on_one_rank_stops_every_rank(tiny_whisper_dir, sentences_corpus, tmp_path):
    """Only rank 1 sees NaN: the flag is reduced, so both ranks skip the same steps and stop together."""
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(_NAN_ON_RANK_1)
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--main_process_port", str(free_port()), "-m", "distill.cli",
           *_args(tiny_whisper_dir, sentences_corpus, out, "--train.max_steps", "30", "--train.eval_every", "2",
                  "--train.save_every", "2", "--train.nonfinite_patience", "3")]
    proc = start(cmd, {**LAUNCH_ENV, "PYTHONPATH": f"{hook}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"})
    try:
        _, err = proc.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail("a rank hung after the other saw a non-finite loss")
    assert proc.returncode != 0
    # both ranks stop at the same step: rank 1's NaN from step 4 on, three steps of patience
    stops = re.findall(r"training diverged at step (\d+): .*?\(last: ([^)]*)\)", err)
    assert [s for s, _ in stops] == ["6", "6"], err[-3000:]
    assert all("loss not finite on 1 of 2 processes" in what for _, what in stops)
    assert _non_finite_tensors(out) == []
    steps = sorted(int(p.name[5:]) for p in (out / "checkpoints").glob("step_*"))
    assert steps and max(steps) <= 4


# -- 2. damaged checkpoints -------------------------------------------------------------------------

def test_resume_falls_back_from_a_truncated_newest_checkpoint(tiny_whisper_dir, sentences_corpus, tmp_path, caplog):
    out = tmp_path / "run"
    cfg = _cfg(tiny_whisper_dir, sentences_corpus, out, max_steps=8, keep_checkpoints=3)
    distill(cfg)
    model = out / "checkpoints" / "step_8" / "model.safetensors"
    model.write_bytes(model.read_bytes()[: model.stat().st_size // 2])
    assert "model.safetensors" in verify_checkpoint(out / "checkpoints" / "step_8")
    summary = distill(replace(cfg, train=replace(cfg.train, max_steps=12, resume=True)))
    assert summary["resumed_from_step"] == 4 and summary["steps"] == 12
    assert "step_8 is damaged" in caplog.text and "model.safetensors holds" in caplog.text
    assert (out / "checkpoints" / "damaged_step_8" / "model.safetensors").is_file()  # kept, not deleted
    assert verify_checkpoint(out / "checkpoints" / "step_12") is None
    resume_rows = [r for r in _rows(out) if r.get("event") == "resume"]
    assert resume_rows[-1]["from"].endswith("step_4")


def test_resume_with_no_intact_checkpoint_names_the_folder(tiny_whisper_dir, sentences_corpus, tmp_path):
    out = tmp_path / "run"
    cfg = _cfg(tiny_whisper_dir, sentences_corpus, out, max_steps=4)
    distill(cfg)
    (out / "checkpoints" / "step_4" / "trainer_state.json").write_text("{\"step\": 4")
    with pytest.raises(ValueError, match=f"no intact checkpoint in {out / 'checkpoints'}.*trainer_state.json"):
        distill(replace(cfg, train=replace(cfg.train, max_steps=8, resume=True)))
    assert (out / "checkpoints" / "damaged_step_4").is_dir()
    # asked again, it still refuses: it never starts afresh over the earlier run's files
    with pytest.raises(ValueError, match="no intact checkpoint.*damaged_step_4"):
        distill(replace(cfg, train=replace(cfg.train, max_steps=8, resume=True)))
    assert (out / "metrics.jsonl").is_file() and (out / "checkpoints" / "damaged_step_4").is_dir()


# -- 3. no pickle from a run folder ---------------------------------------------------------------

class _Plant:
    """Unpickling this writes a marker file: proof that a pickle from the run folder was executed."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (Path.write_text, (Path(self.marker), "executed"))


def test_resume_never_unpickles_what_a_run_folder_holds(tiny_whisper_dir, sentences_corpus, tmp_path):
    out = tmp_path / "run"
    cfg = _cfg(tiny_whisper_dir, sentences_corpus, out, max_steps=4)
    distill(cfg)
    marker = tmp_path / "marker"
    payload = pickle.dumps(_Plant(marker))
    newest = out / "checkpoints" / "step_4"
    # what Accelerate's load_state would read (and torch.load with weights_only=False would run)
    for name in ("custom_checkpoint_0.pkl", "random_states_0.pkl", "optimizer.bin", "scheduler.bin"):
        (newest / name).write_bytes(payload)
    # and a checkpoint in Accelerate's own layout, newer than the rest
    legacy = out / "checkpoints" / "step_6"
    legacy.mkdir()
    for name in ("custom_checkpoint_0.pkl", "random_states_0.pkl", "optimizer.bin", "trainer_state.json"):
        (legacy / name).write_bytes(payload)
    assert "pickled state" in verify_checkpoint(legacy)
    summary = distill(replace(cfg, train=replace(cfg.train, max_steps=6, resume=True)))
    assert summary["resumed_from_step"] == 4
    assert not marker.exists()
    # every file resume reads is safetensors or JSON
    manifest = json.loads((out / "checkpoints" / "step_6" / "checkpoint.json").read_text())
    assert all(n.endswith((".safetensors", ".json")) for n in manifest["files"])


# -- 5. reused run folders --------------------------------------------------------------------------

def test_a_second_run_into_the_same_out_is_refused(tiny_whisper_dir, sentences_corpus, tmp_path):
    out = tmp_path / "run"
    cfg = _cfg(tiny_whisper_dir, sentences_corpus, out, max_steps=4)
    distill(cfg)
    before = {p.relative_to(out): p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    with pytest.raises(ValueError, match="already holds a run.*--train.resume true.*--overwrite true"):
        distill(replace(cfg, train=replace(cfg.train, max_steps=2)))
    after = {p.relative_to(out): p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    assert after == before  # nothing touched
    (out / "test.json").write_text("{}")  # an earlier run's output the new one does not write
    summary = distill(replace(cfg, train=replace(cfg.train, max_steps=2), overwrite=True))
    assert summary["steps"] == 2
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_2"]
    assert not (out / "test.json").exists()  # nothing stale is left to be read as the new run's
    assert [r["step"] for r in _rows(out) if r.get("event") == "export"] == [2, 2]
    # overwrite is an action, not a setting: the run's config.yaml never carries it into a re-run
    assert "overwrite" not in (out / "config.yaml").read_text()


def test_every_run_writing_command_refuses_an_occupied_out(tmp_path, sentences_corpus, monkeypatch):
    from distill.jobs.analyze import AnalyzeConfig, run_analysis
    from distill.jobs.bench_run import BenchCommandConfig, run_bench
    from distill.jobs.finetune_run import FinetuneConfig
    from distill.jobs.paper import PaperConfig, run_paper
    from distill.jobs.pipeline import PipelineConfig, run_pipeline
    from distill.jobs.prune_run import PruneConfig, run_prune
    from tasks.superb.evaluate import EvaluateConfig
    from tasks.superb.suite import evaluate

    out = tmp_path / "taken"
    out.mkdir()
    (out / "report.json").write_text("{}")
    calls = {
        "pipeline": lambda: run_pipeline(PipelineConfig(out=str(out))),
        "paper": lambda: run_paper(PaperConfig(out=str(out))),
        "evaluate": lambda: evaluate(EvaluateConfig(task="ks", model="x", data=str(tmp_path), out=str(out))),
        "export": lambda: export(ExportConfig(model=str(tmp_path), out=str(out))),
        "bench": lambda: run_bench(BenchCommandConfig(models=["whisper-tiny.en"], out=str(out))),
        "analyze": lambda: run_analysis(AnalyzeConfig(data=[str(sentences_corpus)], out=str(out))),
        "prune": lambda: run_prune(PruneConfig(data=[str(sentences_corpus)], metric="reconstruction", out=str(out))),
    }
    # refused before any model loads
    for module in ("distill.models.teacher", "distill.jobs.analyze", "distill.jobs.prune_run"):
        monkeypatch.setattr(f"{module}.load_teacher", lambda *a, **k: pytest.fail("a teacher was loaded"))
    for name, call in calls.items():
        with pytest.raises(ValueError, match="already holds a run"):
            call()
    assert [p.name for p in out.iterdir()] == ["report.json"]
    assert FinetuneConfig().overwrite is False


def test_a_command_that_fails_before_work_leaves_no_folder(tmp_path, capsys):
    out = tmp_path / "never"
    assert main(["distill", "--data", str(tmp_path / "missing"), "--out", str(out)]) == 2
    assert "audio source not found" in capsys.readouterr().err
    assert not out.exists()
    kept = tmp_path / "kept"
    kept.mkdir()  # a folder the user made stays, even when empty
    assert main(["distill", "--data", str(tmp_path / "missing"), "--out", str(kept)]) == 2
    assert kept.is_dir()


def test_a_run_that_failed_before_work_does_not_block_its_rerun(tiny_whisper_dir, sentences_corpus, tmp_path,
                                                               capsys):
    """A setting found wrong after config.yaml was written: the corrected re-run needs no --overwrite."""
    out = tmp_path / "run"
    args = _args(tiny_whisper_dir, sentences_corpus, out, "--train.max_steps", "2", "--train.cache", "true",
                 "--cache.root", str(tmp_path / "cache"))
    assert main([*args, "--cache.max_gb", "1e-9"]) == 2
    assert "over cache.max_gb" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["config.yaml"]
    assert main(args) == 0


def test_skip_counts_are_equal_online_and_cached(tiny_whisper_dir, sentences_corpus, tmp_path):
    import shutil

    import numpy as np
    import soundfile as sf

    data = tmp_path / "data"
    shutil.copytree(sentences_corpus, data)
    (data / "not_audio.wav").write_bytes(b"this is not audio at all")
    sf.write(data / "empty.wav", np.zeros(0, np.float32), 16000)
    nan = 0.1 * np.ones(16000, np.float32)
    nan[5] = np.nan
    sf.write(data / "nan.wav", nan, 16000, subtype="FLOAT")
    sf.write(data / "short.wav", 0.1 * np.ones(100, np.float32), 16000)
    summaries = {}
    for cached in (False, True):
        cfg = _cfg(tiny_whisper_dir, data, tmp_path / f"run_{cached}", max_steps=30, cache=cached)
        cfg.cache.root, cfg.cache.shard_mb = str(tmp_path / "cache"), 0.05
        summaries[cached] = distill(cfg)  # several epochs: every file is read online too
    online, cached = summaries[False], summaries[True]
    assert set(online["skipped"]) == set(cached["skipped"])
    assert {Path(p).name for p in online["skipped"]} == {"not_audio.wav", "empty.wav", "nan.wav", "short.wav"}
    for s in (online, cached):
        assert s["files_listed"] == s["files_used"] + s["files_skipped"]
        assert (s["files_listed"], s["files_used"], s["files_skipped"]) == \
            (online["files_listed"], online["files_used"], 4)



def test_fp16_overflows_the_scaler_handles_are_routine_but_nan_losses_are_not(tmp_path):
    """Gradient overflows with finite losses while the loss scale is above 1 are the scaler's job (no
    stop); non-finite losses, or a scale that fell below 1, count toward the patience. (No GPU here:
    the guard is driven with a stand-in for Accelerate's scaler.)"""
    from types import SimpleNamespace

    from distill.training.checkpoints import TrainerState
    from distill.training.loop import TrainingDiverged, _DivergenceGuard

    scaler = SimpleNamespace(scale=65536.0, get_scale=lambda: scaler.scale)
    acc = SimpleNamespace(scaler=scaler, num_processes=1, device="cpu")
    run = SimpleNamespace(acc=acc, train=TrainConfig(nonfinite_patience=3, mixed_precision="fp16"), main=False,
                          out=tmp_path, checkpoints=SimpleNamespace(newest=lambda: None), log_event=lambda *a: None)
    guard, state = _DivergenceGuard(run), TrainerState()
    for _ in range(10):  # overflowing gradients, finite losses: the scaler halves its scale each time
        guard.add_loss(0.5)
        assert not guard.step_is_finite(float("inf"))
        state.step += 1
        scaler.scale /= 2
        guard.after_skipped_step(state)
    scaler.scale = 0.5  # overflowing even at a scale below 1: the gradients themselves are too large
    with pytest.raises(TrainingDiverged, match="3 steps in a row"):
        for _ in range(3):
            guard.add_loss(0.5)
            guard.step_is_finite(float("inf"))
            state.step += 1
            guard.after_skipped_step(state)
    guard, scaler.scale = _DivergenceGuard(run), 65536.0
    with pytest.raises(TrainingDiverged, match="loss nan"):
        for _ in range(3):
            guard.add_loss(float("nan"))
            guard.step_is_finite(float("nan"))
            state.step += 1
            guard.after_skipped_step(state)
