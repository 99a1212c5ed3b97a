"""The main job end to end on tiny settings: report keys are a contract later issues extend."""

from __future__ import annotations

import json

import pytest
from transformers import AutoModel

import students  # noqa: F401
from distill.config import load_config
from distill.pipeline import PipelineConfig, run_pipeline

REQUIRED = {"params_frontend", "params_stack", "params_total", "cpu_seconds_per_audio_second", "ks_test_accuracy"}


@pytest.mark.slow
def test_pipeline_writes_report_for_teacher_and_every_student(tiny_whisper_dir, sentences_corpus, ks_corpus, tmp_path):
    cfg = load_config(PipelineConfig, None, {
        "out": str(tmp_path / "run"), "teacher": str(tiny_whisper_dir), "distill_data": [str(sentences_corpus)],
        "ks_data": str(ks_corpus), "train.max_steps": 4, "train.eval_every": 2, "train.save_every": 4,
        "train.batch_seconds": 4.0, "train.crop_seconds": 1.5, "evaluate.steps": 6, "evaluate.eval_every": 3,
        "evaluate.batch_size": 8, "bench.rounds": 1, "bench.utterances": 2,
        "analysis.similarity.batch_size": 16, "analysis.similarity.knn_k": 3, "analysis.n_blocks": 2,
        "prune.similarity.knn_k": 3, "prune.probe.epochs": 5, "prune.comflp.top_k": 2,
    })
    report = run_pipeline(cfg)
    saved = json.loads((tmp_path / "run" / "report.json").read_text())
    assert saved["models"].keys() == {"teacher", "mimic-mlp", "mimic-transformer", "pruned-comflp"}
    teacher = saved["models"]["teacher"]
    for name, entry in saved["models"].items():
        assert REQUIRED <= entry.keys(), name
        assert entry["params_total"] == entry["params_frontend"] + entry["params_stack"]
    for name in ("mimic-mlp", "mimic-transformer", "pruned-comflp"):
        s = saved["models"][name]
        assert s["stack_compression_pct"] == pytest.approx(100 * (1 - s["params_stack"] / teacher["params_stack"]))
        assert s["retention_pct"] == pytest.approx(100 * s["ks_test_accuracy"] / teacher["ks_test_accuracy"])
        assert s["params_frontend"] == teacher["params_frontend"]
        AutoModel.from_pretrained(s["path"])  # the export loads
    assert report["models"]["mimic-mlp"]["residual"] is True
    # students aim at the block boundary found by the analysis (2 blocks asked for)
    targets = saved["analysis"]["mimic_targets"]
    assert len(targets) == 2 and targets[-1] == 3
    assert saved["models"]["mimic-transformer"]["target_layers"] == targets
    assert saved["models"]["pruned-comflp"]["num_layers"] == 3 - len(saved["models"]["pruned-comflp"]["removed_layers"])
    assert set(saved["pruning"]["curve"]) == {"last", "first", "block_influence", "similarity_block"}
    assert (tmp_path / "run" / "prune" / "curve.png").is_file()
    assert (tmp_path / "run" / "analysis" / "heatmap_linear_cka.png").is_file()
    md = (tmp_path / "run" / "report.md").read_text()
    assert "mimic-transformer" in md and "KS test accuracy" in md


def test_student_names_must_be_distinct(tmp_path):
    cfg = load_config(PipelineConfig, None, {"out": str(tmp_path), "students": [{"name": "a"}, {"name": "a"}]})
    with pytest.raises(ValueError, match="distinct"):
        run_pipeline(cfg)
