"""Training checkpoints that survive a killed process, hold no pickle, and are checked before use.

``checkpoints/step_N/`` holds only safetensors and JSON, so resuming from a run folder someone
else wrote never executes code::

    model.safetensors        the trainable part (shared tensors stored once)
    optimizer.safetensors    the optimizer's tensors (AdamW moments, step counts)
    optimizer.json           the rest of its state and its parameter groups
    scheduler.json           the learning-rate schedule's state
    scaler.json              the fp16 gradient scaler's state (fp16 runs only)
    rng_K.safetensors/.json  process K's random generators (torch, CUDA; Python, NumPy)
    trainer_state.json       :class:`TrainerState`: step, position in the epoch, best score, ...
    checkpoint.json          written last: every file above with its size in bytes

A checkpoint is written to ``checkpoints/.step_N.tmp`` and renamed when complete, so a process
killed while writing leaves the previous checkpoint as the newest usable one. Before a resume
trusts a checkpoint it is verified (:func:`verify_checkpoint`: ``checkpoint.json`` present,
every file there with its recorded size, safetensors headers and JSON readable, trainer state
complete); a damaged one is moved aside to ``checkpoints/damaged_step_N/`` with a warning
saying what was wrong (never deleted), and the newest intact one is used. Only when none is
intact does resume stop, naming the folder. No checkpoint is written from non-finite weights.
Old checkpoints are renamed away before they are deleted, so a kill during rotation never
leaves a half-deleted folder that looks whole.
"""

from __future__ import annotations

import json
import logging
import random
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file, load_model, save_file, save_model

from distill.core.fsutil import write_json_atomic
from distill.core.protocol import require_finite
from distill.training.ranks import rank0_broadcast

log = logging.getLogger(__name__)

STATE_FILE = "trainer_state.json"
MANIFEST = "checkpoint.json"
FORMAT = 1


