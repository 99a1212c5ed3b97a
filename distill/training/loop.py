"""The one Accelerate training loop: distillation, fine-tuning and adaptation all run through it.

:func:`train_loop` reads top to bottom: resume or start afresh, then the steps (forward and
backward of each batch, gradient accumulation, clipping, optimizer, schedule), log rows averaged
over every process, validation and the best model, checkpoints, until ``train.max_steps``; then
the summary. *What* is trained and how it is scored belongs to an :class:`Objective`
(distillation in :mod:`distill.training.distillation`, classification in :mod:`distill.training.finetune`); where the
batches come from belongs to a source (:mod:`distill.data.batches`).

``accelerate launch`` runs the same code on many processes: batches are sharded by the batch
sampler (equal counts on every rank, and one optimizer step covers the same batches for any
split between processes and ``train.grad_accum``), frozen modules stay outside ``prepare``
(DDP would reject a module without trainable parameters), and only the trainable part is
wrapped. Logged losses are averaged over every process; files are written by the main process
only. ``train.resume true`` restores model, optimizer, scheduler, RNG and the position in the
epoch from the newest intact checkpoint, also after a SIGKILL (:mod:`distill.training.checkpoints`).

Divergence is caught here, once, for every objective and student kind: a step whose loss or
gradient is not finite on any process (the flag is reduced over processes, so every rank
agrees) applies no update (under fp16 the gradient scaler skips it and lowers its scale);
``train.nonfinite_patience`` such steps in a row stop the run with one line saying what to
try (:class:`TrainingDiverged`, a ``ValueError``: the CLI exits non-zero). A non-finite
validation score is never the best, and nothing non-finite is ever written: checkpoints,
``best/`` and ``last/`` refuse NaN or infinite tensors (:func:`distill.core.protocol.require_finite`).

Every log row and the summary carry this process's resident memory (``rss_mb``, ``peak_rss_mb``;
the peak counted from the loop's start, set-up excluded: :mod:`distill.core.memory`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

import torch
from tqdm import tqdm

from distill.core.config import to_dict
from distill.core.fsutil import atomic_dir, claim_run_folder, write_json_atomic, write_text_atomic
from distill.core.memory import PeakSince
from distill.core.plots import curves
from distill.core.protocol import require_finite
from distill.training.checkpoints import CheckpointManager, TrainerState

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
    nonfinite_patience: int = field(
        default=8, metadata={"help": "consecutive steps with a NaN/inf loss or gradient (update skipped) that stop the run"})
    loss: Literal["auto", "mse", "l1_cos"] = field(
        default="auto", metadata={"help": "distillation: auto (the student kind's own), mse, or l1_cos (DistilHuBERT)"})
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


class Objective(Protocol):
    """What a run optimises and how it is scored; the loop is the same for every objective.

    ``score`` names the validation figure that picks ``best/`` (``valid_loss``,
    ``valid_accuracy``); ``loss`` is one batch's forward (the loop does the backward);
    ``validate`` runs on every process (its sums are reduced over them); ``save`` writes the
    trained model into a folder (main process); ``summary`` adds its own figures.
    """

    score: str
    higher_is_better: bool

    def loss(self, batch, step: int, model) -> tuple[torch.Tensor, dict]: ...

    def validate(self, model) -> dict[str, float]: ...

    def save(self, folder: Path) -> None: ...

    def summary(self) -> dict: ...

    @property
    def title(self) -> str: ...  # what is trained, for plot titles (names, never paths)


@dataclass
class Run:
    """Everything the loop needs, assembled by a command's set-up."""

    acc: object
    out: Path
    train: TrainConfig
    model: torch.nn.Module  # the prepared trainable part
    optimizer: object
    scheduler: object
    source: object  # distill.data.batches: train_batches / valid_batches / batches_per_epoch / kind
    objective: Objective
    checkpoints: CheckpointManager
    config: object  # the command's resolved config (TensorBoard hyper-parameters)
    files_listed: int = 0
    scan_skipped: dict[str, str] = field(default_factory=dict)  # headers unreadable: never listed
    build_skipped: dict[str, str] = field(default_factory=dict)  # listed, found bad by the cache build
    cache_summary: dict | None = None

    @property
    def main(self) -> bool:
        return self.acc.is_main_process

    def log_event(self, step: int, row: dict) -> None:
        if self.main:
            with open(self.out / "metrics.jsonl", "a") as f:
                f.write(json.dumps({"step": step, **row}) + "\n")

    def export(self, name: str, step: int) -> None:
        """``best/`` or ``last/`` from the trained model; refuses non-finite weights (nothing written)."""
        require_finite(self.acc.unwrap_model(self.model), f"{self.out / name}")
        if self.main:
            with atomic_dir(self.out / name) as tmp:
                self.objective.save(tmp)
            self.log_event(step, {"event": "export", "path": name})


