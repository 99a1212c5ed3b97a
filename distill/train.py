"""Distillation training: one Accelerate loop from a frozen teacher into a student.

Read :func:`distill` top to bottom: :func:`setup` assembles the run, :func:`train_step` is one
forward and backward, :func:`validate` one pass over the held-out audio, the checkpoint manager
(:mod:`distill.checkpoints`) saves, rotates and resumes, and the loop in between is plain.
Targets come online (the teacher runs on each batch) or from the teacher-target cache
(``train.cache true``: :mod:`distill.cache`), through one interface (:mod:`distill.batches`).

Run folder (``cfg.out``)::

    config.yaml          resolved settings
    metrics.jsonl        one JSON line per log, validation, checkpoint and export event
    summary.json         final figures (steps, losses, time, targets source, files used and skipped)
    loss.png             train and validation loss curves
    tb/                  TensorBoard logs (Accelerate tracker)
    checkpoints/step_N/  Accelerate save_state (model, optimizer, scheduler, RNG) + trainer_state.json
    best/  last/         Hugging Face folders of the student (best by validation loss, and last)
    ranks/rank_K.json    what each process trained on (distributed runs)

``accelerate launch`` runs the same code on many processes: batches are sharded by the batch
sampler (equal counts on every rank, and one optimizer step covers the same batches for any
split between processes and ``train.grad_accum``), the frozen teacher stays outside
``prepare`` (DDP would reject a module without trainable parameters), and only the student's
trainable part is wrapped. Logged losses are averaged over every process; files are written by
the main process only. ``train.resume true`` restores model, optimizer, scheduler, RNG and the
position in the epoch from the newest complete checkpoint, also after a SIGKILL.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Literal

import torch
from tqdm import tqdm

from students.registry import StudentSpec, build_student, student_class

from .audio import SAMPLE_RATE
from .batches import Batch, BatchPlan, CachedSource, OnlineSource
from .cache import CacheConfig, CacheSpec, prepare_cache
from .checkpoints import CheckpointManager, TrainerState
from .config import load_config, save_config, to_dict
from .data import list_audio, split_items
from .fsutil import atomic_dir, write_json_atomic
from .losses import LOSSES, pairs_loss
from .plots import curves
from .teacher import load_teacher

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    max_steps: int = field(default=300, metadata={"help": "optimizer updates"})
    lr: float = field(default=1e-3, metadata={"help": "peak learning rate (AdamW)"})
    weight_decay: float = 0.01
    warmup_steps: int = field(default=50, metadata={"help": "linear warm-up, then cosine decay to 0"})
    batch_seconds: float = field(default=20.0, metadata={"help": "max padded audio per batch and process"})
    max_batch_size: int = field(default=64, metadata={"help": "max utterances per batch"})
    crop_seconds: float = field(default=4.0, metadata={"help": "training crops (random online, fixed segments cached)"})
    min_seconds: float = field(default=0.1, metadata={"help": "shorter files are skipped"})
    grad_accum: int = field(default=1, metadata={"help": "gradient accumulation steps"})
    mixed_precision: Literal["no", "bf16", "fp16"] = field(default="no", metadata={"help": "no, bf16 or fp16 (Accelerate)"})
    teacher_dtype: Literal["float32", "bfloat16"] = field(
        default="float32", metadata={"help": "teacher forward dtype: float32 or bfloat16"})
    grad_clip: float = field(default=1.0, metadata={"help": "max gradient norm (0: off)"})
    loss: Literal["auto", "mse", "l1_cos"] = field(
        default="auto", metadata={"help": "auto (the student kind's own), mse, or l1_cos (DistilHuBERT)"})
    valid_fraction: float = field(default=0.05, metadata={"help": "share of utterances held out"})
    max_valid: int = field(default=64, metadata={"help": "cap on held-out utterances"})
    eval_every: int = field(default=100, metadata={"help": "validate every N steps"})
    save_every: int = field(default=100, metadata={"help": "checkpoint every N steps"})
    keep_checkpoints: int = field(default=2, metadata={"help": "newest checkpoints kept"})
    log_every: int = 10
    seed: int = 0
    num_workers: int = field(default=0, metadata={"help": "DataLoader workers"})
    cache: bool = field(default=False, metadata={"help": "read teacher targets from the cache (built once if missing)"})
    resume: bool = field(default=False, metadata={"help": "continue from the newest checkpoint in out/"})


@dataclass
class DistillConfig:
    teacher: str = field(default="whisper-tiny.en", metadata={"help": "teacher spec (hub id, folder, ct2:, s3prl:)"})
    data: list[str] = field(default_factory=list,
                            metadata={"help": "audio folders, LibriSpeech trees or .tsv manifests"})
    out: str = field(default="runs/distill", metadata={"help": "run folder"})
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


def _lr_lambda(warmup: int, total: int):
    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / max(1, warmup)
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    return f


@dataclass
class Run:
    """Everything :func:`setup` assembles for the loop."""

    cfg: DistillConfig
    acc: object
    out: Path
    teacher: torch.nn.Module
    student: torch.nn.Module
    model: torch.nn.Module  # the prepared trainable part (the stack, or frontend + stack)
    optimizer: object
    scheduler: object
    source: OnlineSource | CachedSource
    checkpoints: CheckpointManager
    loss_kind: str
    files_listed: int
    scan_skipped: dict[str, str]  # files whose header could not be read (never listed)
    build_skipped: dict[str, str]  # listed files the cache build found bad
    cache_summary: dict | None = None

    @property
    def main(self) -> bool:
        return self.acc.is_main_process

    def log_event(self, step: int, row: dict) -> None:
        if self.main:
            with open(self.out / "metrics.jsonl", "a") as f:
                f.write(json.dumps({"step": step, **row}) + "\n")

    def export(self, name: str, step: int) -> None:
        if self.main:
            with atomic_dir(self.out / name) as tmp:
                self.student.save_pretrained(tmp, safe_serialization=True)
            self.log_event(step, {"event": "export", "path": name})


# -- setup ----------------------------------------------------------------------------------------

def setup(cfg: DistillConfig) -> Run:
    """Accelerator, data, teacher, student, optimizer and the source of targets, ready to train."""
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs, ProjectConfiguration, set_seed

    t = cfg.train
    if t.loss != "auto" and t.loss not in LOSSES:
        raise ValueError(f"train.loss must be auto or one of {LOSSES}, got {t.loss!r}")
    if not cfg.data:
        raise ValueError("no training data: set data=<audio folder | LibriSpeech tree | manifest.tsv>")
    if t.grad_accum < 1:
        raise ValueError(f"train.grad_accum must be at least 1, got {t.grad_accum}")
    out = Path(cfg.out)
    # a student that may leave parameters unused in a step (a shallow sampled depth) tells DDP so
    unused = getattr(student_class(cfg.student.kind), "may_skip_parameters", False)
    acc = Accelerator(mixed_precision=t.mixed_precision, log_with="tensorboard",
                      project_config=ProjectConfiguration(project_dir=str(out), logging_dir=str(out / "tb")),
                      kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=unused)])
    set_seed(t.seed)
    if acc.is_main_process:
        out.mkdir(parents=True, exist_ok=True)

    items, scan_skipped = list_audio(cfg.data)
    train_items, valid_items = split_items(items, t.valid_fraction, t.seed, t.max_valid)
    plan = BatchPlan(int(t.batch_seconds * SAMPLE_RATE), t.max_batch_size, t.seed, acc.num_processes,
                     acc.process_index, t.grad_accum)

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
    params = [p for p in trainable.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=t.lr, weight_decay=t.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(t.warmup_steps, t.max_steps))
    model, optimizer = acc.prepare(trainable, optimizer)
    # stepped once per update on every rank (a prepared scheduler would step num_processes times)
    acc.register_for_checkpointing(scheduler)
    return Run(cfg, acc, out, teacher, student, model, optimizer, scheduler, source,
               CheckpointManager(acc, out / "checkpoints", t.keep_checkpoints),
               student.default_loss if t.loss == "auto" else t.loss, len(items),
               {s.path: s.reason for s in scan_skipped}, build_skipped, cache_summary)


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
                          acc.wait_for_everyone, progress=acc.is_local_main_process)
    position = {item.path: i for i, item in enumerate(items)}
    source = CachedSource(cache, teacher, items, [position[i.path] for i in train_items],
                          [position[i.path] for i in valid_items], plan, layers, share_frontend, acc.device,
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
    from accelerate.utils import broadcast_object_list

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
    if acc.num_processes > 1:
        broadcast_object_list(resolved, from_process=0)
    cfg.student = spec.with_options(**{f.name: getattr(resolved[0], f.name) for f in fields(resolved[0])})
    if student is None:
        student = build_student(cfg.student, teacher, seed=seed, data=data)
    return student


# -- one step, one validation -----------------------------------------------------------------------

def _losses(run: Run, batch: Batch, step_kwargs: dict, model) -> tuple[torch.Tensor, dict]:
    """The student's outputs on ``batch`` against the teacher's targets, by the kind's pairs."""
    with run.acc.autocast():
        outputs = model(batch.inputs, batch.input_lengths, **step_kwargs)
        pairs = run.student.distill_pairs(outputs, batch.targets, **step_kwargs)
        loss, logs = pairs_loss(pairs, batch.frame_lengths, run.loss_kind)
    return (loss * 0.0 if batch.empty else loss), logs