@dataclass
class TrainerState:
    """Everything of a run's progress that is not in the model, optimizer, scheduler or RNG."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    best_valid: float | None = None  # the best validation score so far (None: not validated yet)
    audio_seconds: float = 0.0
    skipped: dict[str, str] = field(default_factory=dict)
    skipped_updates: int = 0  # steps whose loss or gradient was not finite (no update applied)

    def save(self, path: Path) -> None:
        write_json_atomic(path, asdict(self))

    @classmethod
    def load(cls, path: Path) -> "TrainerState":
        data = json.loads(Path(path).read_text())
        return cls(step=int(data["step"]), epoch=int(data["epoch"]), batch_in_epoch=int(data["batch_in_epoch"]),
                   best_valid=data.get("best_valid"), audio_seconds=float(data["audio_seconds"]),
                   skipped=dict(data.get("skipped", {})), skipped_updates=int(data.get("skipped_updates", 0)))


# -- what a checkpoint holds, as safetensors + JSON ------------------------------------------------

def _optimizer_parts(state: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """An optimizer ``state_dict`` as ``(tensors, JSON)``: ``state.<param>.<name>`` tensors, the rest JSON."""
    tensors, plain = {}, {}
    for pid, entries in state["state"].items():
        for name, value in entries.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state.{pid}.{name}"] = value.detach().cpu().contiguous()
            else:
                plain.setdefault(str(pid), {})[name] = value
    return tensors, {"param_groups": state["param_groups"], "plain_state": plain}


def _optimizer_state(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state: dict[int, dict] = {}
    for key, value in tensors.items():
        _, pid, name = key.split(".", 2)
        state.setdefault(int(pid), {})[name] = value
    for pid, entries in meta.get("plain_state", {}).items():
        state.setdefault(int(pid), {}).update(entries)
    groups = []
    for group in meta["param_groups"]:
        group = dict(group)
        if isinstance(group.get("betas"), list):
            group["betas"] = tuple(group["betas"])
        groups.append(group)
    return {"state": state, "param_groups": groups}


def _rng_parts() -> tuple[dict[str, torch.Tensor], dict]:
    """This process's random generators as ``(tensors, JSON)``."""
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"cuda.{i}"] = s
    version, py_state, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return tensors, {"python": [version, list(py_state), gauss],
                     "numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(cached)]}


def _restore_rng(tensors: dict[str, torch.Tensor], meta: dict) -> None:
    torch.set_rng_state(tensors["torch"])
    cuda = [tensors[k] for k in sorted((k for k in tensors if k.startswith("cuda.")), key=lambda k: int(k[5:]))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)
    version, py_state, gauss = meta["python"]
    random.setstate((version, tuple(py_state), gauss))
    kind, keys, pos, has_gauss, cached = meta["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))


def verify_checkpoint(folder: Path) -> str | None:
    """What is wrong with checkpoint ``folder`` (``None``: intact). Reads headers, never tensor data."""
    folder = Path(folder)
    manifest = folder / MANIFEST
    if not manifest.is_file():
        stray = sorted(p.name for p in folder.glob("*.pkl")) + sorted(p.name for p in folder.glob("*.bin"))
        if stray:
            return f"no {MANIFEST}; it holds pickled state ({', '.join(stray)}), which is never loaded"
        return f"no {MANIFEST} (an incomplete or foreign checkpoint)"
    try:
        files = json.loads(manifest.read_text())["files"]
        if not isinstance(files, dict) or not all(isinstance(n, str) and "/" not in n and isinstance(b, int)
                                                  for n, b in files.items()):
            raise ValueError("'files' is not a mapping of file names to sizes")
    except (OSError, ValueError, KeyError, TypeError) as err:
        return f"{MANIFEST} unreadable ({err})"
    for name, size in files.items():
        path = folder / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != size:
            return f"{name} holds {path.stat().st_size} bytes, {size} were written"
        try:
            if name.endswith(".safetensors"):
                with safe_open(str(path), framework="pt") as f:
                    f.keys()
            else:
                json.loads(path.read_text())
        except Exception as err:  # safetensors raises its own error types
            return f"{name} is unreadable ({err})"
    if STATE_FILE not in files:
        return f"no {STATE_FILE}"
    try:
        TrainerState.load(folder / STATE_FILE)
    except (KeyError, TypeError, ValueError) as err:
        return f"{STATE_FILE} is incomplete ({err})"
    for required in ("model.safetensors", "optimizer.safetensors", "optimizer.json", "scheduler.json"):
        if required not in files:
            return f"no {required}"
    return None


def _free_name(path: Path) -> Path:
    """``path``, or ``path.2``, ``path.3``... whichever does not exist yet (nothing is replaced)."""
    n, candidate = 1, path
    while candidate.exists():
        n += 1
        candidate = path.with_name(f"{path.name}.{n}")
    return candidate


class CheckpointManager:
    """Save, rotate, verify, resume. Every process calls :meth:`save` and :meth:`resume`.

    ``model`` / ``optimizer`` / ``scheduler`` are the run's prepared objects (set with
    :meth:`attach` before the first save or resume).
    """

    def __init__(self, accelerator, root: Path, keep: int = 2):
        self.acc, self.root, self.keep = accelerator, Path(root), max(1, keep)
        self.model = self.optimizer = self.scheduler = None
        self.resumed_from: Path | None = None

    def attach(self, model, optimizer, scheduler) -> None:
        self.model, self.optimizer, self.scheduler = model, optimizer, scheduler

    def complete(self) -> list[Path]:
        """Checkpoints that finished writing (``checkpoint.json`` present), oldest first."""
        done = [p for p in self.root.glob("step_*") if p.name[5:].isdigit() and (p / MANIFEST).is_file()]
        return sorted(done, key=lambda p: int(p.name[5:]))

    def candidates(self) -> list[Path]:
        """Every ``step_N`` folder, oldest first (also those that will fail verification)."""
        found = [p for p in self.root.glob("step_*") if p.name[5:].isdigit() and p.is_dir()]
        return sorted(found, key=lambda p: int(p.name[5:]))

    def newest(self) -> Path | None:
        done = self.complete()
        return done[-1] if done else None

    # -- writing -----------------------------------------------------------------------------------

    def save(self, state: TrainerState) -> Path:
        """Write ``checkpoints/step_<state.step>`` (temp folder, then one rename) and drop old ones.

        Raises :class:`distill.core.protocol.NonFiniteError` (nothing written) when a weight or an
        optimizer tensor is NaN or infinite.
        """
        final = self.root / f"step_{state.step}"
        tmp = self.root / f".step_{state.step}.tmp"
        model = self.acc.unwrap_model(self.model)
        opt_tensors, opt_meta = _optimizer_parts(self.optimizer.state_dict())
        require_finite(model, f"checkpoint step_{state.step}: model")
        require_finite(opt_tensors, f"checkpoint step_{state.step}: optimizer")
        if self.acc.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        self.acc.wait_for_everyone()
        rank = self.acc.process_index
        rng_tensors, rng_meta = _rng_parts()
        save_file(rng_tensors, str(tmp / f"rng_{rank}.safetensors"))
        write_json_atomic(tmp / f"rng_{rank}.json", rng_meta)
        if self.acc.is_main_process:
            save_model(model, str(tmp / "model.safetensors"))
            save_file(opt_tensors, str(tmp / "optimizer.safetensors"))
            write_json_atomic(tmp / "optimizer.json", opt_meta)
            write_json_atomic(tmp / "scheduler.json", self.scheduler.state_dict())
            scaler = getattr(self.acc, "scaler", None)
            if scaler is not None:
                write_json_atomic(tmp / "scaler.json", scaler.state_dict())
            state.save(tmp / STATE_FILE)
        self.acc.wait_for_everyone()
        if self.acc.is_main_process:
            files = {p.name: p.stat().st_size for p in sorted(tmp.iterdir()) if p.is_file()}
            write_json_atomic(tmp / MANIFEST, {"format": FORMAT, "step": state.step,
                                               "num_processes": self.acc.num_processes, "files": files})
            self._discard(final)
            tmp.replace(final)  # the checkpoint appears complete or not at all
            for old in self.complete()[: -self.keep]:
                self._discard(old)
        self.acc.wait_for_everyone()
        return final

    # -- reading -----------------------------------------------------------------------------------

    def choose(self) -> Path | None:
        """The newest intact checkpoint (main process decides; every process gets the same answer).

        A damaged one is moved aside to ``damaged_step_N`` with a warning; ``ValueError`` when
        checkpoints exist but none is intact; ``None`` when there are none.
        """
        chosen: list = [None, None]  # path, error
        if self.acc.is_main_process:
            found = self.candidates()
            problems = []
            for folder in reversed(found):
                problem = verify_checkpoint(folder)
                if problem is None:
                    chosen[0] = str(folder)
                    break
                aside = _free_name(folder.with_name(f"damaged_{folder.name}"))
                folder.replace(aside)
                log.warning("checkpoint %s is damaged (%s): moved aside to %s, left for you to inspect; "
                            "resuming from an older checkpoint", folder, problem, aside)
                problems.append(f"{folder.name}: {problem}")
            damaged_before = sorted(p.name for p in self.root.glob("damaged_step_*"))
            if not found and damaged_before:  # an earlier resume moved every checkpoint aside
                problems.append(f"only checkpoints found damaged earlier: {', '.join(damaged_before)}")
            if (found or damaged_before) and chosen[0] is None:
                chosen[1] = (f"no intact checkpoint in {self.root} to resume from ({'; '.join(problems)}); the "
                             f"damaged ones were moved to damaged_step_N there. Start afresh with --overwrite true "
                             "(or another --out)")
        chosen = rank0_broadcast(self.acc)(chosen)
        if chosen[1]:
            raise ValueError(chosen[1])
        return Path(chosen[0]) if chosen[0] else None

    def resume(self) -> TrainerState | None:
        """Load the newest intact checkpoint into the attached objects; its trainer state, or None."""
        folder = self.choose()
        if folder is None:
            return None
        load_model(self.acc.unwrap_model(self.model), str(folder / "model.safetensors"), device=str(self.acc.device))
        self.optimizer.load_state_dict(_optimizer_state(load_file(str(folder / "optimizer.safetensors")),
                                                        json.loads((folder / "optimizer.json").read_text())))
        self.scheduler.load_state_dict(json.loads((folder / "scheduler.json").read_text()))
        scaler = getattr(self.acc, "scaler", None)
        if scaler is not None and (folder / "scaler.json").is_file():
            scaler.load_state_dict(json.loads((folder / "scaler.json").read_text()))
        rank = self.acc.process_index
        rng = folder / f"rng_{rank}.safetensors"
        if rng.is_file():
            _restore_rng(load_file(str(rng)), json.loads((folder / f"rng_{rank}.json").read_text()))
        else:
            log.warning("%s holds no random state of process %d (written by %s processes): its generators stay "
                        "seeded from train.seed", folder, rank,
                        json.loads((folder / MANIFEST).read_text()).get("num_processes", "?"))
        state = TrainerState.load(folder / STATE_FILE)
        if self.acc.is_main_process:
            for stale in self.root.glob(".step_*"):  # a checkpoint a killed process left half-written
                log.info("removing %s (left by an interrupted checkpoint write)", stale)
                shutil.rmtree(stale, ignore_errors=True)
        self.acc.wait_for_everyone()
        self.resumed_from = folder
        return state

    def clear(self) -> None:
        """Remove every checkpoint (``--overwrite true``: a fresh run over an earlier one)."""
        if self.acc.is_main_process and self.root.exists():
            log.warning("--overwrite true: removing the earlier run's checkpoints in %s", self.root)
            shutil.rmtree(self.root)
        self.acc.wait_for_everyone()

    @staticmethod
    def _discard(path: Path) -> None:
        if path.exists():
            gone = path.with_name(f".{path.name}.deleting")
            shutil.rmtree(gone, ignore_errors=True)
            path.replace(gone)
            shutil.rmtree(gone, ignore_errors=True)
