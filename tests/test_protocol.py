"""One model protocol: a student (or a pruned model) is accepted wherever a teacher is.

Each command runs with a student folder as its teacher: distill, analyze, prune, evaluate. Also
the defects found by trying the commands as a new user would.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf

from distill.cli import main
from distill.core.config import load_config
from distill.jobs.analyze import AnalyzeConfig, run_analysis
from distill.jobs.prune_run import PruneConfig, run_prune
from distill.models.teacher import load_teacher
from students.registry import StudentSpec, build_student

from . import references
from .conftest import save_tiny_model


@pytest.fixture(scope="module")
def student_folders(tiny_whisper_dir, tmp_path_factory):
    """A mimic student and a DistilHuBERT-style student (of a HuBERT teacher), saved as folders."""
    root = tmp_path_factory.mktemp("student_teachers")
    mimic = build_student(StudentSpec(kind="mimic"), load_teacher(str(tiny_whisper_dir)))
    mimic.save_pretrained(root / "mimic" / "best")
    hubert = load_teacher(str(save_tiny_model("hubert", root / "hubert", num_hidden_layers=4)))
    spec = StudentSpec(kind="distilhubert")
    spec.distilhubert.copy_layers = 3
    build_student(spec, hubert).save_pretrained(root / "dh")
    return {"mimic": root / "mimic" / "best", "distilhubert": root / "dh"}


def test_distill_from_a_student_folder(student_folders, sentences_corpus, tmp_path):
    """The README's `stackdistill distill --teacher runs/x/best` (it crashed before)."""
    common = ["--data", str(sentences_corpus), "--train.max_steps", "3", "--train.eval_every", "3",
              "--train.save_every", "3", "--train.batch_seconds", "4", "--train.crop_seconds", "1"]
    assert main(["distill", "--teacher", str(student_folders["mimic"]), "--out", str(tmp_path / "a"),
                 "--student.mimic.mimic_dim", "8", *common]) == 0
    summary = json.loads((tmp_path / "a" / "summary.json").read_text())
    assert summary["teacher"]["num_layers"] == 2 and summary["steps"] == 3
    # a student made of transformer layers is itself a teacher for a shared-layer student
    assert main(["distill", "--teacher", str(student_folders["distilhubert"]), "--out", str(tmp_path / "b"),
                 "--student.kind", "shared", *common]) == 0
    summary = json.loads((tmp_path / "b" / "summary.json").read_text())
    assert summary["student"]["kind"] == "shared" and summary["student"]["num_layers"] == 3


def test_analyze_a_student(student_folders, sentences_corpus, tmp_path):
    from distill.data.corpus import analysis_batches

    cfg = load_config(AnalyzeConfig, None, {
        "teacher": str(student_folders["distilhubert"]), "data": [str(sentences_corpus)], "out": str(tmp_path),
        "similarity.mode": "whole", "similarity.knn_k": 3, "crop_seconds": 1.0})
    result = run_analysis(cfg)
    assert result["num_layers"] == 3 and result["counts"]["samples"] == 16
    # the student goes through the teacher's path: its matrices are the measures on its own states
    loader, _ = analysis_batches(cfg.data, cfg.crop_seconds, cfg.batch_seconds, cfg.max_utterances, cfg.seed)
    means = references.utterance_means(load_teacher(str(student_folders["distilhubert"])), loader)
    assert len(means) == 4
    for a in range(4):
        for b in range(4):
            assert result["matrices"]["linear_cka"][a][b] == pytest.approx(references.linear_cka(means[a], means[b]),
                                                                           abs=1e-5)
            assert result["matrices"]["cosine"][a][b] == pytest.approx(references.mean_cosine(means[a], means[b]),
                                                                       abs=1e-5)
    assert (tmp_path / "heatmap_linear_cka.png").stat().st_size > 1000


@pytest.mark.parametrize("which", ["mimic", "distilhubert"])
def test_prune_a_student(student_folders, sentences_corpus, tmp_path, which):
    folder = student_folders[which]
    result = run_prune(load_config(PruneConfig, None, {
        "teacher": str(folder), "data": [str(sentences_corpus)], "out": str(tmp_path), "metric": "reconstruction",
        "similarity.batch_size": 8, "similarity.knn_k": 3, "crop_seconds": 1.0, "batch_seconds": 8.0}))
    n = load_teacher(str(folder)).num_layers
    assert len(result["search"]["best"]["removed"]) == n // 2
    pruned = load_teacher(str(tmp_path / "pruned"))  # a pruned student is saved as a student folder
    assert pruned.num_layers == n - n // 2 and pruned.kind == which