def train_step(run: Run, batch: Batch, step: int, accumulate: int) -> tuple[float, dict]:
    """Forward and backward of one batch (``1 / accumulate`` of an optimizer step's gradient)."""
    loss, logs = _losses(run, batch, run.student.step_kwargs(step), run.model)
    run.acc.backward(loss / accumulate)
    return float(loss.detach()), logs


@torch.no_grad()
def validate(run: Run) -> float:
    """Frame-weighted mean loss over the held-out audio, summed over every process's share."""
    model = run.acc.unwrap_model(run.model)  # no DDP collectives: ranks may hold unequal shares
    model.eval()
    total = torch.zeros(2, device=run.acc.device)
    for batch in run.source.valid_batches():
        loss, _ = _losses(run, batch, run.student.valid_kwargs(), model)
        n = float(batch.frame_lengths.sum())
        total += torch.tensor([float(loss) * n, n], device=run.acc.device)
    model.train()
    total = run.acc.reduce(total, reduction="sum")
    return float(total[0] / total[1].clamp(min=1))


class _LossWindow:
    """Losses of the steps since the last log line; :meth:`flush` averages them over every process."""

    def __init__(self):
        self.sums: dict[str, float] = {}
        self.counts: dict[str, int] = {}

    def add(self, loss: float, logs: dict) -> None:
        for k, v in {"train_loss": loss, **logs}.items():
            self.sums[k] = self.sums.get(k, 0.0) + v
            self.counts[k] = self.counts.get(k, 0) + 1

    def flush(self, acc) -> dict:
        from accelerate.utils import gather_object

        sums, counts = {}, {}
        for part_sums, part_counts in gather_object([(self.sums, self.counts)]):
            for k, v in part_sums.items():
                sums[k] = sums.get(k, 0.0) + v
                counts[k] = counts.get(k, 0) + part_counts[k]
        self.sums, self.counts = {}, {}
        return {k: sums[k] / counts[k] for k in sums}