SCALE_FLOOR = 1.0  # an fp16 loss scale below this means the gradients overflow unscaled: not the scaler's business


class TrainingDiverged(ValueError):
    """The loss or the gradients stayed non-finite for ``train.nonfinite_patience`` steps."""


def make_accelerator(out: Path, t: TrainConfig, find_unused_parameters: bool = False, overwrite: bool = False,
                     claim: bool = True):
    """The run's Accelerator (TensorBoard under ``out/tb``), seeded; makes ``out`` on the main process.

    Refuses (``ValueError``, nothing written) when ``out`` already holds a run, unless
    ``t.resume`` or ``overwrite`` (:func:`distill.core.fsutil.claim_run_folder`); every process checks
    before any writes.
    """
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs, ProjectConfiguration, set_seed

    if t.grad_accum < 1:
        raise ValueError(f"train.grad_accum must be at least 1, got {t.grad_accum}")
    if t.nonfinite_patience < 1:
        raise ValueError(f"train.nonfinite_patience must be at least 1, got {t.nonfinite_patience}")
    from accelerate.state import AcceleratorState

    state = AcceleratorState._shared_state
    if state and state.get("_mixed_precision", t.mixed_precision) != t.mixed_precision:
        # another run in this process used another precision (a pipeline's stages, a library user):
        # Accelerate keeps one per process, so forget it (the distributed set-up is kept)
        AcceleratorState._reset_state(reset_partial_state=False)
    acc = Accelerator(mixed_precision=t.mixed_precision, log_with="tensorboard",
                      project_config=ProjectConfiguration(project_dir=str(out), logging_dir=str(out / "tb")),
                      kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=find_unused_parameters)])
    set_seed(t.seed)
    if claim:
        claim_run_folder(out, overwrite=overwrite, resume=t.resume, resume_flag="--train.resume true")
    acc.wait_for_everyone()
    if acc.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
    return acc


def _lr_lambda(warmup: int, total: int):
    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / max(1, warmup)
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    return f


def _constant(step: int) -> float:
    return 1.0


def prepare_trainable(acc, trainable: torch.nn.Module, t: TrainConfig):
    """``(model, optimizer, scheduler)``: AdamW over the trainable parameters, warm-up + cosine.

    A submodule with ``special_parameter_groups()`` (``[{"params": [...], "lr": ..., ...}]``)
    gives those parameters their own optimizer settings (gates at their own learning rate); the
    warm-up + cosine schedule scales every group, except one marked ``"schedule": "constant"``.
    """
    groups, special = [], set()
    for module in trainable.modules():
        for group in getattr(module, "special_parameter_groups", lambda: [])():
            params = [p for p in group["params"] if p.requires_grad and id(p) not in special]
            special |= {id(p) for p in params}
            if params:
                groups.append({**group, "params": params})
    params = [p for p in trainable.parameters() if p.requires_grad and id(p) not in special]
    if not params and not groups:
        raise ValueError("nothing to train: every parameter is frozen")
    optimizer = torch.optim.AdamW(([{"params": params}] if params else []) + groups, lr=t.lr,
                                  weight_decay=t.weight_decay)
    schedule = _lr_lambda(t.warmup_steps, t.max_steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, [_constant if g.get("schedule") == "constant" else schedule for g in optimizer.param_groups])
    model, optimizer = acc.prepare(trainable, optimizer)
    # stepped once per update on every rank (a prepared scheduler would step num_processes times);
    # checkpointed by distill.training.checkpoints as JSON, never through Accelerate's pickles
    return model, optimizer, scheduler


