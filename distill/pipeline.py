"""The main job: synthesise corpora, distil a student, evaluate teacher and student on KS, export, report.

With no settings and no network it uses the offline teacher (Whisper tiny.en) and synthetic
corpora cached where ``sentences.out`` and ``ks_corpus.out`` say. Output folder (``out``)::

    config.yaml        resolved settings
    distill/           the distillation run (see distill.train)
    student/           the exported student (Hugging Face folder + model card)
    eval_teacher/ eval_student/   s3prl SUPERB KS runs, each with metrics.json
    report.json  report.md         the comparison
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, replace
from datetime import date
from pathlib import Path

import torch

from students.factory import StudentSpec
from tasks.corpora import SentencesConfig, SpeechCommandsConfig, build_sentences, build_speech_commands
from tasks.keyword_spotting import EvaluateConfig, evaluate

from .bench import seconds_per_audio_second
from .config import save_config
from .data import AudioDataset, collate_audio, list_audio
from .export import export_hf
from .fsutil import write_json_atomic, write_text_atomic
from .teacher import OFFLINE_DEFAULT, load_teacher
from .train import DistillConfig, TrainConfig, distill

log = logging.getLogger(__name__)


@dataclass
class BenchConfig:
    utterances: int = field(default=8, metadata={"help": "utterances in the timed batch"})
    rounds: int = field(default=5, metadata={"help": "timed rounds (median kept)"})
    threads: int = field(default=2, metadata={"help": "torch CPU threads while timing"})


@dataclass
class PipelineConfig:
    out: str = field(default="runs/pipeline", metadata={"help": "output folder"})
    teacher: str = field(default=OFFLINE_DEFAULT, metadata={"help": "teacher spec"})
    distill_data: str = field(default="", metadata={"help": "distillation audio (default: synthetic sentences)"})
    ks_data: str = field(default="", metadata={"help": "Speech Commands root with train/ test/ (default: synthetic)"})
    sentences: SentencesConfig = field(default_factory=lambda: SentencesConfig(speakers=40, utterances_per_speaker=12))
    ks_corpus: SpeechCommandsConfig = field(default_factory=lambda: SpeechCommandsConfig(snr_db=5.0))
    student: StudentSpec = field(default_factory=StudentSpec)
    train: TrainConfig = field(default_factory=TrainConfig)
    evaluate: EvaluateConfig = field(default_factory=lambda: EvaluateConfig(steps=400, eval_every=100))
    bench: BenchConfig = field(default_factory=BenchConfig)


def _timing_batch(data: str, n: int):
    items, _ = list_audio(data)
    ds = AudioDataset(items[:n], max_samples=None, random_crop=False)
    return collate_audio([ds[i] for i in range(len(ds))])


def _model_entry(info, eval_metrics: dict, speed: float) -> dict:
    return {"params_frontend": info.params_frontend, "params_stack": info.params_stack,
            "params_total": info.params_total, "num_layers": info.num_layers,
            "cpu_seconds_per_audio_second": speed, "ks_test_accuracy": eval_metrics["test_accuracy"],
            "ks_valid_best_accuracy": eval_metrics.get("valid_best_accuracy")}


def run_pipeline(cfg: PipelineConfig) -> dict:
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")
    t_start = time.time()

    # 1. corpora (cached by their settings)
    distill_data = cfg.distill_data
    if not distill_data:
        distill_data = str(build_sentences(cfg.sentences))
    ks_data = cfg.ks_data
    if not ks_data:
        build_speech_commands(cfg.ks_corpus)
        ks_data = cfg.ks_corpus.out

    # 2. distillation
    t0 = time.time()
    run = distill(DistillConfig(teacher=cfg.teacher, data=distill_data, out=str(out / "distill"),
                                student=cfg.student, train=cfg.train))
    distill_seconds = time.time() - t0

    # 3. export the best student
    import students  # noqa: F401
    from transformers import AutoModel

    student = AutoModel.from_pretrained(out / "distill" / "best").as_teacher()
    teacher = load_teacher(cfg.teacher)
    export_hf(student, out / "student", extra={"distillation steps": run["steps"],
                                               "best validation loss": f"{run['best_valid_loss']:.4f}"})

    # 4. SUPERB KS through s3prl, teacher and student
    evals = {}
    for name, spec in (("teacher", cfg.teacher), ("student", str(out / "student"))):
        evals[name] = evaluate(replace(cfg.evaluate, model=spec, data=ks_data, out=str(out / f"eval_{name}")))

    # 5. speed, side by side in this run
    batch = _timing_batch(distill_data, cfg.bench.utterances)
    threads = torch.get_num_threads()
    torch.set_num_threads(cfg.bench.threads)
    speed = seconds_per_audio_second({"teacher": teacher, "student": student}, batch["wav"], batch["lengths"],
                                     rounds=cfg.bench.rounds)
    torch.set_num_threads(threads)

    # 6. report
    t_info, s_info = teacher.info, student.info
    models = {"teacher": _model_entry(t_info, evals["teacher"], speed["teacher"]),
              "student": _model_entry(s_info, evals["student"], speed["student"])}
    models["teacher"]["name"] = cfg.teacher
    models["student"].update(
        name="mimic", path=str(out / "student"), target_layers=list(student.config.target_layers),
        stack_compression_pct=100.0 * (1 - s_info.params_stack / t_info.params_stack),
        total_compression_pct=100.0 * (1 - s_info.params_total / t_info.params_total),
        retention_pct=100.0 * evals["student"]["test_accuracy"] / max(evals["teacher"]["test_accuracy"], 1e-12),
        speedup=speed["teacher"] / speed["student"],
    )
    report = {
        "date": date.today().isoformat(), "teacher": cfg.teacher, "models": models,
        "distill": {k: run[k] for k in ("steps", "best_valid_loss", "seconds", "audio_seconds_seen",
                                        "files_used", "files_skipped")},
        "ks": {"data": ks_data, "steps": cfg.evaluate.steps, "chance_accuracy": 1 / 12},
        "timing_batch": {"utterances": len(batch["indices"]), "audio_seconds": float(batch["lengths"].sum()) / 16000,
                         "threads": cfg.bench.threads, "rounds": cfg.bench.rounds},
        "seconds": {"distill": distill_seconds, "total": time.time() - t_start,
                    **{f"eval_{k}": v["seconds"] for k, v in evals.items()}},
    }
    write_json_atomic(out / "report.json", report)
    write_text_atomic(out / "report.md", render_report(report))
    return report


def render_report(r: dict) -> str:
    t, s = r["models"]["teacher"], r["models"]["student"]
    rows = [
        ("parameters, frontend", f"{t['params_frontend']:,}", f"{s['params_frontend']:,}"),
        ("parameters, stack", f"{t['params_stack']:,}", f"{s['params_stack']:,}"),
        ("parameters, total", f"{t['params_total']:,}", f"{s['params_total']:,}"),
        ("layers in the stack", str(t["num_layers"]), str(s["num_layers"])),
        ("stack compression", "", f"{s['stack_compression_pct']:.1f} %"),
        ("CPU s per s of audio", f"{t['cpu_seconds_per_audio_second']:.4f}",
         f"{s['cpu_seconds_per_audio_second']:.4f} ({s['speedup']:.1f}x faster)"),
        ("KS test accuracy (s3prl SuperbKS)", f"{100 * t['ks_test_accuracy']:.2f} %", f"{100 * s['ks_test_accuracy']:.2f} %"),
        ("accuracy retention", "", f"{s['retention_pct']:.1f} %"),
    ]
    lines = [f"# stackdistill report ({r['date']})", "",
             f"Teacher `{r['teacher']}`; student: mimic layers regressing teacher layers {s['target_layers']}.", "",
             "| | teacher | student |", "|---|---|---|"]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in rows]
    lines += ["", f"KS: {r['ks']['steps']} downstream steps, 12 classes (chance {100 * r['ks']['chance_accuracy']:.1f} %), "
              f"data `{r['ks']['data']}`.",
              f"Distillation: {r['distill']['steps']} steps, best validation loss {r['distill']['best_valid_loss']:.4f}, "
              f"{r['distill']['files_used']} files ({r['distill']['files_skipped']} skipped).",
              f"Timing: {r['timing_batch']['utterances']} utterances, {r['timing_batch']['audio_seconds']:.1f} s of audio, "
              f"{r['timing_batch']['threads']} threads, median of {r['timing_batch']['rounds']} interleaved rounds.",
              f"Wall time: {r['seconds']['total'] / 60:.1f} min in all.", ""]
    return "\n".join(lines)