# -- the loop ---------------------------------------------------------------------------------------

def distill(cfg: DistillConfig) -> dict:
    """Train a student from ``cfg.teacher`` on ``cfg.data``; returns the run summary."""
    run = setup(cfg)
    t, acc = cfg.train, run.acc
    state = run.checkpoints.resume() if t.resume else None
    if state is None:
        if t.resume:
            log.warning("resume requested but %s holds no complete checkpoint: starting fresh", run.checkpoints.root)
        else:
            run.checkpoints.clear()
        if run.main:
            (run.out / "metrics.jsonl").unlink(missing_ok=True)
        state = TrainerState()
    else:
        _drop_rows_after(run.out / "metrics.jsonl", state.step, run.main)
        if run.main:
            log.info("resumed from step %d (epoch %d, batch %d)", state.step, state.epoch, state.batch_in_epoch)
        run.log_event(state.step, {"event": "resume", "from": str(run.checkpoints.newest())})
    state.skipped = {**run.scan_skipped, **run.build_skipped, **state.skipped}
    if run.source.batches_per_epoch() == 0:
        raise ValueError(f"no training audio left in {cfg.data} (every file skipped?)")
    acc.init_trackers("distill", config={k: v for k, v in _flat(to_dict(cfg)).items()
                                         if isinstance(v, (int, float, str, bool))})

    start_step, t0 = state.step, time.time()
    audio_before, audio_here = state.audio_seconds, 0.0  # all processes' until the checkpoint; this one's since
    seen: list[int] = []
    window = _LossWindow()
    bar = tqdm(total=t.max_steps, initial=state.step, desc="distill", disable=not acc.is_local_main_process)
    run.model.train()
    while state.step < t.max_steps:
        for batch in run.source.train_batches(state.epoch, state.batch_in_epoch):
            state.batch_in_epoch += 1
            for s in batch.skipped:
                if s.path not in state.skipped:
                    log.warning("skipping %s: %s", s.path, s.reason)
                state.skipped[s.path] = s.reason
            seen += batch.indices
            audio_here += batch.audio_seconds
            last_of_step = state.batch_in_epoch % t.grad_accum == 0
            with contextlib.nullcontext() if last_of_step else acc.no_sync(run.model):
                loss, logs = train_step(run, batch, state.step, t.grad_accum)
            window.add(loss, logs)
            if not last_of_step:
                continue
            if t.grad_clip > 0:
                acc.clip_grad_norm_(run.model.parameters(), t.grad_clip)
            run.optimizer.step()
            run.optimizer.zero_grad()
            run.scheduler.step()
            state.step += 1
            bar.update(1)

            if state.step % t.log_every == 0 or state.step == t.max_steps:
                row = {**window.flush(acc), "lr": run.scheduler.get_last_lr()[0], "epoch": state.epoch,
                       "elapsed": time.time() - t0, "audio_seconds": audio_before + _sum_over_ranks(acc, audio_here)}
                bar.set_postfix(loss=f"{row['train_loss']:.4f}")
                acc.log(row, step=state.step)
                run.log_event(state.step, row)
            if state.step % t.eval_every == 0 or state.step == t.max_steps:
                v = validate(run)
                acc.log({"valid_loss": v}, step=state.step)
                run.log_event(state.step, {"valid_loss": v})
                if v < state.best_valid:
                    state.best_valid = v
                    run.export("best", state.step)
                acc.wait_for_everyone()
            if state.step % t.save_every == 0 or state.step == t.max_steps:
                _gather_totals(acc, state, audio_before, audio_here)
                path = run.checkpoints.save(state)
                run.log_event(state.step, {"event": "checkpoint", "path": str(path.relative_to(run.out))})
                run.export("last", state.step)
                acc.wait_for_everyone()
            if state.step >= t.max_steps:
                break
        else:  # the epoch ran out
            state.epoch += 1
            state.batch_in_epoch = 0
    bar.close()
    _gather_totals(acc, state, audio_before, audio_here)
    return _finish(run, state, start_step, time.time() - t0, seen)


