"""The mimic student of the redundancy paper (Dorszewski et al., arXiv 2409.16302).

The teacher's frontend, then one mimicking layer per target teacher layer, applied in
sequence: with targets ``[b, L]`` the first layer regresses the block-boundary layer ``b``
and the second the last layer ``L`` (the paper's two-layer version).
"""

from __future__ import annotations

from .base import StudentConfig, StudentModel
from .blocks import MimicStack, build_block


class MimicConfig(StudentConfig):
    model_type = "stackdistill-mimic"

    def __init__(self, hidden_size: int = 384, mimic_dim: int = 64, block_type: str = "mlp",
                 num_heads: int = 4, residual: bool = False, **kwargs):
        self.hidden_size = hidden_size
        self.mimic_dim = mimic_dim
        self.block_type = block_type
        self.num_heads = num_heads
        self.residual = residual
        super().__init__(**kwargs)


class MimicStudent(StudentModel):
    config_class = MimicConfig

    def __init__(self, config: MimicConfig):
        super().__init__(config)
        if not config.target_layers:
            raise ValueError("MimicConfig.target_layers is empty: one mimicking layer per target layer")
        blocks = [build_block(config.block_type, config.hidden_size, config.mimic_dim, config.num_heads)
                  for _ in config.target_layers]
        self.stack = MimicStack(blocks, residual=config.residual)
        self.post_init()


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
    student.load_frontend_from(teacher)
    return student
