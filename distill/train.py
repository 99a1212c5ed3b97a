"""Distillation training: one Accelerate loop from a frozen teacher into a student.

Run folder (``cfg.out``)::

    config.yaml          resolved settings
    metrics.jsonl        one JSON line per log / validation event
    summary.json         final figures (steps, losses, time, files used and skipped)
    loss.png             train and validation loss curves
    tb/                  TensorBoard logs (Accelerate tracker)
    checkpoints/step_N/  Accelerate save_state (model, optimizer, scheduler, RNG) + trainer_state.json
    best/  last/         Hugging Face folders of the student (best by validation loss, and last)
    ranks/rank_K.json    what each process trained on (distributed runs)

``accelerate launch`` runs the same code on many processes: batches are sharded by the batch
sampler (equal counts on every rank), the frozen teacher stays outside ``prepare`` (DDP would
reject a module without trainable parameters), and only the student's trainable part is
wrapped. ``train.resume=true`` restores model, optimizer, scheduler, RNG and the position in
the epoch from the newest complete checkpoint.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Literal

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from students.registry import StudentSpec, build_student, student_class

from .audio import SAMPLE_RATE
from .config import load_config, save_config, to_dict
from .data import AudioDataset, LengthBucketBatchSampler, collate_audio, list_audio, split_items
from .fsutil import atomic_dir, write_json_atomic
from .core import TeacherTargets
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
    crop_seconds: float = field(default=4.0, metadata={"help": "random crop of training utterances"})
    min_seconds: float = field(default=0.1, metadata={"help": "shorter files are skipped"})
    grad_accum: int = field(default=1, metadata={"help": "gradient accumulation steps"})
    mixed_precision: str = field(default="no", metadata={"help": "no, bf16 or fp16 (Accelerate)"})
    teacher_dtype: str = field(default="float32", metadata={"help": "teacher forward dtype: float32 or bfloat16"})
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
    resume: bool = field(default=False, metadata={"help": "continue from the newest checkpoint in out/"})
    interrupt_after: int | None = field(default=None, metadata={"help": "testing: stop abruptly after N steps"})


@dataclass
class DistillConfig:
    teacher: str = field(default="whisper-tiny.en", metadata={"help": "teacher spec (hub id, folder, ct2:, s3prl:)"})
    data: list[str] = field(default_factory=list,
                            metadata={"help": "audio folders, LibriSpeech trees or .tsv manifests"})
    out: str = field(default="runs/distill", metadata={"help": "run folder"})
    student: StudentSpec = field(default_factory=StudentSpec)
    train: TrainConfig = field(default_factory=TrainConfig)


class _FrontendThenStack(torch.nn.Module):
    """A student whose frontend trains too: ``(wav, lengths, **step_kwargs)`` -> the stack outputs."""

    def __init__(self, student):
        super().__init__()
        self.student = student

    def forward(self, wav: torch.Tensor, lengths: torch.Tensor, **step_kwargs) -> list[torch.Tensor]:
        feats, frame_lengths = self.student.frontend(wav, lengths)
        return self.student.stack(feats, frame_lengths, **step_kwargs)


class TrainingInterrupted(RuntimeError):
    """Raised by ``train.interrupt_after``: the run stopped as if killed (checkpoints stay)."""


def _lr_lambda(warmup: int, total: int):
    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / max(1, warmup)
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    return f


def _checkpoints(root: Path) -> list[Path]:
    done = [p for p in root.glob("step_*") if (p / "trainer_state.json").is_file()]
    return sorted(done, key=lambda p: int(p.name.split("_")[1]))


def _plot_losses(metrics_path: Path, out_png: Path) -> None:
    rows = [json.loads(line) for line in metrics_path.read_text().splitlines() if line.strip()]
    series = {}
    for key, label in (("train_loss", "train"), ("valid_loss", "validation")):
        points = [(r["step"], r[key]) for r in rows if key in r]
        if points:
            series[label] = tuple(map(list, zip(*points)))
    curves(series, out_png, "step", "distillation loss", "distillation", logy=True)


class _Run:
    """State of one training run; ``run()`` is the loop."""

    def __init__(self, cfg: DistillConfig):
        from accelerate import Accelerator
        from accelerate.utils import DistributedDataParallelKwargs, ProjectConfiguration, set_seed

        t = cfg.train
        if t.loss != "auto" and t.loss not in LOSSES:
            raise ValueError(f"train.loss must be auto or one of {LOSSES}, got {t.loss!r}")
        if not cfg.data:
            raise ValueError("no training data: set data=<audio folder | LibriSpeech tree | manifest.tsv>")
        self.cfg, self.t = cfg, t
        self.out = Path(cfg.out)
        # a student that may leave parameters unused in a step (a shallow sampled depth) tells DDP so
        unused = getattr(student_class(cfg.student.kind), "may_skip_parameters", False)
        self.acc = Accelerator(
            gradient_accumulation_steps=t.grad_accum, mixed_precision=t.mixed_precision, log_with="tensorboard",
            project_config=ProjectConfiguration(project_dir=str(self.out), logging_dir=str(self.out / "tb")),
            kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=unused)],
        )
        set_seed(t.seed)
        self.main = self.acc.is_main_process
        if self.main:
            self.out.mkdir(parents=True, exist_ok=True)

        items, self.scan_skipped = list_audio(cfg.data)
        train_items, valid_items = split_items(items, t.valid_fraction, t.seed, t.max_valid)
        crop = int(t.crop_seconds * SAMPLE_RATE)
        self.train_ds = AudioDataset(train_items, crop, int(t.min_seconds * SAMPLE_RATE), True, t.seed)
        self.valid_ds = AudioDataset(valid_items, crop, int(t.min_seconds * SAMPLE_RATE), False, t.seed)
        bs = int(t.batch_seconds * SAMPLE_RATE)
        n, r = self.acc.num_processes, self.acc.process_index
        self.sampler = LengthBucketBatchSampler(
            [self.train_ds.cropped_length(i) for i in range(len(self.train_ds))], bs, True, t.seed, n, r,
            t.max_batch_size)
        self.valid_sampler = LengthBucketBatchSampler(
            [self.valid_ds.cropped_length(i) for i in range(len(self.valid_ds))], bs, False, t.seed, n, r,
            t.max_batch_size)

        self.teacher = load_teacher(cfg.teacher, dtype=t.teacher_dtype, device=self.acc.device)
        self.student = self._build_student().to(self.acc.device)
        if self.main:  # the resolved settings, choices made from data included
            save_config(cfg, self.out / "config.yaml")
        self.loss_kind = self.student.default_loss if t.loss == "auto" else t.loss
        self.target_layers = list(self.student.config.target_layers)
        # with a frozen frontend only the stack trains, fed by the teacher's frontend output
        self.share_frontend = not cfg.student.train_frontend
        if self.share_frontend and self.teacher.frontend is None:
            raise ValueError(f"teacher {self.teacher.name!r} has no reusable frontend: set student.train_frontend true")
        trainable = self.student.stack if self.share_frontend else _FrontendThenStack(self.student)
        params = [p for p in trainable.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=t.lr, weight_decay=t.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(t.warmup_steps, t.max_steps))
        self.model, self.optimizer = self.acc.prepare(trainable, optimizer)
        # stepped once per update on every rank (a prepared scheduler would step num_processes times)
        self.acc.register_for_checkpointing(self.scheduler)

        self.step, self.epoch, self.batch_in_epoch = 0, 0, 0
        self.best_valid = float("inf")
        self.skipped: dict[str, str] = {s.path: s.reason for s in self.scan_skipped}
        self.seen_indices: list[int] = []
        self.audio_seconds = 0.0

    def _build_student(self):
        """The initial student; a choice its kind makes from data is made once and written down.

        The pruned kind ranks layers on the training audio: that runs on the main process only,
        the resolved settings (``removed``) go to every rank and into ``config.yaml``, and a
        resumed run reuses the ones its first run wrote, so every rank and every restart trains
        the same student.
        """
        from accelerate.utils import broadcast_object_list

        cfg, spec = self.cfg, self.cfg.student
        saved = self.out / "config.yaml"
        if self.t.resume and saved.is_file():
            previous = load_config(DistillConfig, saved).student
            if previous.kind == spec.kind:
                spec = previous
        data = [str(d) for d in cfg.data]
        student, resolved = None, [None]
        if self.main:
            student = build_student(spec, self.teacher, seed=self.t.seed, data=data)
            resolved = [student.resolved_options(spec.options)]
        if self.acc.num_processes > 1:
            broadcast_object_list(resolved, from_process=0)
        cfg.student = spec.with_options(**{f.name: getattr(resolved[0], f.name) for f in fields(resolved[0])})
        if student is None:
            student = build_student(cfg.student, self.teacher, seed=self.t.seed, data=data)
        return student

    # -- checkpoints -------------------------------------------------------------------------

    def save_checkpoint(self) -> None:
        root = self.out / "checkpoints"
        final = root / f"step_{self.step}"
        tmp = root / f".step_{self.step}.tmp"
        if self.main:
            shutil.rmtree(tmp, ignore_errors=True)
        self.acc.wait_for_everyone()
        self.acc.save_state(str(tmp), safe_serialization=True)
        self.acc.wait_for_everyone()
        if self.main:
            state = {"step": self.step, "epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch,
                     "best_valid": self.best_valid, "audio_seconds": self.audio_seconds,
                     "skipped": self.skipped}
            write_json_atomic(tmp / "trainer_state.json", state)
            shutil.rmtree(final, ignore_errors=True)
            tmp.replace(final)  # a checkpoint folder appears complete or not at all
            for old in _checkpoints(root)[: -self.t.keep_checkpoints]:
                shutil.rmtree(old, ignore_errors=True)
            self.export_student(self.out / "last")
        self.acc.wait_for_everyone()

    def maybe_resume(self) -> None:
        if not self.t.resume:
            return
        ckpts = _checkpoints(self.out / "checkpoints")
        if not ckpts:
            log.warning("resume requested but %s holds no checkpoint: starting fresh", self.out / "checkpoints")
            return
        last = ckpts[-1]
        self.acc.load_state(str(last))
        state = json.loads((last / "trainer_state.json").read_text())
        self.step, self.epoch = state["step"], state["epoch"]
        self.batch_in_epoch = state["batch_in_epoch"]
        self.best_valid, self.audio_seconds = state["best_valid"], state["audio_seconds"]
        self.skipped.update(state.get("skipped", {}))
        if self.main:
            log.info("resumed from %s (step %d, epoch %d, batch %d)", last, self.step, self.epoch, self.batch_in_epoch)
            self.log_metrics({"event": "resume", "from": str(last)})

    def export_student(self, path: Path) -> None:
        with atomic_dir(path) as tmp:
            self.student.save_pretrained(tmp, safe_serialization=True)

    # -- logging -----------------------------------------------------------------------------

    def log_metrics(self, row: dict) -> None:
        if self.main:
            with open(self.out / "metrics.jsonl", "a") as f:
                f.write(json.dumps({"step": self.step, **row}) + "\n")

    # -- the loop ----------------------------------------------------------------------------

    def _loader(self, ds, sampler) -> DataLoader:
        return DataLoader(ds, batch_sampler=sampler, collate_fn=collate_audio, num_workers=self.t.num_workers)

    def _batch_loss(self, batch: dict, step_kwargs: dict | None = None):
        """Loss of one batch: the teacher's targets, the student's outputs, the kind's pairs."""
        wav, lengths = batch["wav"], batch["lengths"]
        empty = wav is None
        if empty:  # every file of the batch was bad: run a silent dummy so DDP stays in step
            wav = torch.zeros(1, SAMPLE_RATE)
            lengths = torch.tensor([SAMPLE_RATE])
        wav, lengths = wav.to(self.acc.device), lengths.to(self.acc.device)
        feats, t_states, frame_lengths = self.teacher.features_and_states(wav, lengths)
        targets = TeacherTargets(t_states, frame_lengths, self.teacher.final_norm)
        kwargs = step_kwargs or {}
        with self.acc.autocast():
            if self.share_frontend:
                outputs = self.model(feats, frame_lengths, **kwargs)
            else:
                outputs = self.model(wav, lengths, **kwargs)
            pairs = self.student.distill_pairs(outputs, targets, **kwargs)
            loss, logs = pairs_loss(pairs, frame_lengths, self.loss_kind)
        if empty:
            loss = loss * 0.0
        return loss, logs, frame_lengths

    @torch.no_grad()
    def validate(self) -> float:
        self.model.eval()
        total = torch.zeros(2, device=self.acc.device)
        for batch in self._loader(self.valid_ds, self.valid_sampler):
            if batch["wav"] is None:
                continue
            loss, _, frame_lengths = self._batch_loss(batch, self.student.valid_kwargs())
            n = float(frame_lengths.sum())
            total += torch.tensor([float(loss) * n, n], device=self.acc.device)
        self.model.train()
        total = self.acc.reduce(total, reduction="sum")
        return float(total[0] / total[1].clamp(min=1))

    def run(self) -> dict:
        t = self.t
        self.maybe_resume()
        self.acc.init_trackers("distill", config={k: v for k, v in _flat(to_dict(self.cfg)).items()
                                                  if isinstance(v, (int, float, str, bool))})
        self.model.train()
        start_step, t0 = self.step, time.time()
        bar = tqdm(total=t.max_steps, initial=self.step, desc="distill", disable=not self.acc.is_local_main_process)
        running = []
        while self.step < t.max_steps:
            self.sampler.set_epoch(self.epoch)
            self.train_ds.set_epoch(self.epoch)
            self.sampler.start_batch = self.batch_in_epoch
            for batch in self._loader(self.train_ds, self.sampler):
                self.batch_in_epoch += 1
                for s in batch["skipped"]:
                    if s.path not in self.skipped:
                        log.warning("skipping %s: %s", s.path, s.reason)
                    self.skipped[s.path] = s.reason
                if batch["wav"] is not None:
                    self.seen_indices += batch["indices"]
                    self.audio_seconds += float(batch["lengths"].sum()) / SAMPLE_RATE
                with self.acc.accumulate(self.model):
                    loss, logs, _ = self._batch_loss(batch, self.student.step_kwargs(self.step))
                    self.acc.backward(loss)
                    if self.acc.sync_gradients and t.grad_clip > 0:
                        self.acc.clip_grad_norm_(self.model.parameters(), t.grad_clip)
                    self.optimizer.step()
                    self.optimizer.zero_grad()
                running.append(float(loss))
                if not self.acc.sync_gradients:
                    continue
                self.scheduler.step()
                self.step += 1
                bar.update(1)
                if self.step % t.log_every == 0 or self.step == t.max_steps:
                    row = {"train_loss": sum(running) / len(running), "lr": self.scheduler.get_last_lr()[0],
                           "epoch": self.epoch, **logs}
                    running = []
                    bar.set_postfix(loss=f"{row['train_loss']:.4f}")
                    self.acc.log(row, step=self.step)
                    self.log_metrics(row)
                if self.step % t.eval_every == 0 or self.step == t.max_steps:
                    v = self.validate()
                    self.acc.log({"valid_loss": v}, step=self.step)
                    self.log_metrics({"valid_loss": v})
                    if v < self.best_valid:
                        self.best_valid = v
                        if self.main:
                            self.export_student(self.out / "best")
                        self.acc.wait_for_everyone()
                if self.step % t.save_every == 0 or self.step == t.max_steps:
                    self.save_checkpoint()
                if t.interrupt_after is not None and self.step >= t.interrupt_after:
                    bar.close()
                    self._finish()
                    raise TrainingInterrupted(f"stopped after step {self.step} (train.interrupt_after)")
                if self.step >= t.max_steps:
                    break
            else:
                self.epoch += 1
                self.batch_in_epoch = 0
                continue
            break
        bar.close()
        elapsed = time.time() - t0
        self._write_rank_report(start_step)
        from accelerate.utils import gather_object

        for rank_skips in gather_object([self.skipped]):  # files skipped on every rank
            self.skipped.update(rank_skips)
        summary = {
            "steps": self.step, "resumed_from_step": start_step, "seconds": elapsed,
            "seconds_per_step": elapsed / max(1, self.step - start_step),
            "best_valid_loss": self.best_valid, "audio_seconds_seen": self.audio_seconds,
            "files_listed": len(self.train_ds) + len(self.valid_ds),
            "files_used": len(self.train_ds) + len(self.valid_ds) - len(self._skipped_listed()),
            "files_skipped": len(self.skipped), "skipped": self.skipped, "target_layers": self.target_layers,
            "loss": self.loss_kind, "num_processes": self.acc.num_processes,
            "student": {"kind": self.student.kind, "describe": self.student.describe(), **self.student.info.to_dict()},
            "teacher": self.teacher.info.to_dict(),
        }
        if self.main:
            write_json_atomic(self.out / "summary.json", summary)
            _plot_losses(self.out / "metrics.jsonl", self.out / "loss.png")
        self._finish()
        return summary

    def _finish(self) -> None:
        """Release the DDP wrapper on every rank *before* the process group goes away.

        ``end_training`` destroys the process group; a DDP reducer freed after that tears down
        gloo while the other rank may already have exited, which can hang forever.
        """
        self.acc.wait_for_everyone()
        self.model = self.optimizer = None
        self.acc.free_memory()
        self.acc.wait_for_everyone()
        self.acc.end_training()

    def _skipped_listed(self) -> set[str]:
        """Listed files (train or valid) that turned out bad when loaded."""
        listed = {i.path for i in self.train_ds.items} | {i.path for i in self.valid_ds.items}
        return listed & set(self.skipped)

    def _write_rank_report(self, start_step: int) -> None:
        rank = self.acc.process_index
        write_json_atomic(self.out / "ranks" / f"rank_{rank}.json",
                          {"rank": rank, "num_processes": self.acc.num_processes, "steps": self.step - start_step,
                           "indices": self.seen_indices})


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v
    return out


def distill(cfg: DistillConfig) -> dict:
    """Train a student from ``cfg.teacher`` on ``cfg.data``; returns the run summary."""
    return _Run(cfg).run()
