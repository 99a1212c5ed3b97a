"""Readable model names for tables and plot titles: a folder's name, never its path.

A spec is what a command was given: a hub id (``openai/whisper-tiny.en``, kept as is), a known
offline name (``whisper-tiny.en``), or a folder (``runs/x/distill/shared/best`` reads
``shared``: the run's name, since ``best``, ``last`` and ``model`` say nothing).
"""

from __future__ import annotations

from pathlib import Path

ANONYMOUS_FOLDERS = ("best", "last", "model")


def looks_like_path(spec: str) -> bool:
    """A folder on disk, or written like one (absolute, relative, or deeper than a hub id's ``org/name``)."""
    return Path(spec).exists() or spec.startswith(("/", "./", "../", "~")) or spec.count("/") >= 2


def readable_name(spec: str) -> str:
    """``spec`` as a reader should see it: a hub id or name unchanged, a folder by its (run's) name."""
    spec = str(spec)
    if not looks_like_path(spec):
        return spec
    p = Path(spec.rstrip("/"))
    return p.parent.name if p.name in ANONYMOUS_FOLDERS and p.parent.name else p.name


def model_title(model) -> str:
    """A plot title's name for ``model``: its readable name, and the teacher a student came from."""
    name = readable_name(getattr(model, "name", "") or type(model).__name__)
    teacher = getattr(getattr(model, "config", None), "teacher_name", "") or ""
    if teacher:
        teacher = readable_name(teacher)
        if teacher not in name:
            return f"{name} (student of {teacher})"
    return name
