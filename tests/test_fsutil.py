"""Atomic writes that survive a crash: the data reaches the disk before the rename, the rename is
flushed, and a folder being replaced is there, old or new, at every moment."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from distill.core import fsutil
from distill.core.fsutil import atomic_dir, write_text_atomic


def _record_fsyncs(monkeypatch) -> list[str]:
    """The path each fsync'd descriptor names, in order."""
    seen = []
    real = os.fsync

    def recording(fd):
        seen.append(os.readlink(f"/proc/self/fd/{fd}"))
        return real(fd)

    monkeypatch.setattr(os, "fsync", recording)
    return seen


def test_write_text_atomic_flushes_the_file_before_the_rename_and_the_folder_after(tmp_path, monkeypatch):
    seen = _record_fsyncs(monkeypatch)
    renamed = []
    real_replace = os.replace
    monkeypatch.setattr(os, "replace", lambda a, b: (renamed.append(len(seen)), real_replace(a, b))[1])
    target = tmp_path / "summary.json"
    write_text_atomic(target, '{"steps": 3}\n')
    assert target.read_text() == '{"steps": 3}\n'
    (at,) = renamed
    before, after = seen[:at], seen[at:]
    assert any(p.startswith(str(tmp_path / ".summary.json.tmp")) for p in before)  # the data, flushed, then renamed
    assert str(tmp_path) in after  # the rename itself made durable
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left


def test_atomic_dir_flushes_every_file_before_the_swap(tmp_path, monkeypatch):
    seen = _record_fsyncs(monkeypatch)
    with atomic_dir(tmp_path / "best") as tmp:
        (tmp / "model.safetensors").write_bytes(b"x" * 100)
        (tmp / "sub").mkdir()
        (tmp / "sub" / "config.json").write_text("{}")
    flushed = {os.path.basename(p) for p in seen}
    assert {"model.safetensors", "config.json"} <= flushed and str(tmp_path) in seen
    assert (tmp_path / "best" / "sub" / "config.json").read_text() == "{}"


POLLER = """
import os, sys, time
path, marker, stop = sys.argv[1], sys.argv[2], sys.argv[3]
polls = missing = 0
seen = set()
while not os.path.exists(stop):
    polls += 1
    try:
        with open(os.path.join(path, marker)) as f:
            seen.add(f.read())
    except FileNotFoundError:
        missing += 1
print(polls, missing, len(seen))
"""


def test_a_folder_being_replaced_is_never_missing(tmp_path):
    """Another process reads the folder without pause while it is replaced 300 times."""
    best = tmp_path / "best"
    with atomic_dir(best) as tmp:
        (tmp / "marker").write_text("0")
    stop = tmp_path / "stop"
    poller = subprocess.Popen([sys.executable, "-c", POLLER, str(best), "marker", str(stop)], stdout=subprocess.PIPE,
                              text=True)
    time.sleep(0.5)  # the poller is running
    for k in range(1, 301):
        with atomic_dir(best) as tmp:
            (tmp / "marker").write_text(str(k))
    stop.write_text("")
    polls, missing, versions = map(int, poller.communicate(timeout=60)[0].split())
    assert polls > 1000 and versions > 1  # it did watch the swaps happen
    assert missing == 0  # old or new folder at every moment
    assert (best / "marker").read_text() == "300" and sorted(p.name for p in tmp_path.iterdir()) == ["best", "stop"]


def test_without_an_atomic_exchange_the_folder_is_still_replaced(tmp_path, monkeypatch):
    monkeypatch.setattr(fsutil, "exchange_paths", lambda a, b: False)  # another system or file system
    for k in range(3):
        with atomic_dir(tmp_path / "last") as tmp:
            (tmp / "marker").write_text(str(k))
    assert (tmp_path / "last" / "marker").read_text() == "2" and [p.name for p in tmp_path.iterdir()] == ["last"]
