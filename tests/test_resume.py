"""Resume that survives SIGKILL: a real training process killed mid-run, or mid-checkpoint, then resumed.

Each test compares against an uninterrupted run of the same settings, also in a subprocess:
the resumed run must end with the same weights and must have logged the same losses.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from .procs import finish, kill, start

STEPS = 60


def _args(teacher: Path, data: Path, out: Path, *extra: str) -> list[str]:
    return ["distill", "--teacher", str(teacher), "--data", str(data), "--out", str(out),
            "--student.mimic.mimic_dim", "16", "--train.max_steps", str(STEPS), "--train.lr", "3e-3",
            "--train.warmup_steps", "2", "--train.batch_seconds", "3", "--train.crop_seconds", "1.5",
            "--train.valid_fraction", "0.15", "--train.eval_every", "5", "--train.save_every", "5",
            "--train.log_every", "1", *extra]


def _cli(args: list[str], prelude: str = ""):
    """The CLI in a subprocess; ``prelude``: Python run first in that process (fault injection)."""
    code = f"import sys\n{prelude}\nfrom distill.cli import main\nsys.exit(main(sys.argv[1:]))"
    return start([sys.executable, "-c", code, *args], {"OMP_NUM_THREADS": "2"})


def _train_losses(run: Path) -> dict[int, float]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    steps = [r["step"] for r in rows if "train_loss" in r]
    assert len(steps) == len(set(steps)), "a step was logged twice"
    return {r["step"]: r["train_loss"] for r in rows if "train_loss" in r}


def _wait_for(predicate, proc, timeout: float = 240, what: str = "") -> None:
    t0 = time.time()
    while not predicate():
        if proc.poll() is not None:
            pytest.fail(f"the run ended (code {proc.returncode}) before {what}:\n{proc.stderr.read()[-3000:]}")
        if time.time() - t0 > timeout:
            kill(proc)
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.02)


def _last_logged_step(run: Path) -> int:
    metrics = run / "metrics.jsonl"
    if not metrics.is_file():
        return 0
    steps = []
    for line in metrics.read_text().splitlines():
        try:
            steps.append(json.loads(line)["step"])
        except ValueError:  # the line being written
            pass
    return max(steps, default=0)


def _assert_same_result(full: Path, resumed: Path) -> None:
    a, b = load_file(full / "last" / "model.safetensors"), load_file(resumed / "last" / "model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=1e-5, msg=k)
    la, lb = _train_losses(full), _train_losses(resumed)
    assert la.keys() == lb.keys() == set(range(1, STEPS + 1))
    for step in la:
        assert lb[step] == pytest.approx(la[step], rel=1e-5, abs=1e-7), step
    sa, sb = (json.loads((p / "summary.json").read_text()) for p in (full, resumed))
    assert sb["steps"] == STEPS and sb["best_valid_loss"] == pytest.approx(sa["best_valid_loss"], rel=1e-5)


@pytest.fixture(scope="module")
def uninterrupted(tiny_whisper_dir, sentences_corpus, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("resume") / "full"
    finish(_cli(_args(tiny_whisper_dir, sentences_corpus, out)), what="uninterrupted run")
    return out


@pytest.mark.slow
def test_sigkill_at_an_arbitrary_step_then_resume_equals_uninterrupted(uninterrupted, tiny_whisper_dir,
                                                                        sentences_corpus, tmp_path):
    out = tmp_path / "killed"
    proc = _cli(_args(tiny_whisper_dir, sentences_corpus, out))
    # kill once the run is past its second checkpoint, wherever in a step it happens to be
    _wait_for(lambda: _last_logged_step(out) >= 12, proc, what="step 12")
    kill(proc)
    killed_at = _last_logged_step(out)
    assert killed_at < STEPS and not (out / "summary.json").exists(), "the run finished before it was killed"
    finish(_cli(_args(tiny_whisper_dir, sentences_corpus, out, "--train.resume", "true")), what="resumed run")
    summary = json.loads((out / "summary.json").read_text())
    assert 10 <= summary["resumed_from_step"] <= killed_at
    _assert_same_result(uninterrupted, out)


# Fault injection in the training process: when checkpoint step 10 has been written into its
# temporary folder (model, optimizer, RNG), say so and hang before it is committed.
HANG_IN_CHECKPOINT = """
import time
from pathlib import Path
import distill.training.checkpoints as checkpoints
_save = checkpoints.TrainerState.save
def _hanging_save(self, path):
    if self.step == 10:
        Path(path).parent.with_name("WRITING_STEP_10").touch()
        time.sleep(600)
    _save(self, path)
checkpoints.TrainerState.save = _hanging_save
"""


@pytest.mark.slow
def test_sigkill_while_a_checkpoint_is_written_leaves_the_previous_one_usable(uninterrupted, tiny_whisper_dir,
                                                                              sentences_corpus, tmp_path):
    out = tmp_path / "killed"
    proc = _cli(_args(tiny_whisper_dir, sentences_corpus, out), prelude=HANG_IN_CHECKPOINT)
    _wait_for(lambda: (out / "checkpoints" / "WRITING_STEP_10").exists(), proc, what="checkpoint 10 being written")
    kill(proc)
    ckpts = out / "checkpoints"
    assert (ckpts / ".step_10.tmp").is_dir() and not (ckpts / "step_10").exists()  # half-written, not committed
    assert (ckpts / "step_5" / "trainer_state.json").is_file()
    finish(_cli(_args(tiny_whisper_dir, sentences_corpus, out, "--train.resume", "true")), what="resumed run")
    assert json.loads((out / "summary.json").read_text())["resumed_from_step"] == 5
    assert not (ckpts / ".step_10.tmp").exists()  # the remains of the interrupted write are gone
    _assert_same_result(uninterrupted, out)
