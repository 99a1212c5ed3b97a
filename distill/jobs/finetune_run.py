"""``stackdistill finetune``: read a labelled corpus, load the model and its head, fine-tune it.

The training itself is :func:`distill.training.finetune.finetune_model` (the one loop); this
command adds what needs :mod:`tasks` (the labelled corpus readers).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from distill.data.cache import CacheConfig
from distill.models.classifier import PROJ_SIZE, ClassificationHead, load_classifier
from distill.models.teacher import OFFLINE_DEFAULT, load_teacher
from distill.training.finetune import finetune_model
from distill.training.loop import TrainConfig
from tasks.corpora.labelled import READERS, load_labelled


def _default_train() -> TrainConfig:
    return TrainConfig(max_steps=1000, lr=1e-4, warmup_steps=100, batch_seconds=16.0, eval_every=100,
                       save_every=500, valid_fraction=0.0)


@dataclass
class FinetuneConfig:
    model: str = field(default=OFFLINE_DEFAULT, metadata={
        "help": "what to fine-tune: teacher spec, student folder, or a classifier folder to continue"})
    task: Literal["ks", "folders", "sid"] = field(default="ks", metadata={"help": "labelled corpus reader"})
    data: str = field(default="", metadata={"help": "corpus root (ks: Speech Commands v0.01; sid: VoxCeleb1)"})
    test_data: str = field(default="", metadata={"help": "test root (ks: default <data>/test)"})
    out: str = field(default="runs/finetune", metadata={"help": "run folder"})
    overwrite: bool = field(default=False, metadata={"help": "write over an earlier run in out (else refused)"})
    head_only: bool = field(default=False, metadata={"help": "train the head alone (the stack stays frozen)"})
    head_from: str = field(default="", metadata={"help": "classifier folder whose head starts this one"})
    proj_size: int = field(default=PROJ_SIZE, metadata={"help": "head projector width (Hugging Face's 256)"})
    valid_fraction: float = field(default=0.1, metadata={"help": "folders task: share held out for validation"})
    test_fraction: float = field(default=0.1, metadata={"help": "folders task without test_data: share held out"})
    train: TrainConfig = field(default_factory=_default_train)
    cache: CacheConfig = field(default_factory=CacheConfig, metadata={"help": "frontend-output cache (train.cache)"})


def finetune(cfg: FinetuneConfig) -> dict:
    """``stackdistill finetune``: fine-tune ``cfg.model`` on the labelled corpus; returns the summary."""
    if cfg.task not in READERS:
        raise ValueError(f"unknown task {cfg.task!r}; known: {sorted(READERS)}")
    if not cfg.data:
        raise ValueError("finetune needs data=<labelled corpus root>")
    corpus = load_labelled(cfg.task, cfg.data, cfg.test_data, seed=cfg.train.seed, valid_fraction=cfg.valid_fraction,
                           test_fraction=cfg.test_fraction)
    model = load_teacher(cfg.model)
    head = getattr(model, "head", None)
    if cfg.head_from:
        head = load_classifier(cfg.head_from).head
    if head is not None:
        head = _copy_head(head)
        if getattr(model, "labels", None) and list(getattr(model, "labels")) != corpus.labels and not cfg.head_from:
            raise ValueError(f"{cfg.model} was trained on labels {model.labels}, the corpus has {corpus.labels}")
    if head is None:
        head = ClassificationHead(model.info.dim, len(corpus.labels), cfg.proj_size)
    return finetune_model(model, corpus, Path(cfg.out), cfg.train, cfg.cache, head, cfg.head_only, config=cfg,
                          overwrite=cfg.overwrite)


def _copy_head(head: ClassificationHead) -> ClassificationHead:
    return copy.deepcopy(head).requires_grad_(True).train()
