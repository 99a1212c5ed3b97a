"""Classifier folders: any model of the protocol with a classification head (:mod:`distill.models.heads`).

Students trained on a task (the redundancy paper's stage 2) are saved as a *classifier folder*:
``encoder/`` (the student's own folder), ``head.safetensors`` and ``classifier.json`` (labels,
head shape); :func:`load_classifier` reads both kinds, these and the Hugging Face
``*ForSequenceClassification`` folders a fine-tuned teacher is saved as.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from distill.core.fsutil import atomic_dir
from distill.models.heads import (
    HF_CLASSIFIER_ARCHITECTURES,
    PROJ_SIZE,
    ClassificationHead,
    StackWithHead,
    head_from_hf,
    labels_of,
    save_hf_classifier,
    stack_with_head,
)
from distill.models.teacher import load_teacher

__all__ = ["save_classifier", "is_classifier_folder", "load_classifier", "ClassificationHead", "StackWithHead",
           "stack_with_head", "save_hf_classifier", "head_from_hf", "labels_of", "PROJ_SIZE",
           "HF_CLASSIFIER_ARCHITECTURES"]


# -- stackdistill classifier folders (students with a head) -------------------------------------------

def save_classifier(model, head: ClassificationHead, labels: list[str], out: str | Path, reads: str = "last") -> Path:
    """``encoder/`` (``model.save_pretrained``), ``head.safetensors``, ``classifier.json``; atomically.

    ``reads``: what the head takes, the encoder's ``last`` hidden state or its ``frontend`` output.
    """
    if reads not in ("last", "frontend"):
        raise ValueError(f"a head reads the last state or the frontend output, not {reads!r}")
    out = Path(out)
    with atomic_dir(out) as tmp:
        model.save_pretrained(tmp / "encoder", safe_serialization=True)
        save_file({k: v.detach().contiguous() for k, v in head.state_dict().items()}, str(tmp / "head.safetensors"))
        (tmp / "classifier.json").write_text(json.dumps({"labels": labels, "head": head.shape(), "reads": reads},
                                                        indent=1) + "\n")
    return out


def is_classifier_folder(path: str | Path) -> bool:
    path = Path(path)
    if (path / "classifier.json").is_file():
        return True
    config = path / "config.json"
    if not config.is_file():
        return False
    return bool(set(json.loads(config.read_text()).get("architectures") or []) & set(HF_CLASSIFIER_ARCHITECTURES))


def load_classifier(path: str | Path):
    """A frozen model with ``head`` and ``labels`` from either kind of classifier folder."""
    path = Path(path)
    if (path / "classifier.json").is_file():
        meta = json.loads((path / "classifier.json").read_text())
        model = load_teacher(str(path / "encoder"))
        head = ClassificationHead(**meta["head"])
        state = load_file(str(path / "head.safetensors"))
        if head.standardize and "input_keep" not in state:  # saved before dimensions could be dropped: all kept
            state["input_keep"] = torch.ones(head.dim)
        head.load_state_dict(state)
        head.requires_grad_(False)
        model.head, model.labels = head.eval(), list(meta["labels"])
        model.head_reads = meta.get("reads", "last")
        model.name = str(path)
        return model
    model = load_teacher(str(path))
    if getattr(model, "head", None) is None:
        raise ValueError(f"{path}: not a classifier folder (no classification head)")
    return model
