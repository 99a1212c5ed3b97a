"""The main job: synthesise corpora, distil students, evaluate teacher and students on KS, export, report.

With no settings and no network it uses the offline teacher (Whisper tiny.en) and synthetic
corpora cached where ``sentences.out`` and ``ks_corpus.out`` say. Distillation uses the
sentences and the KS train root (audio only, labels unused: in-domain unlabeled speech, as
the redundancy paper distils on the task's audio). Output folder (``out``)::

    config.yaml                  resolved settings
    distill/<student>/           each distillation run (see distill.train)
    students/<student>/          each exported student (Hugging Face folder + model card)
    eval/<model>/                s3prl SUPERB KS runs, each with metrics.json
    report.json  report.md       the comparison
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, replace
from datetime import date
from pathlib import Path

import torch

from students.factory import StudentSpec, student_name
from tasks.corpora import SentencesConfig, SpeechCommandsConfig, build_sentences, build_speech_commands
from tasks.keyword_spotting import EvaluateConfig, evaluate, resolve_ks_roots

from .bench import seconds_per_audio_second
from .config import save_config
from .data import AudioDataset, collate_audio, list_audio
from .export import export_hf
from .fsutil import write_json_atomic, write_text_atomic
from .prune_run import PruneConfig, run_prune
from .redundancy import AnalyzeConfig, run_analysis
from .teacher import OFFLINE_DEFAULT, load_teacher
from .train import DistillConfig, TrainConfig, distill

log = logging.getLogger(__name__)

PRUNED = "pruned-comflp"


@dataclass
class BenchConfig:
    utterances: int = field(default=8, metadata={"help": "utterances in the timed batch"})
    rounds: int = field(default=5, metadata={"help": "timed rounds (median kept)"})
    threads: int = field(default=2, metadata={"help": "torch CPU threads while timing"})


def _default_students() -> list[StudentSpec]:
    return [StudentSpec(name="mimic-mlp", block_type="mlp", residual=True),
            StudentSpec(name="mimic-transformer", block_type="transformer")]


@dataclass
class PipelineConfig:
    out: str = field(default="runs/pipeline", metadata={"help": "output folder"})
    teacher: str = field(default=OFFLINE_DEFAULT, metadata={"help": "teacher spec"})
    distill_data: list[str] = field(default_factory=list,
                                    metadata={"help": "distillation audio (default: synthetic sentences + KS train)"})
    ks_data: str = field(default="", metadata={"help": "Speech Commands root with train/ test/ (default: synthetic)"})
    sentences: SentencesConfig = field(default_factory=lambda: SentencesConfig(speakers=40, utterances_per_speaker=12))
    ks_corpus: SpeechCommandsConfig = field(default_factory=lambda: SpeechCommandsConfig(snr_db=5.0))
    students: list[StudentSpec] = field(default_factory=_default_students,
                                        metadata={"help": "students to distil and compare (YAML list)"})
    train: TrainConfig = field(default_factory=lambda: TrainConfig(max_steps=1200, eval_every=200, save_every=400))
    analysis: AnalyzeConfig = field(default_factory=lambda: AnalyzeConfig(crop_seconds=1.0, max_utterances=1024),
                                    metadata={"help": "layer similarity on the KS train audio (teacher/data/out set here)"})
    prune: PruneConfig = field(default_factory=lambda: PruneConfig(crop_seconds=1.0),
                               metadata={"help": "pruning curves + CoMFLP, probe on KS train (teacher/data/out set here)"})
    run_prune: bool = field(default=True, metadata={"help": "pruning curves and CoMFLP (adds a pruned model)"})
    evaluate: EvaluateConfig = field(default_factory=lambda: EvaluateConfig(steps=400, eval_every=100))
    bench: BenchConfig = field(default_factory=BenchConfig)


def _timing_batch(data: list[str], n: int):
    items, _ = list_audio(data)
    ds = AudioDataset(items[:n], max_samples=None, random_crop=False)
    return collate_audio([ds[i] for i in range(len(ds))])


def _model_entry(info, eval_metrics: dict, speed: float) -> dict:
    return {"params_frontend": info.params_frontend, "params_stack": info.params_stack,
            "params_total": info.params_total, "num_layers": info.num_layers,
            "cpu_seconds_per_audio_second": speed, "ks_test_accuracy": eval_metrics["test_accuracy"],
            "ks_valid_best_accuracy": eval_metrics.get("valid_best_accuracy")}


def run_pipeline(cfg: PipelineConfig) -> dict:
    import students  # noqa: F401  (AutoModel registration)
    from transformers import AutoModel

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")
    t_start = time.time()
    names = [student_name(s) for s in cfg.students]
    if not names or len(set(names)) != len(names) or "teacher" in names:
        raise ValueError(f"students need distinct names other than 'teacher', got {names}")

    # 1. corpora (cached by their settings)
    ks_data = cfg.ks_data
    if not ks_data:
        build_speech_commands(cfg.ks_corpus)
        ks_data = cfg.ks_corpus.out
    ks_train, _ = resolve_ks_roots(ks_data, cfg.evaluate.test_data)
    distill_data = list(cfg.distill_data) or [str(build_sentences(cfg.sentences)), str(ks_train)]

    # 2. layer similarity and its blocks; the boundary is where mimic students aim
    analysis = run_analysis(replace(cfg.analysis, teacher=cfg.teacher, data=[str(ks_train)],
                                    out=str(out / "analysis")))
    targets = analysis["mimic_targets"]

    # 3. distil and export every student (those without explicit targets aim at the block boundary)
    runs, models = {}, {}
    for name, spec in zip(names, cfg.students):
        spec = spec if spec.target_layers else replace(spec, target_layers=list(targets))
        runs[name] = distill(DistillConfig(teacher=cfg.teacher, data=distill_data, out=str(out / "distill" / name),
                                           student=spec, train=cfg.train))
        student = AutoModel.from_pretrained(out / "distill" / name / "best").as_teacher()
        export_hf(student, out / "students" / name,
                  extra={"distillation steps": runs[name]["steps"],
                         "best validation loss": f"{runs[name]['best_valid_loss']:.4f}"})
        models[name] = student
    teacher = load_teacher(cfg.teacher)

    # 4. pruning without retraining: curves per ordering, CoMFLP's pick becomes a model too
    pruning = None
    specs = {"teacher": cfg.teacher, **{n: str(out / "students" / n) for n in names}}
    if cfg.run_prune:
        pruning = run_prune(replace(cfg.prune, teacher=cfg.teacher, data=[str(ks_train)], out=str(out / "prune"),
                                    probe=replace(cfg.prune.probe, data=str(ks_train))),
                            matrices=analysis["matrices"])
        specs[PRUNED] = pruning["search"]["pruned_path"]
        models[PRUNED] = load_teacher(specs[PRUNED])

    # 5. SUPERB KS through s3prl: teacher, students, pruned model
    evals = {n: evaluate(replace(cfg.evaluate, model=spec, data=ks_data, out=str(out / "eval" / n)))
             for n, spec in specs.items()}

    # 6. speed, side by side in this run
    batch = _timing_batch(distill_data, cfg.bench.utterances)
    threads = torch.get_num_threads()
    torch.set_num_threads(cfg.bench.threads)
    speed = seconds_per_audio_second({"teacher": teacher, **models}, batch["wav"], batch["lengths"],
                                     rounds=cfg.bench.rounds)
    torch.set_num_threads(threads)

    # 7. report
    t_info = teacher.info
    entries = {"teacher": {"name": cfg.teacher, **_model_entry(t_info, evals["teacher"], speed["teacher"])}}
    for name, student in models.items():
        s_info = student.info
        entries[name] = {
            "name": name, **_model_entry(s_info, evals[name], speed[name]), "path": specs[name],
            "stack_compression_pct": 100.0 * (1 - s_info.params_stack / t_info.params_stack),
            "total_compression_pct": 100.0 * (1 - s_info.params_total / t_info.params_total),
            "retention_pct": 100.0 * evals[name]["test_accuracy"] / max(evals["teacher"]["test_accuracy"], 1e-12),
            "speedup": speed["teacher"] / speed[name],
        }
        if name in runs:
            entries[name].update(
                target_layers=list(student.config.target_layers), block_type=student.config.block_type,
                residual=student.config.residual,
                distill={k: runs[name][k] for k in ("steps", "best_valid_loss", "seconds", "audio_seconds_seen",
                                                    "files_used", "files_skipped")})
        else:
            entries[name].update(removed_layers=pruning["search"]["best"]["removed"])
    report = {
        "date": date.today().isoformat(), "teacher": cfg.teacher, "models": entries,
        "distill_data": distill_data,
        "analysis": {"blocks": analysis["blocks"], "block_measure": analysis["block_measure"],
                     "mimic_targets": targets, "counts": analysis["counts"],
                     "heatmaps": sorted(str(p) for p in (out / "analysis").glob("heatmap_*.png"))},
        "pruning": None if pruning is None else {
            "curve": pruning["curve"], "metric": pruning["search"]["metric"],
            "full_model_metric": pruning["search"]["full_model_metric"],
            "comflp": {k: pruning["search"][k] for k in ("n_remove", "best", "candidates", "seconds")},
            "curve_png": str(out / "prune" / "curve.png")},
        "ks": {"data": ks_data, "steps": cfg.evaluate.steps, "chance_accuracy": 1 / 12},
        "timing_batch": {"utterances": len(batch["indices"]), "audio_seconds": float(batch["lengths"].sum()) / 16000,
                         "threads": cfg.bench.threads, "rounds": cfg.bench.rounds},
        "seconds": {"total": time.time() - t_start, **{f"distill_{k}": v["seconds"] for k, v in runs.items()},
                    **{f"eval_{k}": v["seconds"] for k, v in evals.items()}},
    }
    write_json_atomic(out / "report.json", report)
    write_text_atomic(out / "report.md", render_report(report))
    return report


def _describe(name: str, m: dict) -> str:
    if "removed_layers" in m:
        return f"`{name}`: the teacher without layers {m['removed_layers']} (CoMFLP, no retraining)"
    kind = "residual MLP" if m.get("residual") and m.get("block_type") == "mlp" else m.get("block_type", "?")
    return f"`{name}`: {kind} mimicking layers regressing teacher layers {m['target_layers']}"


def render_report(r: dict) -> str:
    models = r["models"]
    names = list(models)
    t = models["teacher"]

    def row(label, fn):
        return f"| {label} | " + " | ".join(fn(models[n]) for n in names) + " |"

    def others(fn):
        return lambda m: "" if m is t else fn(m)

    lines = [f"# stackdistill report ({r['date']})", "", f"Teacher `{r['teacher']}`.", ""]
    lines += [f"- {_describe(n, models[n])}" for n in names[1:]]
    lines += ["", "| | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|",
              row("parameters, frontend", lambda m: f"{m['params_frontend']:,}"),
              row("parameters, stack", lambda m: f"{m['params_stack']:,}"),
              row("parameters, total", lambda m: f"{m['params_total']:,}"),
              row("layers in the stack", lambda m: str(m["num_layers"])),
              row("stack compression", others(lambda m: f"{m['stack_compression_pct']:.1f} %")),
              row("CPU s per s of audio", lambda m: f"{m['cpu_seconds_per_audio_second']:.4f}"),
              row("speed-up", others(lambda m: f"{m['speedup']:.1f}x")),
              row("KS test accuracy", lambda m: f"{100 * m['ks_test_accuracy']:.2f} %"),
              row("accuracy retention", others(lambda m: f"{m['retention_pct']:.1f} %")),
              row("distillation steps, best valid loss",
                  lambda m: f"{m['distill']['steps']}, {m['distill']['best_valid_loss']:.4f}" if "distill" in m else ""),
              "",
              f"KS: s3prl `SuperbKS`, {r['ks']['steps']} downstream steps, 12 classes "
              f"(chance {100 * r['ks']['chance_accuracy']:.1f} %), data `{r['ks']['data']}`.",
              f"Distillation audio: {', '.join(f'`{d}`' for d in r['distill_data'])}.",
              f"Timing: {r['timing_batch']['utterances']} utterances, {r['timing_batch']['audio_seconds']:.1f} s of "
              f"audio, {r['timing_batch']['threads']} threads, median of {r['timing_batch']['rounds']} interleaved rounds.",
              ""]
    a = r["analysis"]
    lines += ["## Layer similarity", "",
              f"{a['counts']['utterances']} utterances ({a['counts']['frames']} frames). Blocks of mutually similar "
              f"hidden states by {a['block_measure']}: {a['blocks'][a['block_measure']]['blocks']}; mimic students "
              f"regress layers {a['mimic_targets']}.", ""]
    lines += [f"![{Path(h).stem}](analysis/{Path(h).name})" for h in a["heatmaps"]]
    p = r.get("pruning")
    if p:
        k = len(next(iter(p["curve"].values())))
        lines += ["", "## Pruning without retraining", "",
                  f"{p['metric']} (full model {p['full_model_metric']:.3f}) after removing n layers:", "",
                  "| ordering | " + " | ".join(f"n={i}" for i in range(k)) + " |", "|---" * (k + 1) + "|"]
        lines += [f"| {o} | " + " | ".join(f"{v:.3f}" for v in vals) + " |" for o, vals in p["curve"].items()]
        c = p["comflp"]
        lines += ["", f"CoMFLP, {c['n_remove']} layers removed: coarse search {c['seconds']['coarse']:.3f} s, "
                  f"fine search over {len(c['candidates'])} candidates {c['seconds']['fine']:.1f} s; best removes "
                  f"{c['best']['removed']} ({p['metric']} {c['best']['metric']:.3f}).", "",
                  "![pruning curve](prune/curve.png)"]
    lines += ["", f"Wall time: {r['seconds']['total'] / 60:.1f} min in all.", ""]
    return "\n".join(lines)