class _LossWindow:
    """Losses of the steps since the last log line; :meth:`flush` averages them over every process."""

    def __init__(self):
        self.sums: dict[str, float] = {}
        self.counts: dict[str, int] = {}

    def add(self, loss: float, logs: dict) -> None:
        """One batch's figures; non-finite ones are left out (the step's update was skipped)."""
        for k, v in {"train_loss": loss, **logs}.items():
            if not math.isfinite(v):
                continue
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


def _better(run: Run, value: float, best: float | None) -> bool:
    """Whether ``value`` beats ``best``; a non-finite score never does."""
    if not math.isfinite(value):
        return False
    if best is None:
        return True
    return value > best if run.objective.higher_is_better else value < best


def train_loop(run: Run, final: bool = True) -> dict:
    """Train until ``train.max_steps`` (resuming if asked); writes and returns the summary.

    ``final`` false: another run follows in this process (a kind's next stage), so the
    distributed process group is kept (only the trackers are closed).
    """
    t, acc = run.train, run.acc
    run.checkpoints.attach(run.model, run.optimizer, run.scheduler)
    state = run.checkpoints.resume() if t.resume else None
    if state is None:
        if t.resume:
            log.warning("resume requested but %s holds no checkpoint: starting fresh", run.checkpoints.root)
        else:  # the folder was claimed (empty, or --overwrite true): an earlier run's files go
            run.checkpoints.clear()
        if run.main:
            _clear_outputs(run.out)
        state = TrainerState()
    else:
        _drop_rows_after(run.out / "metrics.jsonl", state.step, run.main)
        if run.main:
            log.info("resumed from step %d (epoch %d, batch %d)", state.step, state.epoch, state.batch_in_epoch)
        run.log_event(state.step, {"event": "resume", "from": str(run.checkpoints.resumed_from)})
    state.skipped = {**run.scan_skipped, **run.build_skipped, **state.skipped}
    if run.source.batches_per_epoch() == 0:
        raise ValueError("no training audio left (every file skipped?)")
    acc.init_trackers("train", config={k: v for k, v in _flat(to_dict(run.config)).items()
                                       if isinstance(v, (int, float, str, bool))})

    start_step, t0 = state.step, time.time()
    memory = PeakSince.start()  # set-up (imports, teacher, cache build) excluded from the peak
    audio_before, audio_here = state.audio_seconds, 0.0  # all processes' until the checkpoint; this one's since
    seen: list[int] = []
    window = _LossWindow()
    guard = _DivergenceGuard(run)
    bar = tqdm(total=t.max_steps, initial=state.step, desc=run.out.name, disable=not acc.is_local_main_process)
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
                with acc.autocast():
                    loss, logs = run.objective.loss(batch, state.step, run.model)
                acc.backward(loss / t.grad_accum)
            loss_value = float(loss.detach())
            guard.add_loss(loss_value)
            window.add(loss_value, logs)
            if not last_of_step:
                continue
            # the norm of the (unscaled, all-reduced) gradients; max_norm inf only measures it
            grad_norm = acc.clip_grad_norm_(run.model.parameters(), t.grad_clip if t.grad_clip > 0 else math.inf)
            finite = guard.step_is_finite(grad_norm)
            if finite or acc.scaler is not None:  # fp16: the scaler skips a non-finite step itself
                run.optimizer.step()
            run.optimizer.zero_grad()
            run.scheduler.step()
            state.step += 1
            bar.update(1)
            if not finite:
                state.skipped_updates += 1
                guard.after_skipped_step(state)  # raises TrainingDiverged past the patience

            if state.step % t.log_every == 0 or state.step == t.max_steps:
                row = {**window.flush(acc), "lr": run.scheduler.get_last_lr()[0], "epoch": state.epoch,
                       "elapsed": time.time() - t0, "audio_seconds": audio_before + _sum_over_ranks(acc, audio_here),
                       "skipped_updates": state.skipped_updates,
                       **{k: v for k, v in memory.figures().items() if v is not None}}
                if "train_loss" in row:
                    bar.set_postfix(loss=f"{row['train_loss']:.4f}")
                acc.log(row, step=state.step)
                run.log_event(state.step, row)
            if state.step % t.eval_every == 0 or state.step == t.max_steps:
                metrics = _validate(run, state)
                score = metrics[run.objective.score]
                if not math.isfinite(score) and run.main:
                    log.warning("step %d: validation %s is %s; it is not a best model", state.step,
                                run.objective.score, score)
                acc.log({k: v for k, v in metrics.items() if math.isfinite(v)}, step=state.step)
                run.log_event(state.step, {k: (v if math.isfinite(v) else None) for k, v in metrics.items()})
                if _better(run, score, state.best_valid):
                    state.best_valid = score
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
    if state.best_valid is None:
        raise ValueError(f"{run.out}: no validation gave a finite {run.objective.score}, so there is no best/ "
                         "model; see metrics.jsonl (a lower --train.lr or --train.mixed_precision no may help)")
    _gather_totals(acc, state, audio_before, audio_here)
    return _finish(run, state, start_step, time.time() - t0, seen, memory, final)


