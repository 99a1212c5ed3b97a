"""The student registry: ``--student.kind NAME`` picks a family, each with its own typed section.

A kind is one file in ``students/`` (a :class:`~students.base.StudentModel` subclass with
``kind``, ``config_class`` and ``options_class``) plus one line, ``register_student(Cls)`` (or
``@register_student`` on the class), which also registers it with ``AutoConfig`` / ``AutoModel``.

:class:`StudentSpec` is the ``student`` section of a distillation config: ``name``, ``kind``,
``train_frontend`` and one typed sub-section per registered kind (``student.mimic.block_type``,
``student.shared.groups``, ...). Only the active kind's section is written to a run's config.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

from transformers import AutoConfig, AutoModel

from .base import BuildContext, StudentModel

KINDS: dict[str, type[StudentModel]] = {}


def register_student(cls: type[StudentModel]) -> type[StudentModel]:
    """Register a student kind (usable as a decorator); returns the class unchanged."""
    if not cls.kind or not isinstance(cls.kind, str):
        raise ValueError(f"{cls.__name__} needs a class attribute kind = '<name>'")
    for attr in ("config_class", "options_class"):
        if getattr(cls, attr, None) in (None, type(None)):
            raise ValueError(f"student kind {cls.kind!r}: {cls.__name__} lacks {attr}")
    if cls.kind in KINDS and KINDS[cls.kind] is not cls:
        raise ValueError(f"student kind {cls.kind!r} is already registered by {KINDS[cls.kind].__name__}")
    KINDS[cls.kind] = cls
    AutoConfig.register(cls.config_class.model_type, cls.config_class, exist_ok=True)
    AutoModel.register(cls.config_class, cls, exist_ok=True)
    return cls


def student_class(kind: str) -> type[StudentModel]:
    if kind not in KINDS:
        raise ValueError(f"unknown student kind {kind!r}; known: {sorted(KINDS)}")
    return KINDS[kind]


@dataclass
class StudentSpec:
    """Which student to build: ``kind`` picks the family, ``<kind>.*`` holds its settings."""

    name: str = field(default="", metadata={"help": "name in reports (default: the kind)"})
    kind: str = field(default="mimic", metadata={"help": "student family: mimic, distilhubert, shared, pruned, structured, lowrank"})
    train_frontend: bool = field(default=False, metadata={"help": "fine-tune the copied teacher frontend"})
    sections: dict = field(default_factory=dict, repr=False, metadata={"help": "per-kind settings"})

    def __post_init__(self):
        student_class(self.kind)  # a clear error for an unknown kind
        sections = {}
        for kind, options in self.sections.items():  # own copies: specs never share option objects
            cls = student_class(kind).options_class
            if isinstance(options, dict):
                from distill.core.config import load_config

                options = load_config(cls, None, options)
            if not isinstance(options, cls):
                raise ValueError(f"student section {kind!r} must be {cls.__name__} settings, got {options!r}")
            sections[kind] = copy.deepcopy(options)
        self.sections = sections

    # hooks of distill.core.config: one typed sub-section per registered kind
    @staticmethod
    def config_sections() -> dict[str, type]:
        return {kind: cls.options_class for kind, cls in KINDS.items()}

    def saved_sections(self) -> list[str]:
        return [self.kind]

    def section(self, kind: str):
        """The settings of ``kind`` (its defaults when never set)."""
        if kind not in self.sections:
            self.sections[kind] = student_class(kind).options_class()
        return self.sections[kind]

    @property
    def options(self):
        """The settings of the active kind."""
        return self.section(self.kind)

    def __getattr__(self, name: str):  # spec.mimic, spec.shared, ...
        if name != "sections" and name in KINDS:
            return self.section(name)
        raise AttributeError(f"{type(self).__name__} has no field or kind section {name!r}")

    def with_options(self, **changes) -> "StudentSpec":
        """A copy whose active section has ``changes`` applied."""
        from dataclasses import replace

        sections = {**self.sections, self.kind: replace(self.options, **changes)}
        return StudentSpec(self.name, self.kind, self.train_frontend, sections)


def student_name(spec: StudentSpec) -> str:
    return spec.name or spec.kind


def build_student(spec: StudentSpec, teacher, seed: int = 0, data: list[str] | None = None) -> StudentModel:
    """The initial student of ``spec.kind`` made from ``teacher`` (frontend frozen unless asked)."""
    cls = student_class(spec.kind)
    student = cls.from_teacher(teacher, spec.options, BuildContext(data, seed))
    student.freeze_frontend(not spec.train_frontend)
    return student

