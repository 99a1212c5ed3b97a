"""The main job end to end on tiny settings: report keys are a contract later issues extend."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from distill.core.config import load_config
from distill.jobs.pipeline import PipelineConfig, run_pipeline
from distill.models.teacher import load_teacher

REQUIRED = {"params_frontend", "params_stack", "params_total", "cpu_seconds_per_audio_second", "ks_test_accuracy"}


@pytest.mark.slow
def test_pipeline_writes_report_for_teacher_and_every_student(tiny_whisper_dir, sentences_corpus, ks_corpus, fsc_corpus,
                                                              prompts_corpus, tmp_path, monkeypatch):
    from distill.core import plots

    drawn = {}  # every figure saved: its titles, read from the figure itself
    save = plots.save_figure

    def recording(fig, path, dpi=plots.DPI):
        drawn[str(path)] = [ax.get_title() for ax in fig.axes if ax.get_title()]
        return save(fig, path, dpi)

    monkeypatch.setattr(plots, "save_figure", recording)
    cfg = load_config(PipelineConfig, None, {
        "out": str(tmp_path / "run"), "teacher": str(tiny_whisper_dir), "distill_data": [str(sentences_corpus)],
        "ks_data": str(ks_corpus), "train.max_steps": 4, "train.eval_every": 2, "train.save_every": 4,
        "train.batch_seconds": 4.0, "train.crop_seconds": 1.5, "evaluate.steps": 6, "evaluate.eval_every": 3,
        "evaluate.batch_size": 8, "bench.rounds": 1, "bench.utterances": 2,
        "analysis.similarity.batch_size": 16, "analysis.similarity.knn_k": 3, "analysis.n_blocks": 2,
        "prune.similarity.knn_k": 3, "prune.probe.epochs": 5, "prune.comflp.top_k": 2,
        "layer_consistency.probe.epochs": 5, "layer_consistency.timing_steps": 2, "layer_consistency.ks_every_depth": True,
        "layer_consistency.timing_crop_seconds": 1.0, "layer_consistency.timing_batch_seconds": 4.0,
        "cache.root": str(tmp_path / "cache"), "student_steps": {"mimic-mlp": 6},
        "paper.finetune.max_steps": 6, "paper.finetune.eval_every": 3, "paper.finetune.batch_seconds": 4.0,
        "paper.stage1.max_steps": 4, "paper.stage1.eval_every": 2, "paper.stage1.batch_seconds": 4.0,
        "paper.stage2.max_steps": 4, "paper.stage2.eval_every": 2, "paper.stage2.batch_seconds": 4.0,
        "paper.analysis_utterances": 32, "paper.timing_utterances": 2, "paper.student_steps": {},
        "tasks": ["ks", "ic"], "task_data": {"ic": str(fsc_corpus)}, "task_steps": {"ic": 4},
        "prompts.out": str(prompts_corpus), "prompts.languages": ["en", "es"], "prompts.max_files": 16,
        "prompts.heldout_fraction": 0.34, "prompts.lexicon": False,
        "heldout_sentences.out": str(tmp_path / "heldout"), "heldout_sentences.speakers": 2,
        "heldout_sentences.utterances_per_speaker": 4, "heldout_sentences.max_words": 6,
        "real_speech.similarity.batch_size": 16, "real_speech.similarity.frames_per_utterance": 4,
        "real_speech.similarity.max_batches": 50,  # every utterance (fewer than 50 x 16 / 4)
        "lowrank_curve.fractions": [0.9], "lowrank_curve.calibration_utterances": 8,
    })
    # the tiny Whisper's frontend (its 1500-position table) is 70 % of it: width students aim above that
    sizes = {"structured": {"target": 0.85, "final_steps": 2}, "lowrank": {"target": 0.9, "calibration_utterances": 8}}
    cfg.students = [s.with_options(**sizes[s.kind]) if s.kind in sizes else s for s in cfg.students]
    report = run_pipeline(cfg)
    run = tmp_path / "run"
    saved = json.loads((run / "report.json").read_text())
    students = ["mimic-mlp", "mimic-transformer", "distilhubert", "shared", "pruned-distilled", "structured", "lowrank"]
    assert list(saved["models"]) == ["teacher", *students, "pruned-comflp"]
    suite = saved["suite"]  # --tasks ks,ic: IC through s3prl for every model, in the SUPERB table
    assert set(suite["models"]) == set(saved["models"]) and suite["tasks"] == ["ic"] and suite["reference"] == "teacher"
    assert all(row["tasks"]["ic"]["test_n"] > 0 for row in suite["models"].values())
    assert "| mimic-mlp |" in (run / "suite" / "suite.md").read_text()
    teacher = saved["models"]["teacher"]
    for name, entry in saved["models"].items():
        assert REQUIRED <= entry.keys(), name
        assert entry["params_total"] == entry["params_frontend"] + entry["params_stack"]
    for name in students + ["pruned-comflp"]:
        s = saved["models"][name]
        assert s["stack_compression_pct"] == pytest.approx(100 * (1 - s["params_stack"] / teacher["params_stack"]))
        if teacher["ks_test_accuracy"] > saved["ks"]["chance_accuracy"]:
            assert s["retention_pct"] == pytest.approx(100 * s["ks_test_accuracy"] / teacher["ks_test_accuracy"])
        else:  # a tiny teacher at chance has nothing to retain
            assert s["retention_pct"] is None
        assert s["params_frontend"] == teacher["params_frontend"] and s["describe"]
        assert load_teacher(s["path"]).num_layers == s["num_layers"]
    for name in students:  # every export loads as a teacher: plain architectures and the mimic folders alike
        assert load_teacher(saved["models"][name]["export"]).num_layers == saved["models"][name]["num_layers"]
        card = (Path(saved["models"][name]["export"]) / "README.md").read_text()  # results + how to reproduce
        assert "## Evaluation" in card and "stackdistill evaluate --task ks --model" in card and "n = " in card
        assert "training data" in card and "onnxruntime" in card
    assert report["models"]["mimic-mlp"]["residual"] is True
    assert saved["models"]["distilhubert"]["kind"] == "distilhubert"
    # the pruned student starts from CoMFLP's pick: before and after distillation in one report
    assert saved["models"]["pruned-distilled"]["removed_layers"] == saved["models"]["pruned-comflp"]["removed_layers"]
    # students aim at the block boundary found by the analysis (2 blocks asked for)
    targets = saved["analysis"]["mimic_targets"]
    assert len(targets) == 2 and targets[-1] == 3
    assert saved["models"]["mimic-transformer"]["target_layers"] == targets
    assert saved["models"]["pruned-comflp"]["num_layers"] == 3 - len(saved["models"]["pruned-comflp"]["removed_layers"])
    assert set(saved["pruning"]["curve"]) == {"last", "first", "block_influence", "knn_block_influence", "similarity_block"}
    # the shared student at every depth, and the Layer Consistency claims measured on it
    lc = saved["layer_consistency"]["shared"]
    assert [p["depth"] for p in lc["curve"]] == [1, 2, 3]
    assert all(p["ks_test_accuracy"] is not None and 0 <= p["probe_accuracy"] <= 1 for p in lc["curve"])
    assert lc["curve"][-1]["ks_test_accuracy"] == saved["models"]["shared"]["ks_test_accuracy"]
    claims = lc["claims"]
    assert claims["param_ratio"]["ratio"] == pytest.approx(teacher["params_stack"] / saved["models"]["shared"]["params_stack"])
    assert claims["train_step"]["shared_sampled_seconds"] > 0 and claims["half_depth"]["depth"] == 1
    for png in ("prune/curve.png", "analysis/heatmap_linear_cka.png", "pareto.png",
                "layer_consistency/shared/depth_curve.png"):
        assert (run / png).is_file(), png
    # every picture titled with names, never a path (the teacher and the students are folders here)
    pictures = {str(p) for p in run.rglob("*.png")} - {str(run / "suite" / "suite.png")}
    assert pictures <= set(drawn) and len(pictures) > 20
    assert all(titles and not any("/" in t for t in titles) for titles in drawn.values()), drawn
    assert drawn[str(run / "layer_consistency" / "shared" / "depth_curve.png")][0].startswith(
        f"shared (student of {tiny_whisper_dir.name})")
    assert tiny_whisper_dir.name in drawn[str(run / "pareto.png")][0]
    # the frontier of the KS plot: no listed model is beaten by a smaller, more accurate one, every other one is
    size = {n: (e["params_total"], e["ks_test_accuracy"]) for n, e in saved["models"].items()}
    beaten = {n for n, (p, a) in size.items() for m, (q, b) in size.items()
              if m != n and q <= p and b >= a and (q, b) != (p, a)}
    assert set(saved["pareto_frontier"]) == set(size) - beaten and saved["pareto_frontier"]
    # one teacher-target cache, built once, read by every student: the union of their layers
    assert saved["cache"]["slots"] == ["features", 1, 2, 3] and not saved["cache"]["reused"]
    summaries = [json.loads((run / "distill" / n / "summary.json").read_text()) for n in students]
    assert {s["targets"]["cache"]["folder"] for s in summaries} == {saved["cache"]["folder"]}
    assert all(saved["models"][n]["distill"]["targets"] == "cache" for n in students)
    # student_steps; the structured student: 4 pruning steps, then its final 2 (the run's summary)
    assert [saved["models"][n]["distill"]["steps"] for n in students] == [6, 4, 4, 4, 4, 2, 4]
    widths = saved["models"]["structured"]["layer_widths"]
    assert len(widths) == 3 and saved["models"]["structured"]["params_fraction_of_teacher"] == pytest.approx(0.85, rel=0.02)
    assert saved["models"]["lowrank"]["ranks"] and saved["models"]["lowrank"]["params_fraction_of_teacher"] <= 0.9
    # low-rank without retraining, beside the pruning curves
    curve = saved["lowrank_curve"]
    (point,) = curve["points"]
    assert point["fraction"] <= 0.9 and 0 <= point["probe_accuracy"] <= 1 and point["ks_test_n"] == teacher["ks_test_n"]
    assert curve["teacher"]["ks"] == teacher["ks_test_accuracy"] and curve["layer_pruning"]["probe"] == saved["pruning"]["curve"]
    assert (run / "lowrank_curve" / "curve.png").stat().st_size > 5000
    assert "## Low-rank factorisation without retraining" in (run / "report.md").read_text()
    # before / after an earlier run (here: the same run)
    from distill.jobs.pipeline import compare_with_baseline
    from distill.jobs.report import render_report

    earlier = json.loads(json.dumps(saved))  # an earlier run: other figures, one model it did not have
    earlier["date"], earlier["seconds"]["total"] = "2026-01-01", 1234.0
    earlier["models"]["mimic-mlp"]["ks_test_accuracy"] = 0.125
    earlier["models"]["mimic-mlp"]["distill"].update(steps=99, best_valid_loss=9.5)
    del earlier["models"]["lowrank"]
    (tmp_path / "earlier.json").write_text(json.dumps(earlier))
    base = compare_with_baseline(saved, str(tmp_path / "earlier.json"))
    row = base["models"]["mimic-mlp"]
    assert row["before"]["ks_test_accuracy"] == 0.125 and row["before"]["steps"] == 99
    assert row["before"]["best_valid_loss"] == 9.5 and row["after"]["steps"] == 6
    assert row["after"]["ks_test_accuracy"] == saved["models"]["mimic-mlp"]["ks_test_accuracy"]
    assert row["after"]["best_valid_loss"] == saved["models"]["mimic-mlp"]["distill"]["best_valid_loss"]
    assert "lowrank" not in base["models"] and base["date"] == "2026-01-01"
    assert base["seconds_total"] == {"before": 1234.0, "after": saved["seconds"]["total"]}
    text = render_report({**saved, "baseline": base})
    assert "Against the earlier run" in text and "| mimic-mlp | 99 -> 6 | 9.5000 -> " in text and "12.50 % -> " in text
    # both protocols per model, every accuracy with its test-set size and 95 % interval
    n_test = teacher["ks_test_n"]
    assert n_test == len(list((ks_corpus / "test").rglob("*.wav")))
    for name, entry in saved["models"].items():
        lo, hi = entry["ks_test_ci95"]
        assert lo <= entry["ks_test_accuracy"] <= hi and entry["ks_test_n"] == n_test
    assert teacher["paper_test_accuracy"] == saved["paper"]["models"]["teacher"]["test"]["accuracy"]
    assert teacher["paper_retention_pct"] is None
    for name in ("mimic-mlp", "mimic-transformer", "pruned-comflp"):
        entry = saved["models"][name]
        assert entry["paper_retention_pct"] == pytest.approx(100 * entry["paper_test_accuracy"] /
                                                             teacher["paper_test_accuracy"])
        assert entry["paper_test"]["n"] == n_test
    assert saved["models"]["distilhubert"]["paper_test_accuracy"] is None  # not a paper-protocol student
    md = (run / "report.md").read_text()
    assert "Both protocols, side by side" in md and "redundancy paper's protocol" in md
    assert "mimic-transformer" in md and "KS test acc" in md and "Layer consistency" in md
    assert saved["models"]["shared"]["describe"] in md
    # real recorded speech: minutes per distillation source, the three checks, in the report
    from distill.data.corpus import list_audio
    from tasks.corpora.prompts import manifest_rows

    for source, minutes in saved["distill_minutes"].items():
        assert minutes == pytest.approx(sum(i.num_samples for i in list_audio(source)[0]) / 16000 / 60)
    rs = saved["real_speech"]
    assert not rs["teacher_wer"]["measured"] and "CTranslate2" in rs["teacher_wer"]["reason"]  # no decoder here
    held = manifest_rows(prompts_corpus, "heldout")
    assert rs["blocks"]["real"]["counts"]["utterances"] == len(held) and rs["real_data"] == [str(prompts_corpus / "heldout")]
    assert rs["blocks"]["synthetic"]["counts"]["utterances"] == 8  # 2 speakers x 4 held-out sentences
    real_m, synth_m = (np.asarray(rs["blocks"][k]["matrix"]) for k in ("real", "synthetic"))
    assert rs["blocks"]["mean_abs_difference"] == pytest.approx(np.abs(real_m - synth_m)[~np.eye(4, dtype=bool)].mean())
    assert set(rs["reconstruction"]) == set(students)
    frames = {k: {r[k]["all"]["frames"] for r in rs["reconstruction"].values()} for k in ("real", "synthetic")}
    assert all(len(f) == 1 for f in frames.values())  # every student measured on the same frames
    for row in rs["reconstruction"].values():
        assert row["cosine_drop"] == pytest.approx(row["synthetic"]["all"]["cosine"] - row["real"]["all"]["cosine"])
        assert all(-1 <= row[k]["all"]["cosine"] <= 1 and row[k]["all"]["l1"] > 0 for k in ("real", "synthetic"))
    assert "## Real recorded speech" in md and "WER was not measured" in md
    for png in ("heatmap_real.png", "heatmap_synthetic.png", "reconstruction.png"):
        assert (run / "real_speech" / png).stat().st_size > 5000, png


def test_student_names_must_be_distinct(tmp_path):
    cfg = load_config(PipelineConfig, None, {"out": str(tmp_path), "students": [{"name": "a"}, {"name": "a"}]})
    with pytest.raises(ValueError, match="distinct"):
        run_pipeline(cfg)