@pytest.mark.slow
def test_evaluate_a_student(student_folders, ks_corpus, tmp_path):
    assert main(["evaluate", "--task", "ks", "--model", str(student_folders["distilhubert"]), "--data",
                 str(ks_corpus), "--out", str(tmp_path), "--steps", "6", "--eval_every", "3",
                 "--batch_size", "8"]) == 0
    m = json.loads((tmp_path / "metrics.json").read_text())
    assert m["test_n"] == len(list((ks_corpus / "test").rglob("*.wav")))  # every test file scored, once
    correct = references.count_of(m["test_accuracy"], m["test_n"])  # right / n, a whole number right
    assert m["test_ci95"] == pytest.approx(references.wilson95(correct, m["test_n"]), abs=1e-9)


def test_analyze_counts_every_bad_file(tiny_whisper_dir, sentences_corpus, tmp_path):
    data = tmp_path / "data"
    good = sorted(sentences_corpus.rglob("*.flac"))[:6]
    data.mkdir()
    for i, f in enumerate(good):
        (data / f"good{i}.flac").write_bytes(f.read_bytes())
    (data / "header.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk")
    sf.write(data / "empty.wav", np.zeros(0, np.float32), 16000)
    nan = 0.1 * np.ones(8000, np.float32)
    nan[10] = np.nan
    sf.write(data / "nan.wav", nan, 16000, subtype="FLOAT")
    sf.write(data / "whole.wav", 0.1 * np.ones(16000, np.float32), 16000)
    raw = (data / "whole.wav").read_bytes()
    (data / "truncated.wav").write_bytes(raw[: len(raw) // 2])
    (data / "whole.wav").unlink()
    sf.write(data / "short.wav", 0.1 * np.ones(50, np.float32), 16000)
    result = run_analysis(load_config(AnalyzeConfig, None, {
        "teacher": str(tiny_whisper_dir), "data": [str(data)], "out": str(tmp_path / "out"),
        "similarity.batch_size": 3, "similarity.knn_k": 1, "crop_seconds": 1.0}))
    skipped = result["counts"]["skipped"]
    assert result["counts"]["files_skipped"] == 5
    assert {os.path.basename(p) for p in skipped} == {"header.wav", "empty.wav", "nan.wav", "truncated.wav",
                                                      "short.wav"}
    assert "truncated" in skipped[str(data / "truncated.wav")]


def test_unreachable_hub_id_is_one_clear_line(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    proc = subprocess.run([sys.executable, "-m", "distill.cli", "analyze", "--teacher", "facebook/hubert-base-ls960",
                           "--data", str(tmp_path), "--out", str(tmp_path / "o")],
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    err = [line for line in proc.stderr.splitlines() if "error" in line]
    assert len(err) == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert "facebook/hubert-base-ls960" in err[0] and "neither a local folder nor in the local Hugging Face cache" in err[0]
    assert "--teacher DIR" in err[0]


def test_the_protocol_imports_nothing_of_ours_and_students_never_load_the_teacher_loader():
    """The protocol module is the bottom (it is bundled into exports as is); importing the students
    does not pull in the teacher loader. The full order of the layers: tests/test_imports.py."""
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    tree = ast.parse((root / "distill" / "core" / "protocol.py").read_text())
    ours = [n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom)) and
            ((getattr(n, "module", None) or "").split(".")[0] in ("distill", "students", "tasks") or
             getattr(n, "level", 0) or any(a.name.split(".")[0] in ("distill", "students", "tasks") for a in n.names))]
    assert ours == []
    proc = subprocess.run([sys.executable, "-c", "import sys, students; "
                           "print(sorted(m for m in sys.modules if m.startswith('distill')))"],
                          capture_output=True, text=True, cwd=root, timeout=120)
    assert "distill.models.teacher" not in proc.stdout and "distill.core.protocol" in proc.stdout, proc.stdout + proc.stderr
