"""Layer-consistency student (Tian, Gu, Wang, Zou; arXiv 2105.00812): shared layers, any depth.

One transformer layer of the teacher's own architecture (or G groups of layers, ALBERT-style),
initialised from teacher layers, applied D times (default D = the teacher's depth). Application
k (0-based) uses group ``floor(k * G / D)``; the schedule is stored in the config. Training
samples the depth each step (uniform over ``min_depth..D``, the same on every process) and the
state after k applications, the model cut at depth k (a pre-LN stack's final norm applied),
regresses the teacher cut after layer ``m(k) = round(k * L / D)`` (evenly mapped, the last onto
the last). At inference the depth is a parameter (:meth:`SharedStudent.set_depth`), and the
student at depth d exports as a plain model of the teacher's architecture with d layers.
"""

from __future__ import annotations

import copy
import math
import random
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn

from distill.core.protocol import check_layers_to_remove

from .base import BuildContext
from .hf_layers import HFLayerConfig, HFLayerStudent, check_layer_teacher


@dataclass
class SharedOptions:
    """``--student.shared.*``."""

    groups: int = field(default=1, metadata={"help": "distinct layers G (1: one layer for every depth)"})
    depth: int = field(default=0, metadata={"help": "applications D (0: the teacher's depth)"})
    min_depth: int = field(default=1, metadata={"help": "smallest depth sampled in training"})
    depth_sampling: Literal["uniform", "full"] = field(
        default="uniform", metadata={"help": "uniform over min_depth..D each step, or always D"})
    init_layers: list[int] = field(default_factory=list,
                                   metadata={"help": "teacher layer per group (empty: first layer of its span)"})


def map_depth(k: int, depth: int, teacher_layers: int) -> int:
    """Teacher layer ``m(k)`` that application ``k`` of ``depth`` regresses: even, the last onto the last."""
    return max(1, math.floor(k * teacher_layers / depth + 0.5))


class SharedConfig(HFLayerConfig):
    """Config of :class:`SharedStudent`.

    Args:
        schedule: unique layer (0-based) of each application; its length is the full depth D.
        depth: the depth used at inference (``1..D``).
        min_depth, depth_sampling, seed: how training samples the depth.
    """

    model_type = "stackdistill-shared"

    def __init__(self, schedule: list[int] | None = None, depth: int = 0, min_depth: int = 1,
                 depth_sampling: str = "uniform", seed: int = 0, **kwargs):
        self.schedule = list(schedule or [0])
        self.depth = depth or len(self.schedule)
        if not 1 <= self.depth <= len(self.schedule):
            raise ValueError(f"depth must lie in 1..{len(self.schedule)}, got {self.depth}")
        self.min_depth = min_depth
        self.depth_sampling = depth_sampling
        self.seed = seed
        super().__init__(**kwargs)


class SharedStack(nn.Module):
    """The backbone's unique layers applied along a schedule: ``forward(x, fl, depth)``."""

    def __init__(self, inner: nn.Module, schedule: list[int], depth: int):
        super().__init__()
        self.inner = inner
        self.schedule = list(schedule)
        self.depth = depth

    @property
    def layers(self) -> list[nn.Module]:
        """The layer applied at each position up to the current depth (repeats included)."""
        return [self.inner.layers[g] for g in self.schedule[: self.depth]]

    def forward(self, x: torch.Tensor, frame_lengths: torch.Tensor, depth: int | None = None) -> list[torch.Tensor]:
        d = depth or self.depth
        if not 1 <= d <= len(self.schedule):
            raise ValueError(f"depth must lie in 1..{len(self.schedule)}, got {d}")
        return self.inner(x, frame_lengths, layers=[self.inner.layers[g] for g in self.schedule[:d]])


