"""Distillation: a frozen teacher's hidden states regressed by a student, through the one loop.

:func:`distill` is :func:`setup` (data, teacher, student, the source of targets) followed by
:func:`distill.training.loop.train_loop`; :class:`DistillObjective` is the part that is distillation's
own: the student kind's (prediction, target) pairs, their loss, the frame-weighted validation
loss (and, for a teacher carrying a classification head, the student's accuracy through that
frozen head). Targets come online (the teacher runs on each batch) or from the teacher-target
cache (``train.cache true``: :mod:`distill.data.cache`), through one interface (:mod:`distill.data.batches`).

Run folder (``cfg.out``)::

    config.yaml          resolved settings
    metrics.jsonl        one JSON line per log, validation, checkpoint and export event
    summary.json         final figures (steps, losses, time, targets source, files used and skipped)
    loss.png             train and validation loss curves
    tb/                  TensorBoard logs (Accelerate tracker)
    checkpoints/step_N/  model, optimizer, scheduler, RNG, trainer state: safetensors + JSON, no pickle
    best/  last/         Hugging Face folders of the student (best by validation loss, and last)
    ranks/rank_K.json    what each process trained on (distributed runs)
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

import torch

from distill.core.config import load_config, save_config
from distill.core.fsutil import claim_run_folder, write_json_atomic
from distill.core.names import readable_name
from distill.data.audio import SAMPLE_RATE
from distill.data.batches import Batch, BatchPlan, CachedSource, OnlineSource
from distill.data.cache import CacheConfig, CacheSpec, prepare_cache
from distill.data.corpus import AudioItem, list_audio, split_items
from distill.models.teacher import load_teacher
from distill.training.checkpoints import CheckpointManager
from distill.training.loop import Run, TrainConfig, make_accelerator, prepare_trainable, train_loop
from distill.training.losses import LOSSES, pairs_loss
from distill.training.ranks import rank0_broadcast
from students.registry import StudentSpec, build_student, student_class

log = logging.getLogger(__name__)

__all__ = ["DistillConfig", "TrainConfig", "DistillObjective", "distill", "setup", "cache_for_students",
           "segmentation"]


@dataclass
class DistillConfig:
    teacher: str = field(default="whisper-tiny.en", metadata={"help": "teacher spec (hub id, folder, ct2:, s3prl:)"})
    data: list[str] = field(default_factory=list,
                            metadata={"help": "audio folders, LibriSpeech trees or .tsv manifests"})
    out: str = field(default="runs/distill", metadata={"help": "run folder"})
    overwrite: bool = field(default=False, metadata={"help": "write over an earlier run in out (else refused)"})
    student: StudentSpec = field(default_factory=StudentSpec)
    train: TrainConfig = field(default_factory=TrainConfig)
    cache: CacheConfig = field(default_factory=CacheConfig, metadata={"help": "teacher-target cache (train.cache)"})


class _FrontendThenStack(torch.nn.Module):
    """A student whose frontend trains too: ``(wav, lengths, **step_kwargs)`` -> the stack outputs."""

    def __init__(self, student):
        super().__init__()
        self.student = student

    def forward(self, wav: torch.Tensor, lengths: torch.Tensor, **step_kwargs) -> list[torch.Tensor]:
        feats, frame_lengths = self.student.frontend(wav, lengths)
        return self.student.stack(feats, frame_lengths, **step_kwargs)


# -- setup ----------------------------------------------------------------------------------------

def setup(cfg: DistillConfig, items: list[AudioItem] | None = None, teacher=None,
          valid_items: list[AudioItem] | None = None, claim: bool = True) -> Run:
    """Accelerator, data, teacher, student, optimizer and the source of targets, ready to train.

    ``items``: the training utterances already listed (a labelled task corpus: their labels let
    a teacher with a classification head score the student at each validation); default
    ``list_audio(cfg.data)``. ``valid_items``: the held-out utterances (default: split off
    ``items`` by ``train.valid_fraction``). ``teacher``: an already loaded teacher. ``claim``:
    refuse an ``out`` that holds another run (false: a later stage of a run already claimed).
    """
    t = cfg.train
    if t.loss != "auto" and t.loss not in LOSSES:
        raise ValueError(f"train.loss must be auto or one of {LOSSES}, got {t.loss!r}")
    if not cfg.data and items is None:
        raise ValueError("no training data: set data=<audio folder | LibriSpeech tree | manifest.tsv>")
    out = Path(cfg.out)
    # a student that may leave parameters unused in a step (a shallow sampled depth) tells DDP so
    acc = make_accelerator(out, t, getattr(student_class(cfg.student.kind), "may_skip_parameters", False),
                           overwrite=cfg.overwrite, claim=claim)

    scan_skipped = []
    if items is None:
        items, scan_skipped = list_audio(cfg.data)
    if valid_items is None:
        train_items, valid_items = split_items(items, t.valid_fraction, t.seed, t.max_valid)
    else:
        train_items, items = items, items + valid_items
    plan = BatchPlan(int(t.batch_seconds * SAMPLE_RATE), t.max_batch_size, t.seed, acc.num_processes,
                     acc.process_index, t.grad_accum)

    if teacher is None:
        teacher = load_teacher(cfg.teacher, dtype=t.teacher_dtype, device=acc.device)
    student = _build_student_once(cfg, acc, out, teacher).to(acc.device)
    if acc.is_main_process:  # the resolved settings, choices made from data included
        save_config(cfg, out / "config.yaml")
    share_frontend = not cfg.student.train_frontend
    if share_frontend and teacher.frontend is None:
        raise ValueError(f"teacher {teacher.name!r} has no reusable frontend: set student.train_frontend true")

    source, build_skipped, cache_summary = _targets_source(cfg, acc, teacher, student, items, train_items,
                                                           valid_items, plan, share_frontend)
    trainable = student.stack if share_frontend else _FrontendThenStack(student)
    model, optimizer, scheduler = prepare_trainable(acc, trainable, t)
    objective = DistillObjective(acc, teacher, student, source, student.default_loss if t.loss == "auto" else t.loss)
    return Run(acc, out, t, model, optimizer, scheduler, source, objective,
               CheckpointManager(acc, out / "checkpoints", t.keep_checkpoints), cfg, len(items),
               {s.path: s.reason for s in scan_skipped}, build_skipped, cache_summary)


def distill(cfg: DistillConfig, items: list[AudioItem] | None = None, teacher=None,
            valid_items: list[AudioItem] | None = None) -> dict:
    """Train a student from ``cfg.teacher`` on ``cfg.data`` (or ``items``); returns the run summary.

    A kind that trains in stages (``stages``: the structured kind prunes in ``<out>/prune/``,
    then distils the sliced student in ``<out>/``) runs them in order, each a whole resumable
    run; the returned summary (and ``summary.json``) is the last stage's, with the earlier
    stages' under ``stages``.
    """
    out = Path(cfg.out)
    plan = student_class(cfg.student.kind).stages(cfg.student.options, out, cfg.train)
    if len(plan) == 1:
        return train_loop(setup(cfg, items, teacher, valid_items))
    claim_run_folder(out, overwrite=cfg.overwrite, resume=cfg.train.resume, resume_flag="--train.resume true")
    earlier = {}  # (the teacher is loaded by the first stage: before an Accelerator, the process layout is unknown)
    for k, (folder, option_changes, train_changes) in enumerate(plan):
        stage = replace(cfg, out=str(folder), student=cfg.student.with_options(**option_changes),
                        train=replace(cfg.train, **train_changes))
        run = setup(stage, items, teacher, valid_items, claim=k == 0)
        teacher, main = run.objective.teacher, run.main
        summary = train_loop(run, final=k == len(plan) - 1)
        if k < len(plan) - 1:
            earlier[str(Path(folder).relative_to(out)) if Path(folder) != out else "."] = {
                key: summary.get(key) for key in ("steps", "seconds", "best_valid_loss", "student")}
    summary["stages"] = earlier
    summary["seconds_all_stages"] = summary["seconds"] + sum(e["seconds"] or 0.0 for e in earlier.values())
    if main:
        write_json_atomic(out / "summary.json", summary)
    return summary


class DistillObjective:
    """The student kind's (prediction, target) pairs and their loss; validation by frame-weighted loss.

    A teacher with a classification head (a task-fine-tuned teacher: ``teacher.head``) also
    scores the student at each validation: the student's last state through that frozen head,
    against the labels of the held-out audio (``valid_head_accuracy``).
    """

    score, higher_is_better = "valid_loss", False

    def __init__(self, acc, teacher, student, source, loss_kind: str):
        self.acc, self.teacher, self.student, self.source, self.loss_kind = acc, teacher, student, source, loss_kind
        self.head = getattr(teacher, "head", None)
        self.label_index = {label: i for i, label in enumerate(getattr(teacher, "labels", None) or [])}

    def loss(self, batch: Batch, step: int, model) -> tuple[torch.Tensor, dict]:
        kwargs = self.student.step_kwargs(step)
        outputs = model(batch.inputs, batch.input_lengths, **kwargs)
        loss, logs = pairs_loss(self.student.distill_pairs(outputs, batch.targets, **kwargs), batch.frame_lengths,
                                self.loss_kind)
        extra = self.student.extra_loss(outputs, **kwargs)  # a kind's own term (a Lagrangian)
        if extra is not None:
            loss, logs = loss + extra[0], {**logs, **extra[1]}
        return (loss * 0.0 if batch.empty else loss), logs

    @torch.no_grad()
    def validate(self, model) -> dict[str, float]:
        kwargs = self.student.valid_kwargs()
        sums = torch.zeros(4, dtype=torch.float64, device=self.acc.device)  # loss x frames, frames, right, labelled
        for batch in self.source.valid_batches():
            outputs = model(batch.inputs, batch.input_lengths, **kwargs)
            loss, _ = pairs_loss(self.student.distill_pairs(outputs, batch.targets, **kwargs), batch.frame_lengths,
                                 self.loss_kind)
            n = float(batch.frame_lengths.sum())
            sums[0] += float(loss) * n
            sums[1] += n
            if self.head is not None and batch.labels is not None:
                last = self.student.states_from_outputs(outputs)[-1]
                predicted = self.head(last, batch.frame_lengths).argmax(-1).tolist()
                truth = [self.label_index.get(label, -1) for label in batch.labels]
                sums[2] += sum(p == y for p, y in zip(predicted, truth) if y >= 0)
                sums[3] += sum(y >= 0 for y in truth)
        sums = self.acc.reduce(sums, reduction="sum")
        metrics = {"valid_loss": float(sums[0] / sums[1].clamp(min=1))}
        if sums[3] > 0:
            metrics["valid_head_accuracy"] = float(sums[2] / sums[3])
        return metrics

    def save(self, folder: Path) -> None:
        self.student.save_pretrained(folder, safe_serialization=True)

    @property
    def title(self) -> str:
        return f"{self.student.kind} student of {readable_name(self.teacher.name)}"

    def summary(self) -> dict:
        return {"target_layers": list(self.student.config.target_layers), "loss": self.loss_kind,
                "student": {"kind": self.student.kind, "describe": self.student.describe(),
                            **self.student.info.to_dict()},
                "teacher": self.teacher.info.to_dict()}


def _targets_source(cfg: DistillConfig, acc, teacher, student, items, train_items, valid_items, plan: BatchPlan,
                    share_frontend: bool):
    """``(source, files the cache build skipped, cache summary)``: online, or from the (found or built) cache."""
    t = cfg.train
    crop, min_samples = segmentation(t)
    if not t.cache:
        return OnlineSource(teacher, train_items, valid_items, plan, crop, min_samples, share_frontend, acc.device,
                            t.num_workers), {}, None
    layers = student.required_teacher_layers()
    spec = CacheSpec(tuple(layers), share_frontend, crop, min_samples, t.teacher_dtype)
    cache = prepare_cache(teacher, items, spec, cfg.cache, acc.process_index, acc.num_processes,
                          acc.wait_for_everyone, progress=acc.is_local_main_process, broadcast=rank0_broadcast(acc))
    position = {item: i for i, item in enumerate(items)}  # a window listed twice is the same audio
    source = CachedSource(cache, teacher, items, [position[i] for i in train_items],
                          [position[i] for i in valid_items], plan, layers, share_frontend, acc.device,
                          t.num_workers)
    summary = {"folder": str(cache.folder), "reused": cache.reused, "segments": len(cache), "slots": cache.slots,
               "bytes": cache.manifest["bytes"], "build_seconds": cache.manifest["build_seconds"]}
    return source, {r.path: r.reason for r in cache.skipped}, summary


def segmentation(t: TrainConfig) -> tuple[int, int]:
    """``(crop, min)`` in samples: crops (and cache segments) never exceed the batch budget."""
    crop, budget = int(t.crop_seconds * SAMPLE_RATE), int(t.batch_seconds * SAMPLE_RATE)
    if crop > budget:
        log.warning("train.crop_seconds %.1f exceeds train.batch_seconds %.1f: crops cut to the batch budget",
                    t.crop_seconds, t.batch_seconds)
    return min(crop, budget), int(t.min_seconds * SAMPLE_RATE)


def cache_for_students(teacher, specs: list[StudentSpec], data: list[str], t: TrainConfig, cache: CacheConfig):
    """One teacher-target cache serving every student of ``specs`` (the union of their layers).

    Build it before the students train (the pipeline does): each run then finds it complete.
    """
    items, _ = list_audio(data)
    layers, features = set(), False
    for spec in specs:
        layers |= set(build_student(spec, teacher, seed=t.seed, data=data).required_teacher_layers())
        features |= not spec.train_frontend
    crop, min_samples = segmentation(t)
    return prepare_cache(teacher, items, CacheSpec(tuple(sorted(layers)), features, crop, min_samples,
                                                   t.teacher_dtype), cache)


def _build_student_once(cfg: DistillConfig, acc, out: Path, teacher):
    """The initial student; a choice its kind makes from data is made once and written down.

    The pruned kind ranks layers on the training audio: that runs on the main process only,
    the resolved settings (``removed``) go to every rank and into ``config.yaml``, and a
    resumed run reuses the ones its first run wrote, so every rank and every restart trains
    the same student.
    """
    spec, seed = cfg.student, cfg.train.seed
    saved = out / "config.yaml"
    if cfg.train.resume and saved.is_file():
        previous = load_config(DistillConfig, saved).student
        if previous.kind == spec.kind:
            spec = previous
    data = [str(d) for d in cfg.data]
    student, resolved = None, [None]
    if acc.is_main_process:
        student = build_student(spec, teacher, seed=seed, data=data)
        resolved = [student.resolved_options(spec.options)]
    resolved = rank0_broadcast(acc)(resolved)
    cfg.student = spec.with_options(**{f.name: getattr(resolved[0], f.name) for f in fields(resolved[0])})
    if student is None:
        student = build_student(cfg.student, teacher, seed=seed, data=data)
    return student


