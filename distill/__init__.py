"""stackdistill: measure, prune and distil the transformer stack of self-supervised speech models.

The public Python API, imported on first use (``import distill`` stays fast)::

    from distill import load_teacher, load_student, distill, DistillConfig
    teacher = load_teacher("facebook/hubert-base-ls960")       # or a folder, ct2:..., s3prl:...
    summary = distill(DistillConfig(teacher="whisper-tiny.en", data=["corpus/"], out="runs/x"))
    student = load_student("runs/x")                           # its best/ student

The code is organised in layers, each importing only those below it (``tests/test_imports.py``):
``distill.core`` (model protocol, building blocks, configs) < ``distill.data`` < ``distill.analysis``
< ``students`` < ``distill.models`` < ``distill.training`` < ``distill.deploy`` < ``tasks``
(corpora < probe < superb) < ``distill.jobs`` (the commands, pipeline and paper protocol).
"""

from __future__ import annotations

import importlib

_API = {
    "load_teacher": "distill.models.teacher",
    "Teacher": "distill.models.teacher",
    "load_classifier": "distill.models.classifier",
    "load_student": "distill.deploy.export",
    "export_student": "distill.deploy.export",
    "distill": "distill.training.distillation",
    "DistillConfig": "distill.training.distillation",
    "TrainConfig": "distill.training.loop",
    "finetune_model": "distill.training.finetune",
    "list_audio": "distill.data.corpus",
    "load_audio": "distill.data.audio",
    "SimilaritySettings": "distill.analysis.similarity",
    "similarity_matrices": "distill.analysis.similarity",
    "find_blocks": "distill.analysis.blocks",
    "ModelInfo": "distill.core.protocol",
    "load_config": "distill.core.config",
    "run_analysis": "distill.jobs.analyze",
    "AnalyzeConfig": "distill.jobs.analyze",
    "run_prune": "distill.jobs.prune_run",
    "PruneConfig": "distill.jobs.prune_run",
    "finetune": "distill.jobs.finetune_run",
    "FinetuneConfig": "distill.jobs.finetune_run",
    "run_paper": "distill.jobs.paper",
    "PaperConfig": "distill.jobs.paper",
    "run_pipeline": "distill.jobs.pipeline",
    "PipelineConfig": "distill.jobs.pipeline",
}

__all__ = sorted(_API)


def __getattr__(name: str):
    if name not in _API:
        raise AttributeError(f"module 'distill' has no attribute {name!r}")
    value = getattr(importlib.import_module(_API[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_API))