RUN_OUTPUTS = ("metrics.jsonl", "summary.json", "loss.png", "test.json", "best", "last", "ranks", "tb")


def _clear_outputs(out: Path) -> None:
    """Remove what an earlier run in ``out`` wrote (``--overwrite true``), so nothing stale is read as new."""
    for name in RUN_OUTPUTS:
        path = out / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def _validate(run: Run, state: TrainerState) -> dict:
    model = run.acc.unwrap_model(run.model)  # no DDP collectives: ranks may hold unequal shares
    model.eval()
    try:
        return run.objective.validate(model)
    finally:
        model.train()
        for path, reason in getattr(run.source, "valid_skipped", {}).items():  # bad held-out files count too
            if path not in state.skipped:
                log.warning("skipping %s: %s", path, reason)
            state.skipped[path] = reason


class _DivergenceGuard:
    """Non-finite losses and gradients of each step, agreed over processes; stops a diverged run."""

    def __init__(self, run: Run):
        self.run = run
        self.loss_finite = True
        self.last_loss = math.nan
        self.grad_norm = 0.0
        self.bad_losses = 0
        self.streak = 0
        self.first_bad_step: int | None = None

    def add_loss(self, value: float) -> None:
        if not math.isfinite(value) and self.loss_finite:
            self.last_loss = value
        self.loss_finite &= math.isfinite(value)

    def step_is_finite(self, grad_norm) -> bool:
        """Whether every process saw a finite loss and gradient this step (one reduction over processes)."""
        acc = self.run.acc
        self.grad_norm = float(grad_norm)  # all-reduced gradients: the same norm on every process
        flags = torch.tensor([float(not self.loss_finite), float(not math.isfinite(self.grad_norm))],
                             device=acc.device)
        if acc.num_processes > 1:
            flags = acc.reduce(flags, reduction="sum")
        self.bad_losses = int(flags[0])  # processes whose loss was not finite
        bad = bool(flags.sum() > 0)
        self.loss_finite = True
        if not bad:
            self.streak, self.first_bad_step = 0, None
        return not bad

    def _what(self) -> str:
        n = self.run.acc.num_processes
        loss = (f"loss not finite on {self.bad_losses} of {n} processes" if n > 1 else f"loss {self.last_loss}") \
            if self.bad_losses else "loss finite"
        return f"{loss}, gradient norm {self.grad_norm:.4g}"

    def scaler_handled(self) -> bool:
        """An fp16 overflow the gradient scaler dealt with (finite losses, a scale still above 1): routine."""
        scaler = getattr(self.run.acc, "scaler", None)
        return scaler is not None and self.bad_losses == 0 and float(scaler.get_scale()) >= SCALE_FLOOR

    def after_skipped_step(self, state: TrainerState) -> None:
        run, t = self.run, self.run.train
        if self.scaler_handled():  # the scaler skipped the step and lowered its scale, as it should
            return
        self.streak += 1
        if self.first_bad_step is None:
            self.first_bad_step = state.step
        if run.main and self.streak == 1:
            log.warning("step %d: non-finite loss or gradient (%s): update skipped", state.step, self._what())
        run.log_event(state.step, {"event": "nonfinite_step", "what": self._what()})
        if self.streak < t.nonfinite_patience:
            return
        newest = run.checkpoints.newest()
        kept = f"the last checkpoint is {newest.relative_to(run.out)}" if newest else "no checkpoint was written"
        hints = [f"a lower --train.lr (now {t.lr:g})"]
        hints.append("--train.mixed_precision bf16 instead of fp16" if t.mixed_precision == "fp16" else
                     "--train.mixed_precision no" if t.mixed_precision == "bf16" else "a longer --train.warmup_steps "
                     f"(now {t.warmup_steps})")
        hints.append(f"a tighter --train.grad_clip (now {t.grad_clip:g})" if t.grad_clip > 0 else
                     "--train.grad_clip 1.0")
        message = (f"training diverged at step {state.step}: the loss or the gradients were NaN or infinite for "
                   f"{self.streak} steps in a row since step {self.first_bad_step} (last: {self._what()}); "
                   f"those updates were skipped and nothing non-finite was saved ({kept}). Try "
                   + ", ".join(hints[:-1]) + f" or {hints[-1]}")
        run.log_event(state.step, {"event": "diverged", "message": message})
        raise TrainingDiverged(message)