def _finish(run: Run, state: TrainerState, start_step: int, elapsed: float, seen: list[int]) -> dict:
    """Rank reports, the summary and the loss plot; then release DDP."""
    acc = run.acc
    rank = acc.process_index
    write_json_atomic(run.out / "ranks" / f"rank_{rank}.json",
                      {"rank": rank, "num_processes": acc.num_processes, "steps": state.step - start_step,
                       "source": run.source.kind, "indices": seen})
    skipped_listed = len(set(state.skipped) - set(run.scan_skipped))  # listed, then found bad when read
    summary = {
        "steps": state.step, "resumed_from_step": start_step, "seconds": elapsed,
        "seconds_per_step": elapsed / max(1, state.step - start_step),
        "best_valid_loss": state.best_valid, "audio_seconds_seen": state.audio_seconds,
        "files_listed": run.files_listed, "files_used": run.files_listed - skipped_listed,
        "files_skipped": len(state.skipped), "skipped": state.skipped,
        "target_layers": list(run.student.config.target_layers), "loss": run.loss_kind,
        "num_processes": acc.num_processes, "grad_accum": run.cfg.train.grad_accum,
        "targets": {"source": run.source.kind, "cache": run.cache_summary},
        "student": {"kind": run.student.kind, "describe": run.student.describe(), **run.student.info.to_dict()},
        "teacher": run.teacher.info.to_dict(),
    }
    if run.main:
        write_json_atomic(run.out / "summary.json", summary)
        _plot_losses(run.out / "metrics.jsonl", run.out / "loss.png")
    # release the DDP wrapper on every rank *before* end_training destroys the process group: a
    # reducer freed after that tears gloo down while the other rank may have exited, and hangs
    acc.wait_for_everyone()
    run.model = run.optimizer = None
    acc.free_memory()
    acc.wait_for_everyone()
    acc.end_training()
    return summary


def _gather_totals(acc, state: TrainerState, audio_before: float, audio_here: float) -> None:
    """Every process's audio seen and files skipped into ``state`` (what a checkpoint and the summary hold)."""
    from accelerate.utils import gather_object

    state.audio_seconds = audio_before + _sum_over_ranks(acc, audio_here)
    for rank_skips in gather_object([state.skipped]):
        state.skipped.update(rank_skips)


def _sum_over_ranks(acc, value: float) -> float:
    return float(acc.reduce(torch.tensor([value], dtype=torch.float64, device=acc.device), reduction="sum")[0])


def _drop_rows_after(metrics: Path, step: int, main: bool) -> None:
    """Forget what a killed run logged after its last checkpoint: the resumed run logs it again."""
    if main and metrics.is_file():
        rows = [line for line in metrics.read_text().splitlines() if line.strip()]
        keep = [line for line in rows if json.loads(line)["step"] <= step]
        from .fsutil import write_text_atomic

        write_text_atomic(metrics, "".join(line + "\n" for line in keep))


def _plot_losses(metrics_path: Path, out_png: Path) -> None:
    rows = [json.loads(line) for line in metrics_path.read_text().splitlines() if line.strip()]
    series = {}
    for key, label in (("train_loss", "train"), ("valid_loss", "validation")):
        points = [(r["step"], r[key]) for r in rows if key in r]
        if points:
            series[label] = tuple(map(list, zip(*points)))
    curves(series, out_png, "step", "distillation loss", "distillation", logy=True)


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v
    return out
