"""The mimic student of the redundancy paper (Dorszewski et al., arXiv 2409.16302).

The teacher's frontend, then one mimicking layer per target teacher layer, applied in
sequence: with targets ``[b, L]`` the first layer regresses the block-boundary layer ``b``
and the second the last layer ``L`` (the paper's two-layer version).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Literal

from distill.core.frontends import build_frontend
from distill.core.protocol import check_layers_to_remove

from .base import BuildContext, StudentConfig, StudentModel
from .blocks import MimicStack, build_block


@dataclass
class MimicOptions:
    """``--student.mimic.*``: mimicking layers in place of the whole stack."""

    block_type: Literal["mlp", "transformer"] = field(
        default="mlp", metadata={"help": "mimicking layer: mlp (Linear-LN-ReLU-Linear) or transformer"})
    mimic_dim: int = field(default=64, metadata={"help": "bottleneck / feed-forward width h of each layer"})
    target_layers: list[int] = field(default_factory=list,
                                     metadata={"help": "teacher layers to regress (empty: middle + last)"})
    num_heads: int = field(default=4, metadata={"help": "attention heads of transformer mimicking layers"})
    residual: bool = field(default=False, metadata={"help": "blocks add to their input"})


class MimicConfig(StudentConfig):
    """Config of :class:`MimicStudent`.

    Args:
        hidden_size: width D of the frontend output and of every mimicking layer's output.
        mimic_dim: bottleneck (MLP) or feed-forward (transformer) width h.
        block_type: ``mlp`` or ``transformer``.
        num_heads: attention heads of transformer blocks.
        residual: each block adds to its input instead of replacing it.
    """

    model_type = "stackdistill-mimic"

    def __init__(self, hidden_size: int = 384, mimic_dim: int = 64, block_type: str = "mlp",
                 num_heads: int = 4, residual: bool = False, **kwargs):
        if block_type not in ("mlp", "transformer"):
            raise ValueError(f"block_type must be mlp or transformer, got {block_type!r}")
        self.hidden_size = hidden_size
        self.mimic_dim = mimic_dim
        self.block_type = block_type
        self.num_heads = num_heads
        self.residual = residual
        super().__init__(**kwargs)


class MimicStudent(StudentModel):
    kind = "mimic"
    config_class = MimicConfig
    options_class = MimicOptions

    def build_parts(self, config: MimicConfig):
        if not config.target_layers:
            raise ValueError("MimicConfig.target_layers is empty: one mimicking layer per target layer")
        blocks = [build_block(config.block_type, config.hidden_size, config.mimic_dim, config.num_heads)
                  for _ in config.target_layers]
        return build_frontend(config.frontend_arch, config.frontend_config), MimicStack(blocks, config.residual)

    @classmethod
    def from_teacher(cls, teacher, options: MimicOptions, context: BuildContext) -> "MimicStudent":
        return mimic_from_teacher(teacher, options.target_layers or None, options.mimic_dim, options.block_type,
                                  options.num_heads, options.residual, seed=context.seed)

    def describe(self) -> str:
        c = self.config
        block = "residual MLP" if c.residual and c.block_type == "mlp" else c.block_type
        return (f"{len(c.target_layers)} {block} mimicking layers (width {c.mimic_dim}) regressing teacher "
                f"layers {c.target_layers}")

    def card_rows(self) -> dict[str, str]:
        c = self.config
        return {"student kind": "mimic (Dorszewski et al., arXiv 2409.16302)",
                "target layers": str(c.target_layers),
                "mimicking layer": f"{c.block_type}{' (residual)' if c.residual else ''}, width {c.mimic_dim}"}

    def report_fields(self) -> dict:
        c = self.config
        return {**super().report_fields(), "block_type": c.block_type, "residual": c.residual,
                "mimic_dim": c.mimic_dim}

    def without_layers(self, remove) -> "MimicStudent":
        """A copy without the 1-based mimicking layers ``remove``."""
        remove = check_layers_to_remove(remove, self.num_layers)
        pruned = copy.deepcopy(self)
        for i in sorted(remove, reverse=True):
            del pruned.stack.layers[i - 1]
        pruned.config.target_layers = [m for k, m in enumerate(self.config.target_layers, 1) if k not in remove]
        pruned.name = f"{self.name} without layers {remove}"
        return pruned


def default_target_layers(num_layers: int, boundary: int | None = None) -> list[int]:
    """The block boundary (when known, else the middle layer) and the last layer."""
    b = boundary if boundary is not None else max(1, num_layers // 2)
    if not 1 <= b <= num_layers:
        raise ValueError(f"boundary layer {b} outside 1..{num_layers}")
    return [b, num_layers] if b < num_layers else [num_layers]


def mimic_from_teacher(teacher, target_layers: list[int] | None = None, mimic_dim: int = 64,
                       block_type: str = "mlp", num_heads: int = 4, residual: bool = False,
                       seed: int = 0) -> MimicStudent:
    """A mimic student whose frontend is a copy of ``teacher``'s (weights included)."""
    import torch

    frontend = getattr(teacher, "frontend", None)
    if frontend is None or not hasattr(frontend, "config"):
        raise ValueError(f"teacher {teacher.name!r} exposes no reusable frontend (s3prl teachers do not); "
                         "use a Hugging Face or CTranslate2 teacher")
    targets = list(target_layers) if target_layers else default_target_layers(teacher.num_layers)
    if sorted(targets) != targets or targets[0] < 1 or targets[-1] > teacher.num_layers:
        raise ValueError(f"target_layers must increase within 1..{teacher.num_layers}, got {targets}")
    config = MimicConfig(
        hidden_size=frontend.output_dim, mimic_dim=mimic_dim, block_type=block_type, num_heads=num_heads,
        residual=residual, frontend_arch=frontend.arch, frontend_config=frontend.config.to_dict(),
        teacher_name=teacher.name, teacher_num_layers=teacher.num_layers, target_layers=targets,
    )
    torch.manual_seed(seed)
    student = MimicStudent(config)
    student.frontend.load_state_dict(teacher.frontend.state_dict())
    return student
