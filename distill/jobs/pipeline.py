"""The main job: corpora, layer similarity, pruning, students, SUPERB KS on all of them, report.

With no settings and no network it uses the offline teacher (Whisper tiny.en) and synthetic
corpora cached where ``sentences.out`` and ``ks_corpus.out`` say, and the real Asterisk prompts
(``prompts.out``). Distillation uses the sentences, the KS train root (audio only, labels unused:
in-domain unlabeled speech, as the redundancy paper distils on the task's audio) and the prompts'
training split (real recorded speech). Output folder (``out``)::

    config.yaml                  resolved settings
    analysis/  prune/            layer similarity and heatmaps; pruning curves and CoMFLP's pick
    distill/<student>/           each distillation run (see distill.training.distillation), all reading one teacher-target
                                 cache (distill.data.cache, under cache.root) built once for every student
    students/<student>/          each exported student (a plain folder of the teacher's architecture
                                 where the student is one, else with its modelling code) + model card
    eval/<model>/                s3prl SUPERB KS runs, each with metrics.json
    layer_consistency/           the shared student at every depth: KS, probe, CPU time, claims
    paper/                       the redundancy paper's protocol on the same KS corpus (distill.jobs.paper)
    real_speech/                 the teacher's WER, blocks and students' reconstruction on held-out real
                                 against synthetic speech (distill.jobs.real_speech)
    pareto.png                   KS accuracy against parameters, teacher included
    report.json  report.md       the comparison (see distill.jobs.report)
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, replace
from datetime import date
from pathlib import Path

import torch

from distill.core.config import save_config
from distill.core.fsutil import claim_run_folder, write_json_atomic, write_text_atomic
from distill.core.names import readable_name
from distill.core.pareto import non_dominated
from distill.core.plots import pareto
from distill.core.provenance import environment
from distill.data.cache import CacheConfig
from distill.data.corpus import AudioDataset, collate_audio, list_audio
from distill.deploy.bench import seconds_per_audio_second
from distill.deploy.export import export_student, load_student, write_card_evaluation
from distill.jobs.analyze import AnalyzeConfig, run_analysis
from distill.jobs.layer_consistency import LayerConsistencyConfig, measure_layer_consistency
from distill.jobs.lowrank_curve import LowRankCurveConfig, run_lowrank_curve
from distill.jobs.paper import PaperConfig, run_paper
from distill.jobs.prune_run import PruneConfig, run_prune
from distill.jobs.real_speech import RealSpeechConfig, run_real_speech_checks
from distill.jobs.report import render_report
from distill.models.teacher import OFFLINE_DEFAULT, load_teacher
from distill.training.distillation import DistillConfig, TrainConfig, cache_for_students, distill
from students.lowrank import LowRankOptions
from students.mimic import MimicOptions
from students.registry import StudentSpec, student_name
from tasks.corpora.layouts import resolve_ks_roots
from tasks.corpora.prompts import PromptsConfig, build_prompts, manifest_rows
from tasks.corpora.superb_corpora import synthetic_root
from tasks.corpora.synthetic import SentencesConfig, SpeechCommandsConfig, build_sentences, build_speech_commands
from tasks.probe import run_probe
from tasks.superb import state_cache
from tasks.superb.evaluate import EvaluateConfig
from tasks.superb.protocol import retention_pct
from tasks.superb.suite import SuiteConfig, evaluate, run_suite

log = logging.getLogger(__name__)

PRUNED = "pruned-comflp"


@dataclass
class BenchConfig:
    utterances: int = field(default=8, metadata={"help": "utterances in the timed batch"})
    rounds: int = field(default=5, metadata={"help": "timed rounds (median kept)"})
    threads: int = field(default=2, metadata={"help": "torch CPU threads while timing"})


# The cached targets make a mimic student's step cheap (11-70 ms here): these students, the only ones
# under a third of the teacher, were far from converged, so the saved time goes to them (the MLP's
# validation loss: 0.597 at 8,000 steps, 0.585 at 16,000). Students made of teacher layers pay their
# own forward and backward (about 0.15 s a step) and keep train.max_steps. The budgets are cut to keep
# the whole default run near 30 minutes beside the paper protocol. docs/results.md.
DEFAULT_STUDENT_STEPS = {"mimic-mlp": 8000, "mimic-transformer": 4000}


def _default_students() -> list[StudentSpec]:
    return [
        StudentSpec(name="mimic-mlp", kind="mimic", sections={"mimic": MimicOptions(block_type="mlp", residual=True)}),
        StudentSpec(name="mimic-transformer", kind="mimic", sections={"mimic": MimicOptions(block_type="transformer")}),
        StudentSpec(name="distilhubert", kind="distilhubert"),
        StudentSpec(name="shared", kind="shared"),
        StudentSpec(name="pruned-distilled", kind="pruned"),
        # width instead of depth: DPHuBERT-style pruning to a quarter, LiteASR-style factorisation to a third
        StudentSpec(name="structured", kind="structured"),
        StudentSpec(name="lowrank", kind="lowrank", sections={"lowrank": LowRankOptions(target=0.33)}),
    ]


@dataclass
class PipelineConfig:
    out: str = field(default="runs/pipeline", metadata={"help": "output folder"})
    overwrite: bool = field(default=False, metadata={"help": "write over an earlier run in out (else refused)"})
    teacher: str = field(default=OFFLINE_DEFAULT, metadata={"help": "teacher spec"})
    distill_data: list[str] = field(default_factory=list,
                                    metadata={"help": "distillation audio (default: synthetic sentences + KS train + real prompts' train split)"})
    ks_data: str = field(default="", metadata={"help": "Speech Commands root with train/ test/ (default: synthetic)"})
    sentences: SentencesConfig = field(default_factory=lambda: SentencesConfig(speakers=40, utterances_per_speaker=12))
    real_prompts: bool = field(default=True, metadata={
        "help": "real recorded speech: the Asterisk prompts' training split joins the distillation audio, and the "
                "real-speech checks run on its held-out split"})
    prompts: PromptsConfig = field(default_factory=PromptsConfig, metadata={"help": "the real prompts corpus"})
    # never distilled on: other texts and speakers than the training sentences (another seed)
    heldout_sentences: SentencesConfig = field(default_factory=lambda: SentencesConfig(
        out="data/sentences-heldout", speakers=20, utterances_per_speaker=8, seed=1))
    real_speech: RealSpeechConfig = field(default_factory=RealSpeechConfig, metadata={
        "help": "checks on real speech: the teacher's WER, blocks real vs synthetic, students' reconstruction"})
    # 72 test speakers: 1,108 test clips, a 95 % interval of at most +-3 points on every accuracy
    ks_corpus: SpeechCommandsConfig = field(default_factory=lambda: SpeechCommandsConfig(snr_db=5.0, test_speakers=72,
                                                                                        test_silence=100))
    students: list[StudentSpec] = field(default_factory=_default_students,
                                        metadata={"help": "students to distil and compare (YAML list of specs)"})
    train: TrainConfig = field(default_factory=lambda: TrainConfig(max_steps=800, eval_every=200, save_every=800,
                                                                   cache=True))
    student_steps: dict = field(default_factory=lambda: dict(DEFAULT_STUDENT_STEPS), metadata={
        "help": "distillation steps per student name, overriding train.max_steps (YAML mapping)"})
    cache: CacheConfig = field(default_factory=CacheConfig, metadata={"help": "teacher-target cache (train.cache)"})
    baseline_report: str = field(default="", metadata={
        "help": "an earlier run's report.json: report.md compares validation loss and KS before / after"})
    analysis: AnalyzeConfig = field(default_factory=lambda: AnalyzeConfig(crop_seconds=1.0, max_utterances=1024),
                                    metadata={"help": "layer similarity on the KS train audio (teacher/data/out set here)"})
    prune: PruneConfig = field(default_factory=lambda: PruneConfig(crop_seconds=1.0),
                               metadata={"help": "pruning curves + CoMFLP, probe on KS train (teacher/data/out set here)"})
    run_prune: bool = field(default=True, metadata={"help": "pruning curves and CoMFLP (adds a pruned model)"})
    lowrank_curve: LowRankCurveConfig = field(default_factory=LowRankCurveConfig, metadata={
        "help": "low-rank factorisation without retraining at several sizes: probe, KS, CPU time"})
    # every model at its own best downstream lr (by validation), then over two downstream seeds (issue 17)
    evaluate: EvaluateConfig = field(default_factory=lambda: EvaluateConfig(
        steps=250, eval_every=50, lr_grid=[1e-3, 1e-2], seeds=2))
    # the depth curve by the probe (KS through s3prl at the full depth only): three s3prl runs fewer
    layer_consistency: LayerConsistencyConfig = field(default_factory=lambda: LayerConsistencyConfig(
        ks_every_depth=False))
    tasks: list[str] = field(default_factory=lambda: ["ks"], metadata={
        "help": "SUPERB tasks: ks always; sid, ic, pr, asr, er add the suite table (docs/superb.md: what fits the budget)"})
    task_data: dict = field(default_factory=dict, metadata={
        "help": "task -> dataset root for --tasks (default: the synthetic corpora, built when missing)"})
    task_steps: dict = field(default_factory=dict, metadata={"help": "task -> downstream steps (default: evaluate.steps)"})
    run_paper: bool = field(default=True, metadata={"help": "the redundancy paper's protocol on KS, beside SUPERB's"})
    paper: PaperConfig = field(default_factory=PaperConfig,
                               metadata={"help": "its settings (teacher, data, out and cache set here)"})
    bench: BenchConfig = field(default_factory=BenchConfig)


def _timing_batch(data: list[str], n: int):
    items, _ = list_audio(data)
    ds = AudioDataset(items[:n], max_samples=None, random_crop=False)
    return collate_audio([ds[i] for i in range(len(ds))])


def _model_entry(info, eval_metrics: dict, speed: float) -> dict:
    return {"params_frontend": info.params_frontend, "params_stack": info.params_stack,
            "params_total": info.params_total, "num_layers": info.num_layers,
            "cpu_seconds_per_audio_second": speed, "ks_test_accuracy": eval_metrics["value"],
            "ks_test_n": eval_metrics["test_n"], "ks_test_ci95": eval_metrics["ci95"],
            "ks_valid_best_accuracy": eval_metrics.get(f"valid_best_{eval_metrics['metric']}"),
            "ks_lr": eval_metrics.get("lr"), "ks_lr_selection": eval_metrics.get("lr_selection"),
            "ks_seed_runs": eval_metrics.get("seed_runs")}


def _resolve_spec(spec: StudentSpec, targets: list[int], comflp_removed: list[int] | None) -> StudentSpec:
    """Fill what the pipeline knows: mimic targets at the block boundary, CoMFLP's pick for pruned."""
    if spec.kind == "mimic" and not spec.options.target_layers:
        return spec.with_options(target_layers=list(targets))
    if spec.kind == "pruned" and not spec.options.removed and spec.options.ordering == "comflp" and comflp_removed:
        return spec.with_options(removed=list(comflp_removed))
    return spec


