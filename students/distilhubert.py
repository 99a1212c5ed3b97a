"""DistilHuBERT-style student (Chang et al., ICASSP 2022; s3prl's distiller).

The teacher's frontend and its first N layers (copied, N = 2 by default), then one linear
prediction head per chosen teacher layer (default: evenly spaced, the last included: 4, 8, 12
of a 12-layer teacher) on the last backbone layer; loss L1 + (-log sigmoid cos) per head.
Hidden states: the stack input, each backbone layer, and (``expose_heads``) each head's output,
as s3prl's distiller exposes them so SUPERB's weighted sum can use them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from distill.core.protocol import evenly_spaced, lengths_to_mask

from .base import BuildContext
from .hf_layers import HFLayerConfig, HFLayerStudent, check_layer_teacher


@dataclass
class DistilHubertOptions:
    """``--student.distilhubert.*``."""

    copy_layers: int = field(default=2, metadata={"help": "first N teacher layers copied as the backbone"})
    head_layers: list[int] = field(default_factory=list,
                                   metadata={"help": "teacher layers the heads regress (empty: evenly spaced)"})
    num_prediction_heads: int = field(default=3, metadata={"help": "heads when head_layers is empty"})
    expose_heads: bool = field(default=False, metadata={"help": "append the heads' outputs to the hidden states"})


class DistilHubertConfig(HFLayerConfig):
    """Config of :class:`DistilHubertStudent`; ``target_layers`` are the heads' teacher layers."""

    model_type = "stackdistill-distilhubert"

    def __init__(self, expose_heads: bool = False, **kwargs):
        self.expose_heads = expose_heads
        super().__init__(**kwargs)


class HeadsStack(nn.Module):
    """Backbone stack, then prediction heads on its last state.

    ``forward(x, frame_lengths, heads=False)`` returns the backbone states, followed by the
    heads' outputs when ``heads`` (training) or ``expose`` (s3prl-style use) is set: inference
    without exposed heads never pays for them.
    """

    def __init__(self, inner: nn.Module, dim: int, num_heads: int, expose: bool = False):
        super().__init__()
        self.inner = inner
        self.heads = nn.ModuleList(nn.Linear(dim, dim) for _ in range(num_heads))
        self.expose = expose

    @property
    def layers(self) -> nn.ModuleList:
        return self.inner.layers

    def forward(self, x: torch.Tensor, frame_lengths: torch.Tensor, heads: bool = False) -> list[torch.Tensor]:
        states = self.inner(x, frame_lengths)
        if not (heads or self.expose):
            return states
        keep = lengths_to_mask(frame_lengths, x.shape[1]).unsqueeze(-1).to(states[-1].dtype)
        return states + [head(states[-1]) * keep for head in self.heads]


class DistilHubertStudent(HFLayerStudent):
    kind = "distilhubert"
    config_class = DistilHubertConfig
    options_class = DistilHubertOptions
    default_loss = "l1_cos"
    per_layer_targets = False  # target_layers are the heads' targets

    def wrap_stack(self, inner, config, dim):
        return HeadsStack(inner, dim, len(config.target_layers), expose=config.expose_heads)

    def step_kwargs(self, step: int) -> dict:
        return {"heads": True}

    def valid_kwargs(self) -> dict:
        return {"heads": True}

    @property
    def info(self):
        """Parameters of what inference runs: the heads count only when exposed."""
        from dataclasses import replace

        from distill.core.protocol import count_params

        info = super().info
        return info if self.config.expose_heads else replace(info, params_stack=count_params(self.inner))

    @classmethod
    def from_teacher(cls, teacher, options: DistilHubertOptions, context: BuildContext) -> "DistilHubertStudent":
        check_layer_teacher(teacher)
        n, depth = options.copy_layers, teacher.num_layers
        if not 1 <= n <= depth:
            raise ValueError(f"distilhubert.copy_layers must lie in 1..{depth}, got {n}")
        heads = list(options.head_layers) or evenly_spaced(min(options.num_prediction_heads, depth), depth)
        if any(not 1 <= m <= depth for m in heads):
            raise ValueError(f"distilhubert.head_layers must lie in 1..{depth}, got {heads}")
        config = cls.config_from_teacher(teacher, n, list(range(1, n + 1)), target_layers=heads,
                                         expose_heads=options.expose_heads)
        return cls.initialised_from(teacher, config, context.seed)

    @property
    def num_layers(self) -> int:
        return self.config.num_unique_layers + (len(self.stack.heads) if self.config.expose_heads else 0)

    def states_from_outputs(self, outputs):
        return outputs if self.config.expose_heads else outputs[: self.config.num_unique_layers + 1]

    def distill_pairs(self, outputs, targets, **_):
        first_head = self.config.num_unique_layers + 1
        return [(f"head{h + 1}_layer{m}", outputs[first_head + h], targets.layer(m))
                for h, m in enumerate(self.config.target_layers)]

    def export_layer_map(self, depth: int | None = None) -> list[int]:
        if self.config.expose_heads:
            raise ValueError("a DistilHuBERT student with expose_heads has no plain-architecture export "
                             "(the heads are not part of it); export it with expose_heads false")
        return super().export_layer_map(depth)

    @property
    def final_norm(self):
        return None if self.config.expose_heads else super().final_norm

    def describe(self) -> str:
        c = self.config
        return (f"teacher frontend + its first {c.num_unique_layers} layers (copied), heads regressing teacher "
                f"layers {c.target_layers}{' (heads exposed)' if c.expose_heads else ''}")

    def card_rows(self) -> dict[str, str]:
        return {**super().card_rows(), "student kind": "DistilHuBERT-style (Chang et al. 2022)",
                "prediction heads for teacher layers": str(self.config.target_layers)}

    def report_fields(self) -> dict:
        return {**super().report_fields(), "copy_layers": self.config.num_unique_layers,
                "head_layers": list(self.config.target_layers)}
