"""Which student to build, as a typed config section, and the function that builds it."""

from __future__ import annotations

from dataclasses import dataclass, field

from .mimic import MimicStudent, mimic_from_teacher


@dataclass
class StudentSpec:
    name: str = field(default="", metadata={"help": "name in reports (default: <kind>-<block_type>)"})
    kind: str = field(default="mimic", metadata={"help": "student family: mimic"})
    block_type: str = field(default="mlp", metadata={"help": "mimicking layer: mlp or transformer"})
    mimic_dim: int = field(default=64, metadata={"help": "bottleneck width h of each mimicking layer"})
    target_layers: list[int] = field(default_factory=list,
                                     metadata={"help": "teacher layers to regress (empty: middle + last)"})
    num_heads: int = field(default=4, metadata={"help": "attention heads of transformer mimicking layers"})
    residual: bool = field(default=False, metadata={"help": "blocks add to their input"})
    train_frontend: bool = field(default=False, metadata={"help": "fine-tune the copied teacher frontend"})


def student_name(spec: StudentSpec) -> str:
    return spec.name or f"{spec.kind}-{spec.block_type}"


def build_student(spec: StudentSpec, teacher, seed: int = 0) -> MimicStudent:
    if spec.kind != "mimic":
        raise ValueError(f"unknown student kind {spec.kind!r}; known: mimic")
    student = mimic_from_teacher(teacher, spec.target_layers or None, spec.mimic_dim, spec.block_type,
                                 spec.num_heads, spec.residual, seed=seed)
    student.freeze_frontend(not spec.train_frontend)
    return student