def run_pipeline(cfg: PipelineConfig) -> dict:
    out = Path(cfg.out)
    names = [student_name(s) for s in cfg.students]
    if not names or len(set(names)) != len(names) or {"teacher", PRUNED} & set(names):
        raise ValueError(f"students need distinct names other than 'teacher' and {PRUNED!r}, got {names}")
    for name, steps in cfg.student_steps.items():
        if not isinstance(steps, int) or steps < 1:
            raise ValueError(f"student_steps[{name!r}] must be a positive number of steps, got {steps!r}")
        if name not in names:
            log.warning("student_steps names %r, which is not one of the students %s", name, names)
    claim_run_folder(out, overwrite=cfg.overwrite)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")
    # the folder is claimed: every stage below writes its own sub-folder of it
    cfg = replace(cfg, evaluate=replace(cfg.evaluate, overwrite=True), paper=replace(cfg.paper, overwrite=True))
    t_start = time.time()

    from tasks.superb.registry import get_task

    for task in cfg.tasks:
        get_task(task)  # an unknown task fails now, not after an hour of distillation

    # 1. corpora (cached by their settings)
    ks_data = cfg.ks_data
    if not ks_data:
        build_speech_commands(cfg.ks_corpus)
        ks_data = cfg.ks_corpus.out
    ks_train, _ = resolve_ks_roots(ks_data, cfg.evaluate.test_data)
    prompts = build_prompts(cfg.prompts) if cfg.real_prompts else None
    distill_data = list(cfg.distill_data) or [str(build_sentences(cfg.sentences)), str(ks_train)] + (
        [str(prompts / "train")] if prompts else [])
    distill_minutes = audio_minutes(distill_data)

    # 2. layer similarity and its blocks; the boundary is where mimic students aim
    analysis = run_analysis(replace(cfg.analysis, teacher=cfg.teacher, data=[str(ks_train)],
                                    out=str(out / "analysis"), overwrite=True))
    targets = analysis["mimic_targets"]

    # 3. pruning without retraining: curves per ordering, CoMFLP's pick becomes a model (and a student's start)
    pruning = None
    specs = {"teacher": cfg.teacher}
    if cfg.run_prune:
        pruning = run_prune(replace(cfg.prune, teacher=cfg.teacher, data=[str(ks_train)], out=str(out / "prune"),
                                    overwrite=True,
                                    probe=replace(cfg.prune.probe, data=str(ks_train))),
                            matrices=analysis["matrices"])
        specs[PRUNED] = pruning["search"]["pruned_path"]
    comflp_removed = pruning["search"]["best"]["removed"] if pruning else None

    # 4. the teacher's targets once for every student, then distil and export each
    teacher = load_teacher(cfg.teacher)
    resolved = [_resolve_spec(spec, targets, comflp_removed) for spec in cfg.students]
    cache = None
    if cfg.train.cache:
        cache = cache_for_students(teacher, resolved, distill_data, cfg.train, cfg.cache)
    runs, students = {}, {}
    for name, spec in zip(names, resolved):
        run_dir = out / "distill" / name
        train = replace(cfg.train, max_steps=int(cfg.student_steps.get(name, cfg.train.max_steps)))
        runs[name] = distill(DistillConfig(teacher=cfg.teacher, data=distill_data, out=str(run_dir),
                                           student=spec, train=train, cache=cfg.cache, overwrite=True))
        student = load_student(run_dir)
        export_student(student, out / "students" / name,
                       extra={"training data": f"{', '.join(distill_data)} ({runs[name]['files_used']:,} files)",
                              "distillation steps": runs[name]["steps"],
                              "best validation loss": f"{runs[name]['best_valid_loss']:.4f}"})
        students[name] = student
        specs[name] = str(run_dir / "best")
    models = {"teacher": teacher, **students}
    if pruning:
        models[PRUNED] = load_teacher(specs[PRUNED])

    # 5. SUPERB KS through s3prl: teacher, students, pruned model
    evals = {n: evaluate(replace(cfg.evaluate, model=spec, data=ks_data, out=str(out / "eval" / n)))
             for n, spec in specs.items()}

    # 6. speed, side by side in this run
    batch = _timing_batch(distill_data, cfg.bench.utterances)
    threads = torch.get_num_threads()
    torch.set_num_threads(cfg.bench.threads)
    speed = seconds_per_audio_second(models, batch["wav"], batch["lengths"], rounds=cfg.bench.rounds)
    torch.set_num_threads(threads)

    # 6b. low-rank factorisation without retraining, beside the pruning curves
    lowrank, t_lowrank = None, time.time()
    if cfg.lowrank_curve.enabled:
        probe_cfg = replace(cfg.prune.probe, data=str(ks_train),
                            cache_dir=cfg.prune.probe.cache_dir or str(out / "lowrank_curve" / "probe_cache"))
        teacher_probe = pruning["curve"][next(iter(pruning["curve"]))][0] if pruning else \
            run_probe(teacher, probe_cfg)["accuracy"]
        lr = evals["teacher"].get("lr") or cfg.evaluate.lr
        lowrank = run_lowrank_curve(
            cfg.lowrank_curve, teacher, distill_data, probe_cfg,
            replace(cfg.evaluate, data=ks_data, lr=lr or 0.0, lr_grid=[], seeds=1), batch, out / "lowrank_curve",
            {"probe": teacher_probe, "ks": evals["teacher"]["value"], "cpu": speed["teacher"]},
            pruning["curve"] if pruning else None, rounds=cfg.bench.rounds)
    lowrank_seconds = time.time() - t_lowrank

    # 7. layer consistency: the shared student at every depth, against the paper's claims
    lc = {}
    for name, student in students.items():
        if student.kind == "shared" and cfg.layer_consistency.enabled:
            lc[name] = measure_layer_consistency(
                student, teacher, out / "layer_consistency" / name, cfg.layer_consistency,
                replace(cfg.evaluate, data=ks_data), str(ks_train), distill_data, batch, cfg.bench,
                full_depth_ks=evals[name], teacher_ks=evals["teacher"])

    # 8. the redundancy paper's protocol on the same KS corpus: fine-tuned teacher, mimic stages 1 and 2
    paper = None
    if cfg.run_paper:
        paper = run_paper(replace(cfg.paper, teacher=cfg.teacher, task="ks", data=ks_data, test_data=cfg.evaluate.test_data,
                                  out=str(out / "paper"), cache=cfg.cache),
                          pruned={PRUNED: comflp_removed} if comflp_removed else None)

    # the export cards get their results and the commands that reproduce them
    for name in students:
        m = evals[name]
        folder = out / "students" / name
        rows = {"SUPERB KS accuracy (frozen, s3prl)": (
            f"{100 * m['value']:.2f} % [{100 * m['ci95'][0]:.1f}, {100 * m['ci95'][1]:.1f}], n = {m['test_n']}",
            f"stackdistill evaluate --task ks --model {folder} --data {ks_data} --steps {cfg.evaluate.steps}")}
        row = (paper or {}).get("models", {}).get(name)
        if row is not None:
            rows["redundancy-paper protocol KS accuracy"] = (
                f"{100 * row['paper_test_accuracy']:.2f} % (stage 2, its own copy)", "stackdistill paper --task ks ...")
        write_card_evaluation(folder, rows, note=f"Measured by `stackdistill pipeline` on {date.today().isoformat()}.")

    # 8b. real recorded speech: is the teacher sound on it, do its blocks agree, do students generalise to it
    real = None
    if prompts and cfg.real_speech.enabled:
        real = run_real_speech_checks(
            teacher, students, manifest_rows(prompts, "heldout", "en"), [str(prompts / "heldout")],
            [str(build_sentences(cfg.heldout_sentences))], cfg.real_speech, out / "real_speech")

    # 9. more SUPERB tasks through s3prl (--tasks), teacher and students, as the suite's table
    suite = None
    extra_tasks = [t for t in cfg.tasks if t != "ks"]
    if extra_tasks:
        task_data = {t: cfg.task_data.get(t) or synthetic_root(t) for t in extra_tasks}
        suite = run_suite(SuiteConfig(tasks=extra_tasks, models=list(specs.values()), names=list(specs),
                                      data=task_data, steps=dict(cfg.task_steps), out=str(out / "suite"),
                                      evaluate=cfg.evaluate))

    state_cache.release()  # the last evaluated model's states, kept for a next run on it: none comes

    # 10. report
    t_info = teacher.info
    entries = {"teacher": {"name": cfg.teacher, "kind": "teacher", **_model_entry(t_info, evals["teacher"],
                                                                                  speed["teacher"])}}
    for name, model in models.items():
        if name == "teacher":
            continue
        info = model.info
        entries[name] = {
            "name": name, **_model_entry(info, evals[name], speed[name]), "path": specs[name],
            "stack_compression_pct": 100.0 * (1 - info.params_stack / t_info.params_stack),
            "total_compression_pct": 100.0 * (1 - info.params_total / t_info.params_total),
            "params_fraction_of_teacher": info.params_total / t_info.params_total,
            "retention_pct": retention_pct(evals[name], evals["teacher"]),
            "speedup": speed["teacher"] / speed[name],
        }
        if name in students:
            exported = load_teacher(str(out / "students" / name)).info  # what a user of the export loads
            entries[name].update(model.report_fields(), describe=model.describe(),
                                 export=str(out / "students" / name), params_total_export=exported.params_total,
                                 distill={**{k: runs[name][k] for k in ("steps", "best_valid_loss", "seconds",
                                                                        "seconds_per_step", "audio_seconds_seen",
                                                                        "files_used", "files_skipped", "loss")},
                                          "targets": runs[name]["targets"]["source"]})
        else:
            removed = pruning["search"]["best"]["removed"]
            entries[name].update(kind="pruned (no retraining)", removed_layers=removed,
                                 describe=f"the teacher without layers {removed} (CoMFLP's pick, no retraining)")
    for name, entry in entries.items():  # both protocols per model: SUPERB's above, the paper's here
        row = (paper or {}).get("models", {}).get(name)
        entry["paper_test_accuracy"] = None if row is None else row["paper_test_accuracy"]
        entry["paper_retention_pct"] = None if row is None or name == "teacher" else row["paper_retention_pct"]
        if row is not None:
            entry["paper_test"] = row["test"]
    sizes = {n: (e["params_total"] / 1e6, 100 * e["ks_test_accuracy"]) for n, e in entries.items()}
    pareto(sizes, out / "pareto.png", "parameters, total (millions)", "KS test accuracy (%), 95 % interval",
           f"KS accuracy against size: students of {readable_name(cfg.teacher)}", reference="teacher",
           vline=t_info.params_total / 3e6, vline_label="a third of the teacher",
           intervals={n: tuple(100 * v for v in e["ks_test_ci95"]) if e.get("ks_test_ci95") else None
                      for n, e in entries.items()})
    small = {n: e for n, e in entries.items() if n != "teacher" and e["params_fraction_of_teacher"] <= 1 / 3}
    best_small = max(small, key=lambda n: small[n]["ks_test_accuracy"]) if small else None
    report = {
        "date": date.today().isoformat(), "teacher": cfg.teacher, "models": entries,
        "distill_data": distill_data, "distill_minutes": distill_minutes,
        "real_speech": real,
        "best_under_a_third": None if best_small is None else {
            "name": best_small, "params_fraction_of_teacher": small[best_small]["params_fraction_of_teacher"],
            "retention_pct": small[best_small]["retention_pct"], "goal_retention_pct": 95.0,
            "met": (small[best_small]["retention_pct"] or 0.0) >= 95.0},
        "pareto_png": str(out / "pareto.png"),
        "pareto_frontier": non_dominated(sizes),  # smallest first: no model is smaller and more accurate
        "lowrank_curve": lowrank,
        "layer_consistency": lc,
        "paper": paper,
        "analysis": {"blocks": analysis["blocks"], "block_measure": analysis["block_measure"],
                     "mimic_targets": targets, "counts": analysis["counts"],
                     "heatmaps": sorted(str(p) for p in (out / "analysis").glob("heatmap_*.png"))},
        "pruning": None if pruning is None else {
            "curve": pruning["curve"], "metric": pruning["search"]["metric"],
            "full_model_metric": pruning["search"]["full_model_metric"],
            "comflp": {k: pruning["search"][k] for k in ("n_remove", "best", "candidates", "seconds")},
            "curve_png": str(out / "prune" / "curve.png")},
        "ks": {"data": ks_data, "steps": cfg.evaluate.steps, "lr_grid": list(cfg.evaluate.lr_grid),
               "seeds": cfg.evaluate.seeds, "metric": evals["teacher"]["metric"],
               "chance_accuracy": evals["teacher"]["chance"]},
        "suite": suite,
        "cache": None if cache is None else {
            "folder": str(cache.folder), "reused": cache.reused, "build_seconds": cache.manifest["build_seconds"],
            "segments": cache.manifest["segments"], "audio_seconds": cache.manifest["audio_seconds"],
            "slots": cache.slots, "bytes": cache.manifest["bytes"], "files_skipped": len(cache.manifest["skipped"])},
        "timing_batch": {"utterances": len(batch["indices"]), "audio_seconds": float(batch["lengths"].sum()) / 16000,
                         "threads": cfg.bench.threads, "rounds": cfg.bench.rounds},
        "environment": environment(),
        "seconds": {"total": time.time() - t_start,
                    **{f"distill_{k}": v.get("seconds_all_stages", v["seconds"]) for k, v in runs.items()},
                    **{f"eval_{k}": v["seconds"] for k, v in evals.items()},
                    **{f"layer_consistency_{k}": v["seconds"] for k, v in lc.items()},
                    **({"paper": paper["seconds"]["total"]} if paper else {}),
                    **({"lowrank_curve": lowrank_seconds} if lowrank else {}),
                    **({"real_speech": real["seconds"]} if real else {})},
    }
    if cfg.baseline_report:
        report["baseline"] = compare_with_baseline(report, cfg.baseline_report)
    write_json_atomic(out / "report.json", report)
    write_text_atomic(out / "report.md", render_report(report))
    return report


