"""Real processes for the tests that need them: the CLI in a subprocess, ``accelerate launch``.

Every process runs in its own session, so a timeout kills it *and* its children (the ranks of
a launch), none left holding the CPU.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys

import pytest

# ranks on gloo without GPUs (see ../shared/docs/environment.md); one thread each on 2 cores
LAUNCH_ENV = {"ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(cmd: list[str], env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen(cmd, env={**os.environ, **(env or {})}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)


def kill(proc: subprocess.Popen) -> None:
    """SIGKILL the process and its whole session."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.communicate()


def finish(proc: subprocess.Popen, timeout: float = 300, what: str = "process") -> str:
    """Wait for ``proc``; fail the test on a timeout or a non-zero exit. Returns its stderr."""
    try:
        _, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        _, stderr = proc.communicate()
        pytest.fail(f"{what} timed out; its output ended with:\n{stderr[-3000:]}")
    assert proc.returncode == 0, f"{what} failed:\n{stderr[-3000:]}"
    return stderr


def cli(args: list[str], env: dict | None = None) -> subprocess.Popen:
    """``stackdistill ARGS`` in a subprocess (not waited for)."""
    return start([sys.executable, "-m", "distill.cli", *args], env)


def launch(args: list[str], num_processes: int = 2, timeout: float = 300) -> str:
    """``accelerate launch --multi_gpu --num_processes N -m distill.cli ARGS`` on CPU ranks, waited for."""
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(num_processes),
           "--main_process_port", str(free_port()), "-m", "distill.cli", *args]
    return finish(start(cmd, LAUNCH_ENV), timeout, f"{num_processes}-process run")
