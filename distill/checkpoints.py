"""Training checkpoints that survive a killed process, and the trainer state they carry.

``checkpoints/step_N/`` holds Accelerate's ``save_state`` (the trainable model as safetensors,
optimizer, scheduler, every process's RNG) and ``trainer_state.json`` (:class:`TrainerState`:
step, position in the epoch, best validation loss, audio seen, files skipped). A checkpoint is
written to ``checkpoints/.step_N.tmp`` and renamed when complete, so a process killed while
writing leaves the previous checkpoint as the newest usable one; only folders named
``step_N`` that hold ``trainer_state.json`` count. Old checkpoints are renamed away before they
are deleted, so a kill during rotation never leaves a half-deleted folder that looks whole.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .fsutil import write_json_atomic

log = logging.getLogger(__name__)

STATE_FILE = "trainer_state.json"


@dataclass
class TrainerState:
    """Everything of a run's progress that is not in the model, optimizer, scheduler or RNG."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    best_valid: float | None = None  # the best validation score so far (None: not validated yet)
    audio_seconds: float = 0.0
    skipped: dict[str, str] = field(default_factory=dict)

    def save(self, path: Path) -> None:
        write_json_atomic(path, asdict(self))

    @classmethod
    def load(cls, path: Path) -> "TrainerState":
        data = json.loads(Path(path).read_text())
        return cls(step=data["step"], epoch=data["epoch"], batch_in_epoch=data["batch_in_epoch"],
                   best_valid=data.get("best_valid"), audio_seconds=data["audio_seconds"],
                   skipped=dict(data.get("skipped", {})))


class CheckpointManager:
    """Save, rotate, find the newest, resume. Every process calls :meth:`save` and :meth:`resume`."""

    def __init__(self, accelerator, root: Path, keep: int = 2):
        self.acc, self.root, self.keep = accelerator, Path(root), max(1, keep)

    def complete(self) -> list[Path]:
        """Complete checkpoints, oldest first."""
        done = [p for p in self.root.glob("step_*") if p.name[5:].isdigit() and (p / STATE_FILE).is_file()]
        return sorted(done, key=lambda p: int(p.name[5:]))

    def newest(self) -> Path | None:
        done = self.complete()
        return done[-1] if done else None

    def save(self, state: TrainerState) -> Path:
        """Write ``checkpoints/step_<state.step>`` (temp folder, then one rename) and drop old ones."""
        final = self.root / f"step_{state.step}"
        tmp = self.root / f".step_{state.step}.tmp"
        if self.acc.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
        self.acc.wait_for_everyone()
        self.acc.save_state(str(tmp), safe_serialization=True)
        self.acc.wait_for_everyone()
        if self.acc.is_main_process:
            state.save(tmp / STATE_FILE)
            self._discard(final)
            tmp.replace(final)  # the checkpoint appears complete or not at all
            for old in self.complete()[: -self.keep]:
                self._discard(old)
        self.acc.wait_for_everyone()
        return final

    def resume(self) -> TrainerState | None:
        """Load the newest complete checkpoint into the prepared objects; its trainer state, or None."""
        newest = self.newest()
        if newest is None:
            return None
        self.acc.load_state(str(newest))
        state = TrainerState.load(newest / STATE_FILE)
        if self.acc.is_main_process:
            for stale in self.root.glob(".step_*"):  # a checkpoint a killed process left half-written
                log.info("removing %s (left by an interrupted checkpoint write)", stale)
                shutil.rmtree(stale, ignore_errors=True)
        self.acc.wait_for_everyone()
        return state

    def clear(self) -> None:
        """Remove every checkpoint (a fresh run in a folder holding an earlier run's)."""
        if self.acc.is_main_process and self.root.exists():
            log.warning("starting afresh: removing the earlier run's checkpoints in %s (resume: train.resume true)",
                        self.root)
            shutil.rmtree(self.root)
        self.acc.wait_for_everyone()

    @staticmethod
    def _discard(path: Path) -> None:
        if path.exists():
            gone = path.with_name(f".{path.name}.deleting")
            shutil.rmtree(gone, ignore_errors=True)
            path.replace(gone)
            shutil.rmtree(gone, ignore_errors=True)