def _finish(run: Run, state: TrainerState, start_step: int, elapsed: float, seen: list[int], memory: PeakSince,
            final: bool = True) -> dict:
    """Rank reports, the summary and the loss plot; then release DDP."""
    acc = run.acc
    rank = acc.process_index
    write_json_atomic(run.out / "ranks" / f"rank_{rank}.json",
                      {"rank": rank, "num_processes": acc.num_processes, "steps": state.step - start_step,
                       "source": run.source.kind, "indices": seen})
    listed = run.files_listed + len(run.scan_skipped)  # every file found, readable header or not
    summary = {
        "steps": state.step, "resumed_from_step": start_step, "seconds": elapsed,
        "seconds_per_step": elapsed / max(1, state.step - start_step),
        f"best_{run.objective.score}": state.best_valid, "audio_seconds_seen": state.audio_seconds,
        "files_listed": listed, "files_used": listed - len(state.skipped),
        "files_skipped": len(state.skipped), "skipped": state.skipped, "skipped_updates": state.skipped_updates,
        "num_processes": acc.num_processes, "grad_accum": run.train.grad_accum,
        "targets": {"source": run.source.kind, "cache": run.cache_summary},
        "memory": memory.summary(),  # this process's: the loop's start (after set-up) and its peak since
        **run.objective.summary(),
    }
    if run.main:
        write_json_atomic(run.out / "summary.json", summary)
        _plot_losses(run.out / "metrics.jsonl", run.out / "loss.png", f"{run.out.name}: {run.objective.title}")
    # release the DDP wrapper on every rank *before* end_training destroys the process group: a
    # reducer freed after that tears gloo down while the other rank may have exited, and hangs
    acc.wait_for_everyone()
    run.model = run.optimizer = None
    acc.free_memory()
    acc.wait_for_everyone()
    if final:
        acc.end_training()
    else:  # the next stage's Accelerator uses the same process group
        for tracker in acc.trackers:
            tracker.finish()
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
        write_text_atomic(metrics, "".join(line + "\n" for line in keep))


def _plot_losses(metrics_path: Path, out_png: Path, title: str) -> None:
    rows = [json.loads(line) for line in metrics_path.read_text().splitlines() if line.strip()]
    series = {}
    for key, label in (("train_loss", "train"), ("valid_loss", "validation")):
        points = [(r["step"], r[key]) for r in rows if key in r]
        if points:
            series[label] = tuple(map(list, zip(*points)))
    curves(series, out_png, "step", "loss", title, logy=True)


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v
    return out
