"""Structured pruning learnt jointly with distillation (DPHuBERT, Peng et al., arXiv 2305.17651).

The student starts as a copy of the teacher with hard-concrete gates (:mod:`students.hard_concrete`)
over its prunable units: attention heads and FFN units of every layer, optionally whole attention
and FFN sublayers. Training regresses teacher layer ``m`` with student layer ``m`` through a linear
map initialised to the identity (L1 + cosine), while a Lagrangian term pulls the expected
parameter count (from the gates' open probabilities) to a target that falls linearly from the full
size to ``target`` over the sparsity warm-up; the two multipliers rise by gradient ascent (their
own learning rate, as the gates'). Then the gates are fixed (:meth:`HardConcreteGate.deterministic`),
the weights physically sliced (:mod:`students.layer_widths`: per-layer head counts and FFN
widths) and the sliced student distilled again without gates: ``--student.structured.final_steps``.

One kind, two forms: ``config.gated`` true (the pruning phase) or false (sliced; per-layer sizes
in ``layer_heads`` / ``layer_ffn``). :meth:`StructuredStudent.stages` tells the distillation
command to run the two phases (``<out>/prune/`` then ``<out>/``).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from torch import nn

from distill.core.protocol import ModelInfo, count_params

from .base import BuildContext
from .hard_concrete import HardConcreteGate
from .hf_layers import HFLayerConfig, HFLayerStudent, check_layer_teacher
from .layer_widths import HEAD_PRUNABLE, layer_parts, layer_sizes, resize_layer, slice_layer, unit_costs

UNITS = ("heads", "ffn", "attention_layers", "ffn_layers")


@dataclass
class StructuredOptions:
    """``--student.structured.*``: joint distillation and structured pruning (DPHuBERT's recipe)."""

    target: float = field(default=0.25, metadata={"help": "parameters kept, as a fraction of the teacher's total"})
    units: list[str] = field(default_factory=lambda: ["heads", "ffn"], metadata={
        "help": "gated units: heads, ffn (units), attention_layers, ffn_layers (whole sublayers)"})
    layers: list[int] = field(default_factory=list,
                              metadata={"help": "teacher layers distilled, each by the same student layer (empty: all)"})
    sparsity_warmup: int = field(default=0, metadata={
        "help": "pruning steps over which the target falls from the full size to target (0: 60 % of train.max_steps)"})
    reg_lr: float = field(default=0.02, metadata={"help": "learning rate of the gates and of the Lagrange multipliers"})
    final_steps: int = field(default=300, metadata={"help": "steps of the final distillation of the sliced student"})
    final_lr: float = field(default=0.0, metadata={"help": "its learning rate (0: half of train.lr, as the recipe)"})
    pruned_from: str = field(default="", metadata={
        "help": "a gated student folder to slice and distil (set by the two-phase run; empty: prune the teacher)"})

    def __post_init__(self):
        if not 0.0 < self.target <= 1.0:
            raise ValueError(f"student.structured.target must be in (0, 1], got {self.target}")
        bad = [u for u in self.units if u not in UNITS]
        if bad or not self.units:
            raise ValueError(f"student.structured.units: unknown {bad} (choose from {list(UNITS)})")
        if self.final_steps < 1:
            raise ValueError(f"student.structured.final_steps must be at least 1, got {self.final_steps}")


class StructuredConfig(HFLayerConfig):
    """Config of :class:`StructuredStudent`.

    Args:
        gated: the pruning form (gates, Lagrangian) or the sliced form.
        units: the gated units (see :data:`UNITS`).
        target: parameters to keep, as a fraction of ``teacher_params``.
        sparsity_warmup: steps over which the target falls linearly from 1 to ``target``.
        teacher_params: the teacher's frontend + stack parameters.
        frontend_params: the (copied, unpruned) frontend's parameters, part of the student's size.
        layer_heads, layer_ffn: heads and FFN units of each layer (empty: the teacher's).
        gate_seed: seeds each step's gate draw (the same on every process).
        reg_lr: learning rate of the gates and the Lagrange multipliers.
    """

    model_type = "stackdistill-structured"

    def __init__(self, gated: bool = False, units: list[str] | None = None, target: float = 0.25,
                 sparsity_warmup: int = 0, teacher_params: int = 0, frontend_params: int = 0, layer_heads: list[int] | None = None,
                 layer_ffn: list[int] | None = None, gate_seed: int = 0, reg_lr: float = 0.02, **kwargs):
        self.gated = gated
        self.units = list(units or ["heads", "ffn"])
        self.target = target
        self.sparsity_warmup = sparsity_warmup
        self.teacher_params = teacher_params
        self.frontend_params = frontend_params
        self.layer_heads = list(layer_heads or [])
        self.layer_ffn = list(layer_ffn or [])
        self.gate_seed = gate_seed
        self.reg_lr = reg_lr
        super().__init__(**kwargs)


class _Reverse(torch.autograd.Function):
    """Identity forward, negated gradient: a descent step on the output is an ascent step on the input."""

    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return -grad


class _GateInput:
    """Forward pre-hook: multiply the input of ``out_proj`` / the second FFN map by the current unit gates.

    An object (not a closure) so that a deep copy of the stack hooks the copy, not the original.
    """

    def __init__(self, stack: "GatedStack", layer: int, name: str):
        self.stack, self.layer, self.name = stack, layer, name

    def __call__(self, module, inputs):
        values = self.stack._values
        gate = None if values is None else values[self.layer].get(self.name)
        if gate is None:
            return None
        x = inputs[0]
        return (x * torch.repeat_interleave(gate, x.shape[-1] // gate.numel()).to(x.dtype),)


class _GateOutput(_GateInput):
    """Forward hook: multiply a whole sublayer's output by its gate."""

    def __call__(self, module, inputs, output):
        values = self.stack._values
        gate = None if values is None else values[self.layer].get(self.name)
        return None if gate is None else output * gate.to(output.dtype)


class LayerGates(nn.Module):
    """The gates of one layer (any of ``heads``, ``ffn``, ``attention``, ``ffn_layer``)."""

    def __init__(self, heads: int, ffn: int, units: list[str]):
        super().__init__()
        self.heads = HardConcreteGate(heads) if "heads" in units else None
        self.ffn = HardConcreteGate(ffn) if "ffn" in units else None
        self.attention = HardConcreteGate(1) if "attention_layers" in units else None
        self.ffn_layer = HardConcreteGate(1) if "ffn_layers" in units else None

    def groups(self) -> dict[str, HardConcreteGate]:
        return {k: g for k in ("heads", "ffn", "attention", "ffn_layer") if (g := getattr(self, k)) is not None}


class SlicedStack(nn.Module):
    """A stack with its distillation maps: the states, then one mapped state per distilled layer.

    The sliced form as it is; the base of :class:`GatedStack`.
    """

    def __init__(self, inner: nn.Module, config: StructuredConfig, dim: int):
        super().__init__()
        self.inner = inner
        self.maps = nn.ModuleList([_identity_linear(dim) for _ in config.target_layers])
        self.target_layers = list(config.target_layers)

    @property
    def layers(self) -> nn.ModuleList:
        return self.inner.layers

    @property
    def final_norm(self):
        return self.inner.final_norm

    def mapped(self, states: list[torch.Tensor]) -> list[torch.Tensor]:
        """``states`` followed by each distilled layer's state through its map."""
        return list(states) + [m(states[k]) for m, k in zip(self.maps, self.target_layers)]

    def forward(self, x: torch.Tensor, frame_lengths: torch.Tensor) -> list[torch.Tensor]:
        return self.mapped(self.inner(x, frame_lengths))


class GatedStack(SlicedStack):
    """The teacher-size stack with gates, distillation maps and the Lagrangian term.

    ``forward(x (batch, frames, dim), frame_lengths (batch,), step=None)`` returns the
    ``L + 1`` hidden states, one mapped state per distilled layer, and (in training, when
    ``step`` is given) the Lagrangian term as a scalar tensor last. Gates are drawn once per
    optimizer step from a generator seeded by ``(gate_seed, step)``, so every process and every
    micro-batch of a step uses the same gates; without ``step`` they take their deterministic values.
    """

    def __init__(self, inner: nn.Module, config: StructuredConfig, dim: int):
        super().__init__(inner, config, dim)
        self.arch = config.frontend_arch
        sizes = [layer_sizes(layer, self.arch) for layer in inner.layers]
        self.gates = nn.ModuleList([LayerGates(h, f, config.units) for h, f in sizes])
        self.lambdas = nn.Parameter(torch.zeros(2))
        self.config = config
        self._values: list[dict[str, torch.Tensor]] | None = None
        for i, layer in enumerate(inner.layers):
            parts = layer_parts(layer, self.arch)
            if "heads" in config.units or "attention_layers" in config.units:
                parts.attention.out_proj.register_forward_pre_hook(_GateInput(self, i, "heads"))
                parts.attention.out_proj.register_forward_hook(_GateOutput(self, i, "attention"))
            parts.ffn_out.register_forward_pre_hook(_GateInput(self, i, "ffn"))
            parts.ffn_out.register_forward_hook(_GateOutput(self, i, "ffn_layer"))
        self._costs = [unit_costs(layer, self.arch) for layer in inner.layers]

    # -- gates and the expected size ---------------------------------------------------------------

    def sample(self, step: int) -> list[dict[str, torch.Tensor]]:
        g = torch.Generator().manual_seed(int(self.config.gate_seed) * 1_000_003 + int(step))
        return [{k: gate.sample(g) for k, gate in layer.groups().items()} for layer in self.gates]

    @torch.no_grad()
    def deterministic(self) -> list[dict[str, torch.Tensor]]:
        """The fixed gate values (see :meth:`fixed`): what evaluation and the sliced model compute with."""
        return self.fixed()[0]

    @torch.no_grad()
    def fixed(self) -> tuple[list[dict[str, torch.Tensor]], list[dict[str, list[int]]]]:
        """``(gate values, kept units)`` per layer, meeting the parameter target: units kept by rank.

        Every gated unit is ranked by its ``log_alpha`` (a unit inside a gated sublayer by the smaller
        of its own and the sublayer's); units are kept in that order while the sliced size stays
        within ``target`` x the teacher's parameters (a unit that does not fit is skipped, a smaller
        one may still fit). Kept units take their mean gate value, the others 0; a sublayer with no
        kept unit (or a closed sublayer gate) is removed. A run whose expected size met the target
        keeps about ``round(E[L0])`` units per group, as DPHuBERT's fixed gates do. When the gates
        closed more than the target asks, the budget is filled with the most open closed units: they
        are kept at gate value 0 (contributing nothing, so the sliced model still equals the gated
        one) and train again in the final distillation, so the student has the size asked for.
        """
        budget = self.config.target * self.config.teacher_params - self.fixed_params()
        candidates = []  # (score, cost, layer, units)
        means = []
        for i, (layer, gates, costs) in enumerate(zip(self.inner.layers, self.gates, self._costs)):
            groups = gates.groups()
            heads, ffn = layer_sizes(layer, self.arch)
            mean = {k: g.deterministic(g.n) for k, g in groups.items()}
            means.append(mean)
            for units, whole, n, cost in (("heads", "attention", heads, costs.get("head", 0)),
                                          ("ffn", "ffn_layer", ffn, costs["ffn"])):
                if units not in groups and whole not in groups:
                    budget -= n * cost  # never gated: always kept
                    continue
                unit_scores = groups[units].log_alpha.detach() if units in groups else torch.full((n,), math.inf)
                if whole in groups:
                    if float(mean[whole][0]) == 0.0:
                        unit_scores = torch.full((n,), -math.inf)
                    unit_scores = unit_scores.clamp(max=float(groups[whole].log_alpha[0]))
                candidates += [(float(unit_scores[j]), cost, i, units, j) for j in range(n)]
        kept: list[dict[str, list[int]]] = [{"heads": [], "ffn": []} for _ in self.gates]
        for score, cost, i, units, j in sorted(candidates, key=lambda c: -c[0]):
            if score == -math.inf or cost > budget:
                continue
            budget -= cost
            kept[i][units].append(j)
        out = []
        for i, (gates, mean) in enumerate(zip(self.gates, means)):
            groups, values = gates.groups(), {}
            for units, whole in (("heads", "attention"), ("ffn", "ffn_layer")):
                if units in groups:
                    v = torch.zeros_like(mean[units])
                    v[kept[i][units]] = mean[units][kept[i][units]]
                    values[units] = v
                if whole in groups:
                    values[whole] = mean[whole] if kept[i][units] else torch.zeros_like(mean[whole])
            out.append(values)
        return out, kept

    def fixed_params(self) -> int:
        """Parameters no gate removes: the frontend, norms, biases, positional parts."""
        prunable = 0
        for layer, costs in zip(self.inner.layers, self._costs):
            heads, ffn = layer_sizes(layer, self.arch)
            prunable += heads * costs.get("head", 0) + ffn * costs["ffn"]
        return int(self.config.frontend_params) + count_params(self.inner) - prunable

    def expected_params(self) -> torch.Tensor:
        """Expected parameter count of the sliced student under the gates' open probabilities (differentiable)."""
        total = torch.zeros((), device=self.lambdas.device)
        for layer, gates, costs in zip(self.inner.layers, self.gates, self._costs):
            heads, ffn = layer_sizes(layer, self.arch)
            groups = gates.groups()
            p_heads = groups["heads"].prob_open().sum() if "heads" in groups else torch.tensor(float(heads))
            p_ffn = groups["ffn"].prob_open().sum() if "ffn" in groups else torch.tensor(float(ffn))
            if "attention" in groups:
                p_heads = p_heads * groups["attention"].prob_open()[0]
            if "ffn_layer" in groups:
                p_ffn = p_ffn * groups["ffn_layer"].prob_open()[0]
            total = total + p_heads * costs.get("head", 0) + p_ffn * costs["ffn"]
        return total + self.fixed_params()

    def target_at(self, step: int) -> float:
        """The kept fraction the Lagrangian aims at on ``step``: 1 falling linearly to ``target``."""
        c = self.config
        progress = 1.0 if c.sparsity_warmup <= 0 else min(1.0, step / c.sparsity_warmup)
        return 1.0 - (1.0 - c.target) * progress

    def lagrangian(self, step: int) -> tuple[torch.Tensor, float, float]:
        """``(term, expected fraction, target fraction)``: ``l1 (E - t) + l2 (E - t)^2``, multipliers ascending."""
        expected = self.expected_params() / float(self.config.teacher_params)
        target = self.target_at(step)
        gap = expected - target
        lam = _Reverse.apply(self.lambdas)
        return lam[0] * gap + lam[1] * gap * gap, float(expected.detach()), target

    def special_parameter_groups(self) -> list[dict]:
        """Optimizer groups of their own: gates and multipliers at a constant ``reg_lr``, no weight decay.

        Constant, not the weights' warm-up and cosine decay: a decaying rate froze the gates before
        the expected size met the target (0.47 against 0.25 on Whisper tiny.en, 800 steps, 2026-12-06).
        """
        params = [p for g in self.gates for p in g.parameters()] + [self.lambdas]
        return [{"params": params, "lr": self.config.reg_lr, "weight_decay": 0.0, "schedule": "constant"}]

    def forward(self, x: torch.Tensor, frame_lengths: torch.Tensor, step: int | None = None) -> list[torch.Tensor]:
        self._values = self.sample(step) if step is not None else self.deterministic()
        try:
            states = self.inner(x, frame_lengths)
        finally:
            self._values = None
        outputs = self.mapped(states)
        if step is not None:
            term, expected, target = self.lagrangian(step)
            self.last_fraction = (expected, target)
            outputs.append(term)
        return outputs


def _identity_linear(dim: int) -> nn.Linear:
    lin = nn.Linear(dim, dim)
    with torch.no_grad():
        lin.weight.copy_(torch.eye(dim))
        lin.bias.zero_()
    return lin


class StructuredStudent(HFLayerStudent):
    kind = "structured"
    config_class = StructuredConfig
    options_class = StructuredOptions
    default_loss = "l1_cos"
    # a sliced layer left with no FFN unit keeps empty (0-element) linear maps, which never get a gradient
    may_skip_parameters = True

    def wrap_stack(self, inner: nn.Module, config: StructuredConfig, dim: int) -> nn.Module:
        for i, layer in enumerate(inner.layers):
            heads, ffn = layer_sizes(layer, config.frontend_arch)
            want_heads = config.layer_heads[i] if config.layer_heads else heads
            want_ffn = config.layer_ffn[i] if config.layer_ffn else ffn
            if (want_heads, want_ffn) != (heads, ffn):
                resize_layer(layer, config.frontend_arch, want_heads, want_ffn)
        return GatedStack(inner, config, dim) if config.gated else SlicedStack(inner, config, dim)

    # -- building -------------------------------------------------------------------------------------

    @classmethod
    def from_teacher(cls, teacher, options: StructuredOptions, context: BuildContext) -> "StructuredStudent":
        if options.pruned_from:
            return cls.from_gated(options.pruned_from)
        check_layer_teacher(teacher)
        arch = teacher.frontend.arch
        if arch not in HEAD_PRUNABLE and ({"heads", "attention_layers"} & set(options.units)):
            raise ValueError(f"structured student: {arch} attention heads cannot be pruned (its attention ties head "
                             "width to model width); use --student.structured.units '[ffn, ffn_layers]'")
        n = teacher.num_layers
        layers = list(options.layers) or list(range(1, n + 1))
        bad = [m for m in layers if not 1 <= m <= n]
        if bad:
            raise ValueError(f"student.structured.layers {bad}: the teacher has layers 1..{n}")
        info = teacher.info
        config = cls.config_from_teacher(
            teacher, n, list(range(1, n + 1)), target_layers=sorted(set(layers)), gated=True, units=options.units,
            target=options.target, sparsity_warmup=options.sparsity_warmup,
            teacher_params=info.params_total, frontend_params=info.params_frontend, gate_seed=context.seed, reg_lr=options.reg_lr)
        student = cls.initialised_from(teacher, config, context.seed)
        floor = student.stack.fixed_params() / config.teacher_params
        if options.target <= floor:
            raise ValueError(f"student.structured.target {options.target}: the parts no gate removes (frontend, norms, "
                             f"biases) already hold {floor:.1%} of {teacher.name}'s parameters; choose a larger target")
        return student

    @classmethod
    def from_gated(cls, folder: str | Path) -> "StructuredStudent":
        """The sliced student of a gated one saved in ``folder`` (its gates at their deterministic values)."""
        gated = cls.from_pretrained(str(folder))
        if not gated.config.gated:
            raise ValueError(f"{folder}: a sliced structured student already (pruned_from needs the gated one)")
        return gated.sliced()

    def sliced(self) -> "StructuredStudent":
        """The physically smaller student equal to this gated one with its gates at their deterministic values."""
        if not self.config.gated:
            return self
        work = copy.deepcopy(self)
        stack, arch = work.stack, work.config.frontend_arch
        values, kept = stack.fixed()
        for layer, v, keep in zip(stack.inner.layers, values, kept):
            att = v.get("attention")
            ffn_layer = v.get("ffn_layer")
            slice_layer(layer, arch, v.get("heads"), v.get("ffn"),
                        1.0 if att is None else float(att[0]), 1.0 if ffn_layer is None else float(ffn_layer[0]),
                        head_keep=keep["heads"] if "heads" in v or "attention" in v else None,
                        ffn_keep=keep["ffn"] if "ffn" in v or "ffn_layer" in v else None)
        sizes = [layer_sizes(layer, arch) for layer in stack.inner.layers]
        config = copy.deepcopy(self.config)
        config.gated = False
        config.layer_heads = [h for h, _ in sizes]
        config.layer_ffn = [f for _, f in sizes]
        out = type(self)(config)
        state = {k: v for k, v in work.state_dict().items() if not k.startswith(("stack.gates.", "stack.lambdas"))}
        out.load_state_dict(state, strict=True)
        out.name = self.name
        out.requires_grad_(False)
        for p, q in zip(out.parameters(), (p for k, p in work.named_parameters()
                                           if not k.startswith(("stack.gates.", "stack.lambdas")))):
            p.requires_grad_(q.requires_grad)
        return out.train(self.training)

    # -- training -------------------------------------------------------------------------------------

    @classmethod
    def stages(cls, options: StructuredOptions, out: Path, train) -> list[tuple[Path, dict, dict]]:
        """The two phases: ``(run folder, option changes, train changes)`` each."""
        if options.pruned_from:  # only the final distillation asked for
            return [(out, {}, {})]
        warmup = options.sparsity_warmup or max(1, int(0.6 * train.max_steps))
        final_lr = options.final_lr or train.lr / 2
        return [(out / "prune", {"sparsity_warmup": warmup}, {}),
                (out, {"pruned_from": str(out / "prune" / "last")},
                 {"max_steps": options.final_steps, "lr": final_lr,
                  "eval_every": min(train.eval_every, options.final_steps),
                  "save_every": min(train.save_every, options.final_steps)})]

    def step_kwargs(self, step: int) -> dict:
        if not self.config.gated:
            return {}
        return {"step": step}

    def distill_pairs(self, outputs, targets, **step_kwargs):
        n = self.num_layers + 1
        return [(f"layer{m}", outputs[n + k], targets.layer(m)) for k, m in enumerate(self.config.target_layers)]

    def extra_loss(self, outputs, **step_kwargs) -> tuple[torch.Tensor, dict] | None:
        """The Lagrangian term (pruning phase, training steps only) and its figures."""
        if not self.config.gated or "step" not in step_kwargs:
            return None
        stack = self.stack
        expected, target = stack.last_fraction
        lam = stack.lambdas.detach()
        return outputs[-1], {"expected_fraction": expected, "target_fraction": target,
                             "lambda1": float(lam[0]), "lambda2": float(lam[1])}

    def required_teacher_layers(self) -> list[int]:
        return sorted(set(self.config.target_layers))

    # -- what it is -----------------------------------------------------------------------------------

    @property
    def info(self) -> ModelInfo:
        """Sizes of the model others use: the sliced stack, without gates and distillation maps.

        A gated student counts its deterministic size (what slicing it gives).
        """
        inner = self.sliced().inner if self.config.gated else self.inner
        return ModelInfo(self.name, self.arch, self.num_layers, self.frontend.output_dim, self.frontend.hop,
                         count_params(self.frontend), count_params(inner))

    def layer_widths(self) -> list[dict]:
        student = self.sliced() if self.config.gated else self
        arch = self.config.frontend_arch
        return [{"layer": i + 1, "heads": h, "ffn": f}
                for i, (h, f) in enumerate(layer_sizes(layer, arch) for layer in student.inner.layers)]

    def uniform(self) -> bool:
        """Every layer keeps all its heads and the same FFN width: a plain folder of the teacher's architecture."""
        widths = self.layer_widths()
        heads = self.frontend.config.to_dict().get("num_attention_heads") or \
            self.frontend.config.to_dict().get("encoder_attention_heads")
        return all(w["heads"] == heads for w in widths) and len({w["ffn"] for w in widths}) == 1

    def exports_plain(self) -> bool:
        return not self.config.gated and self.uniform()

    def to_hf_model(self, depth: int | None = None) -> nn.Module:
        if not self.exports_plain():
            raise ValueError("structured student with unequal layer sizes: export it with its modelling code")
        ffn = self.layer_widths()[0]["ffn"]
        key = "encoder_ffn_dim" if self.config.frontend_arch == "whisper" else "intermediate_size"
        backbone_config = {**self.config.backbone_config, key: ffn}
        original, self.config.backbone_config = self.config.backbone_config, backbone_config
        try:
            model = super().to_hf_model(depth)
        finally:
            self.config.backbone_config = original
        return model

    def resolved_options(self, options: StructuredOptions) -> StructuredOptions:
        return replace(options, sparsity_warmup=int(self.config.sparsity_warmup)) if self.config.gated else options

    def describe(self) -> str:
        c = self.config
        if c.gated:
            return (f"the teacher with hard-concrete gates over {', '.join(c.units)}, pruned towards {c.target:.0%} "
                    f"of its parameters while distilling layers {c.target_layers} (DPHuBERT)")
        widths = self.layer_widths()
        return (f"the teacher structurally pruned to heads {[w['heads'] for w in widths]} and FFN units "
                f"{[w['ffn'] for w in widths]} per layer, jointly with distillation, then distilled again "
                f"(layers {c.target_layers}; DPHuBERT)")

    def card_rows(self) -> dict[str, str]:
        widths = self.layer_widths()
        return {**super().card_rows(), "student kind": "structured pruning with distillation (DPHuBERT, Peng et al.)",
                "heads per layer": str([w["heads"] for w in widths]),
                "FFN units per layer": str([w["ffn"] for w in widths]),
                "parameter target": f"{self.config.target:.0%} of the teacher's {self.config.teacher_params:,}"}

    def report_fields(self) -> dict:
        info = self.info
        return {**super().report_fields(), "layer_widths": self.layer_widths(), "target": self.config.target,
                "params_fraction": (info.params_total) / max(1, self.config.teacher_params),
                "units": list(self.config.units)}