def audio_minutes(sources: list[str]) -> dict[str, float]:
    """Minutes of audio in each source (headers only), for the report."""
    minutes = {}
    for source in sources:
        items, _ = list_audio(source)
        minutes[source] = sum(i.num_samples for i in items) / 16000 / 60
    return minutes


def compare_with_baseline(report: dict, baseline_path: str) -> dict:
    """Per model: distillation steps, best validation loss, KS accuracy and retention, before and after."""
    import json

    path = Path(baseline_path)
    if not path.is_file():
        raise ValueError(f"baseline_report {path} not found (an earlier run's report.json)")
    before = json.loads(path.read_text())
    rows = {}
    for name, after in report["models"].items():
        old = before["models"].get(name)
        if old is None:
            continue
        rows[name] = {"before": _comparable(old), "after": _comparable(after)}
    return {"report": str(path), "date": before.get("date"), "models": rows,
            "seconds_total": {"before": before["seconds"]["total"], "after": report["seconds"]["total"]}}


def _comparable(entry: dict) -> dict:
    d = entry.get("distill") or {}
    return {"steps": d.get("steps"), "best_valid_loss": d.get("best_valid_loss"),
            "distill_seconds": d.get("seconds"), "ks_test_accuracy": entry["ks_test_accuracy"],
            "retention_pct": entry.get("retention_pct")}