class SharedStudent(HFLayerStudent):
    kind = "shared"
    config_class = SharedConfig
    options_class = SharedOptions
    may_skip_parameters = True  # a shallow sampled depth leaves later groups unused in that step

    def valid_kwargs(self) -> dict:
        return {"depth": self.max_depth}  # validation at the full depth, whatever the inference depth

    def wrap_stack(self, inner, config, dim):
        return SharedStack(inner, config.schedule, config.depth)

    @classmethod
    def from_teacher(cls, teacher, options: SharedOptions, context: BuildContext) -> "SharedStudent":
        check_layer_teacher(teacher)
        L = teacher.num_layers
        D = options.depth or L
        G = options.groups
        if not 1 <= G <= D:
            raise ValueError(f"shared.groups must lie in 1..depth ({D}), got {G}")
        if not 1 <= options.min_depth <= D:
            raise ValueError(f"shared.min_depth must lie in 1..{D}, got {options.min_depth}")
        schedule = [k * G // D for k in range(D)]
        sources = list(options.init_layers) or [g * L // G + 1 for g in range(G)]
        if len(sources) != G or any(not 1 <= m <= L for m in sources):
            raise ValueError(f"shared.init_layers needs {G} teacher layers in 1..{L}, got {sources}")
        config = cls.config_from_teacher(
            teacher, G, sources, schedule=schedule, depth=D, min_depth=options.min_depth,
            depth_sampling=options.depth_sampling, seed=context.seed,
            target_layers=[map_depth(k, D, L) for k in range(1, D + 1)])
        return cls.initialised_from(teacher, config, context.seed)

    # -- depth ------------------------------------------------------------------------------------

    @property
    def max_depth(self) -> int:
        return len(self.config.schedule)

    @property
    def num_layers(self) -> int:
        return self.stack.depth

    def set_depth(self, depth: int) -> "SharedStudent":
        """Use ``depth`` applications at inference (``1..D``); returns ``self``."""
        if not 1 <= depth <= self.max_depth:
            raise ValueError(f"depth must lie in 1..{self.max_depth}, got {depth}")
        self.stack.depth = self.config.depth = depth
        return self

    def step_kwargs(self, step: int) -> dict:
        c = self.config
        if c.depth_sampling == "full":
            return {"depth": self.max_depth}
        # seeded by the step alone: every process of a distributed run draws the same depth
        return {"depth": random.Random(c.seed * 1_000_003 + step).randint(c.min_depth, self.max_depth)}

    def distill_pairs(self, outputs, targets, depth: int | None = None, **_):
        k = depth or self.stack.depth
        m = map_depth(k, self.max_depth, targets.num_layers)
        return [(f"depth{k}_layer{m}", outputs[k], targets.output_at(m))]

    def export_layer_map(self, depth: int | None = None) -> list[int]:
        d = depth or self.stack.depth
        if not 1 <= d <= self.max_depth:
            raise ValueError(f"depth must lie in 1..{self.max_depth}, got {d}")
        return list(self.config.schedule[:d])

    def without_layers(self, remove) -> "SharedStudent":
        """A copy without the 1-based applications ``remove`` (the shared parameters are kept)."""
        remove = check_layers_to_remove(remove, self.num_layers)
        pruned = copy.deepcopy(self)
        keep = [k for k in range(1, self.num_layers + 1) if k not in remove]
        pruned.config.schedule = [self.config.schedule[k - 1] for k in keep]
        pruned.config.target_layers = [self.config.target_layers[k - 1] for k in keep]
        pruned.config.depth = len(keep)
        pruned.stack.schedule, pruned.stack.depth = pruned.config.schedule, len(keep)
        pruned.name = f"{self.name} without layers {remove}"
        return pruned

    def describe(self) -> str:
        c = self.config
        return (f"{c.num_unique_layers} shared teacher-type layer(s) (from teacher layers {c.layer_sources}) applied "
                f"{self.max_depth} times, depth sampled {c.depth_sampling} in training; used at depth {c.depth}")

    def card_rows(self) -> dict[str, str]:
        c = self.config
        return {**super().card_rows(), "student kind": "layer consistency, shared layers (Tian et al. 2021)",
                "schedule (unique layer per application)": str(c.schedule), "depth": f"{c.depth} of {self.max_depth}"}

    def report_fields(self) -> dict:
        c = self.config
        return {**super().report_fields(), "groups": c.num_unique_layers, "max_depth": self.max_depth,
                "depth": c.depth, "layer_sources": list(c.layer_sources)}
