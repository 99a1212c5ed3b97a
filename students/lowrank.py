"""Low-rank factorisation of every linear layer of the stack, without retraining (LiteASR, arXiv 2502.20583).

Each linear map ``y = W x + b`` of the transformer layers (attention projections, both FFN maps)
is replaced by two thin ones built from the principal components of its *inputs*, measured on
calibration audio (the distillation data): with ``mu`` the inputs' mean and ``V_r`` the ``r``
leading eigenvectors of their covariance,

    W x + b  ~=  (W V_r) (V_r^T x) + (b + W (I - V_r V_r^T) mu)

which is exact at full rank and keeps the part of ``x`` that varies most. Ranks follow one
explained-variance threshold shared by every layer, found by bisection so that the model has
``target`` x the teacher's parameters (or, with ``target`` 0, the threshold ``variance``); a map
whose factorised form would not be smaller stays dense. The ranks chosen are recorded in the
config. With no distillation step this is a training-free compression; distilled, each layer
regresses the same teacher layer, as the pruned student.

WavLM's attention reads its projection weights directly (``multi_head_attention_forward``): only
its FFN maps are factorised.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
from torch import nn

from distill.core.protocol import lengths_to_mask

from .base import BuildContext
from .hf_layers import HFLayerConfig, HFLayerStudent, check_layer_teacher
from .layer_widths import HEAD_PRUNABLE, layer_parts


@dataclass
class LowRankOptions:
    """``--student.lowrank.*``: factorised linear maps, ranks from the calibration audio."""

    target: float = field(default=0.5, metadata={
        "help": "parameters kept, as a fraction of the teacher's total (0: use variance instead)"})
    variance: float = field(default=0.99, metadata={"help": "explained input variance kept per map (when target 0)"})
    layers: list[int] = field(default_factory=list,
                              metadata={"help": "teacher layers distilled, each by the same student layer (empty: all)"})
    calibration_utterances: int = field(default=64, metadata={"help": "training utterances measured"})
    crop_seconds: float = field(default=2.0, metadata={"help": "each cut to this length"})

    def __post_init__(self):
        if not 0.0 <= self.target <= 1.0:
            raise ValueError(f"student.lowrank.target must be in [0, 1], got {self.target}")
        if not 0.0 < self.variance <= 1.0:
            raise ValueError(f"student.lowrank.variance must be in (0, 1], got {self.variance}")


class LowRankConfig(HFLayerConfig):
    """Config of :class:`LowRankStudent`.

    Args:
        ranks: ``{"<layer>.<map>": rank}`` for each factorised map (0-based layer; absent: dense).
        threshold: the explained-variance threshold the ranks come from.
        target: the parameter target asked for (0: the threshold was given).
    """

    model_type = "stackdistill-lowrank"

    def __init__(self, ranks: dict | None = None, threshold: float = 1.0, target: float = 0.0, **kwargs):
        self.ranks = dict(ranks or {})
        self.threshold = threshold
        self.target = target
        super().__init__(**kwargs)


class LowRankLinear(nn.Module):
    """``x -> up(down(x))``: a rank-``r`` linear map, ``down`` (r x in, no bias) then ``up`` (out x r, bias)."""

    def __init__(self, in_features: int, out_features: int, rank: int, device=None, dtype=None):
        super().__init__()
        self.in_features, self.out_features, self.rank = in_features, out_features, rank
        self.down = nn.Linear(in_features, rank, bias=False, device=device, dtype=dtype)
        self.up = nn.Linear(rank, out_features, bias=True, device=device, dtype=dtype)

    @property
    def weight(self) -> torch.Tensor:
        """The equivalent dense ``(out, in)`` weight (read-only view for code that inspects it)."""
        return self.up.weight @ self.down.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.down(x))


def factorisable_maps(layer: nn.Module, arch: str) -> dict[str, tuple[nn.Module, str]]:
    """``{map name: (owner module, attribute)}`` of the linear maps of ``layer`` that may be factorised."""
    parts = layer_parts(layer, arch)
    maps = {}
    if arch in HEAD_PRUNABLE and hasattr(parts.attention, "q_proj"):
        for name in ("q_proj", "k_proj", "v_proj", "out_proj"):
            maps[name] = (parts.attention, name)
    maps["ffn_in"] = (parts.ffn_owner, parts.ffn_names[0])
    maps["ffn_out"] = (parts.ffn_owner, parts.ffn_names[1])
    return maps


class InputStatistics:
    """Mean and covariance of the inputs of every factorisable map, over the valid frames of calibration audio.

    ``model``: a dense low-rank student (a teacher copy): its ``frontend`` then its ``stack`` of layers run.
    """

    def __init__(self, model, arch: str):
        self.model, self.arch = model, arch
        self.sums: dict[str, torch.Tensor] = {}
        self.outer: dict[str, torch.Tensor] = {}
        self.counts: dict[str, int] = {}
        self._mask: torch.Tensor | None = None

    def _hook(self, key: str):
        def hook(module, inputs):
            x = inputs[0].detach().double()
            if self._mask is not None and x.dim() == 3 and x.shape[:2] == self._mask.shape:
                x = x[self._mask]
            x = x.reshape(-1, x.shape[-1])
            if key not in self.sums:
                self.sums[key] = torch.zeros(x.shape[-1], dtype=torch.float64)
                self.outer[key] = torch.zeros(x.shape[-1], x.shape[-1], dtype=torch.float64)
                self.counts[key] = 0
            self.sums[key] += x.sum(0).cpu()
            self.outer[key] += (x.T @ x).cpu()
            self.counts[key] += x.shape[0]
        return hook

    @torch.no_grad()
    def collect(self, batches) -> int:
        """Run the model on ``batches`` (``{"wav", "lengths"}`` dicts); returns the valid frames seen."""
        handles = []
        for i, layer in enumerate(self.model.stack.layers):
            for name, (owner, attr) in factorisable_maps(layer, self.arch).items():
                handles.append(getattr(owner, attr).register_forward_pre_hook(self._hook(f"{i}.{name}")))
        frames = 0
        try:
            for b in batches:
                if b.get("wav") is None:
                    continue
                feats, frame_lengths = self.model.frontend(b["wav"], b["lengths"])
                self._mask = lengths_to_mask(frame_lengths, feats.shape[1])
                self.model.stack(feats, frame_lengths)
                frames += int(frame_lengths.sum())
        finally:
            self._mask = None
            for h in handles:
                h.remove()
        if not frames:
            raise ValueError("low-rank student: no calibration audio could be read")
        return frames

    def spectrum(self, key: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(mean (in,), eigenvalues (in,) descending, eigenvectors (in, in) as columns)``."""
        n = self.counts[key]
        mean = self.sums[key] / n
        cov = self.outer[key] / n - torch.outer(mean, mean)
        values, vectors = torch.linalg.eigh(cov)
        return mean, values.flip(0).clamp(min=0), vectors.flip(1)


@torch.no_grad()
def factorise_linear(lin: nn.Linear, mean: torch.Tensor, vectors: torch.Tensor, rank: int) -> LowRankLinear:
    """The rank-``rank`` map equal to ``lin`` on inputs in the span of the leading ``vectors`` around ``mean``.

    ``mean`` ``(in,)``; ``vectors`` ``(in, in)``, eigenvectors of the inputs' covariance as columns,
    leading first. At full rank the result equals ``lin`` on every input.
    """
    dtype = lin.weight.dtype
    basis = vectors[:, :rank].to(dtype)  # (in, r)
    mean = mean.to(dtype)
    out = LowRankLinear(lin.in_features, lin.out_features, rank, lin.weight.device, dtype)
    bias = lin.bias if lin.bias is not None else torch.zeros(lin.out_features, dtype=dtype)
    out.down.weight.copy_(basis.T)
    out.up.weight.copy_(lin.weight @ basis)
    out.up.bias.copy_(bias + lin.weight @ (mean - basis @ (basis.T @ mean)))
    return out


def rank_for(values: torch.Tensor, threshold: float) -> int:
    """Smallest rank whose leading eigenvalues explain ``threshold`` of the variance (at least 1)."""
    total = float(values.sum())
    if total <= 0:
        return 1
    share = torch.cumsum(values, 0) / total
    return max(1, int(torch.searchsorted(share, torch.tensor(threshold, dtype=share.dtype)).item()) + 1)


def _factorised_cost(rank: int, n_out: int, n_in: int, has_bias: bool) -> int:
    """Weights a rank-``rank`` map adds beyond the dense map's bias (``up`` always has a bias)."""
    return rank * (n_in + n_out) + (0 if has_bias else n_out)


def choose_ranks(spectra: dict[str, torch.Tensor], shapes: dict[str, tuple[int, int, bool]], threshold: float) -> dict:
    """``{map: rank}`` for the maps worth factorising at ``threshold`` (dense when not smaller).

    ``shapes``: ``{map: (out, in, has bias)}``.
    """
    ranks = {}
    for key, values in spectra.items():
        n_out, n_in, bias = shapes[key]
        r = min(rank_for(values, threshold), n_in)
        if _factorised_cost(r, n_out, n_in, bias) < n_in * n_out:
            ranks[key] = r
    return ranks


def params_with(ranks: dict, shapes: dict[str, tuple[int, int, bool]], others: int) -> int:
    """Parameters of the model with ``ranks`` (``others``: everything that is not a factorisable weight)."""
    return others + sum(_factorised_cost(ranks[k], o, i, b) if k in ranks else i * o for k, (o, i, b) in shapes.items())


class LowRankStudent(HFLayerStudent):
    kind = "lowrank"
    config_class = LowRankConfig
    options_class = LowRankOptions

    def wrap_stack(self, inner: nn.Module, config: LowRankConfig, dim: int) -> nn.Module:
        for i, layer in enumerate(inner.layers):
            for name, (owner, attr) in factorisable_maps(layer, config.frontend_arch).items():
                rank = config.ranks.get(f"{i}.{name}")
                if rank:
                    lin = getattr(owner, attr)
                    setattr(owner, attr, LowRankLinear(lin.in_features, lin.out_features, int(rank),
                                                       lin.weight.device, lin.weight.dtype))
        return inner

    @classmethod
    def from_teacher(cls, teacher, options: LowRankOptions, context: BuildContext) -> "LowRankStudent":
        dense, stats = cls.calibrated(teacher, options, context)
        return cls.factorised(dense, stats, options.target, options.variance)

    @classmethod
    def calibrated(cls, teacher, options: LowRankOptions,
                   context: BuildContext) -> tuple["LowRankStudent", "InputStatistics"]:
        """``(dense copy of the teacher, its maps' input statistics on context.data)``: what
        :meth:`factorised` needs, measured once for any number of targets."""
        check_layer_teacher(teacher)
        if not context.data:
            raise ValueError("low-rank student: needs calibration audio (the distillation data)")
        from distill.data.corpus import analysis_batches

        loader, _ = analysis_batches(context.data, options.crop_seconds, 40.0, options.calibration_utterances,
                                     context.seed)
        n = teacher.num_layers
        layers = sorted(set(options.layers)) or list(range(1, n + 1))
        dense = cls.initialised_from(teacher, cls.config_from_teacher(
            teacher, n, list(range(1, n + 1)), target_layers=layers), context.seed)
        stats = InputStatistics(dense.eval(), dense.config.frontend_arch)
        stats.collect(loader)
        return dense, stats

    @classmethod
    def factorised(cls, dense: "LowRankStudent", stats: InputStatistics, target: float,
                   variance: float) -> "LowRankStudent":
        """``dense`` (a copy of the teacher) with every map factorised at the chosen ranks."""
        arch = dense.config.frontend_arch
        spectra, shapes, bases, weights = {}, {}, {}, 0
        for i, layer in enumerate(dense.inner.layers):
            for name, (owner, attr) in factorisable_maps(layer, arch).items():
                key = f"{i}.{name}"
                lin = getattr(owner, attr)
                mean, values, vectors = stats.spectrum(key)
                spectra[key], bases[key] = values, (mean, vectors)
                shapes[key] = (lin.out_features, lin.in_features, lin.bias is not None)
                weights += lin.weight.numel()
        teacher_total = dense.info.params_total
        others = teacher_total - weights
        if target > 0:
            lo, hi = 0.0, 1.0  # the threshold: more variance kept -> more parameters
            if params_with(choose_ranks(spectra, shapes, 0.0), shapes, others) > target * teacher_total:
                smallest = params_with(choose_ranks(spectra, shapes, 0.0), shapes, others) / teacher_total
                raise ValueError(f"student.lowrank.target {target}: rank 1 everywhere still keeps {smallest:.1%} of "
                                 "the teacher's parameters; choose a larger target")
            for _ in range(40):
                mid = (lo + hi) / 2
                if params_with(choose_ranks(spectra, shapes, mid), shapes, others) <= target * teacher_total:
                    lo = mid
                else:
                    hi = mid
            threshold = lo
        else:
            threshold = variance
        ranks = choose_ranks(spectra, shapes, threshold)
        config = copy.deepcopy(dense.config)  # dense stays as it was: it serves other targets too
        config.ranks, config.threshold, config.target = ranks, threshold, target
        student = cls(config)
        student.frontend.load_state_dict(dense.frontend.state_dict())
        with torch.no_grad():
            factorised = {}
            for i, layer in enumerate(dense.inner.layers):
                for name, (owner, attr) in factorisable_maps(layer, arch).items():
                    key = f"{i}.{name}"
                    if key in ranks:
                        factorised[key] = factorise_linear(getattr(owner, attr), *bases[key], ranks[key])
            # every tensor of the dense copy whose module is unchanged (norms, dense maps, positions, ...)
            target_state = student.inner.state_dict()
            for name, tensor in dense.inner.state_dict().items():
                if name in target_state and target_state[name].shape == tensor.shape:
                    target_state[name].copy_(tensor)
            for i, layer in enumerate(student.inner.layers):
                for name, (owner, attr) in factorisable_maps(layer, arch).items():
                    if f"{i}.{name}" in factorised:
                        getattr(owner, attr).load_state_dict(factorised[f"{i}.{name}"].state_dict())
        if hasattr(dense, "masked_spec_embed") and hasattr(student, "masked_spec_embed"):
            student.masked_spec_embed.copy_(dense.masked_spec_embed)
        return student.train(dense.training)

    def exports_plain(self) -> bool:
        return not self.config.ranks

    def describe(self) -> str:
        c = self.config
        how = f"{c.target:.0%} of the teacher's parameters" if c.target else f"{c.threshold:.1%} of the input variance"
        return (f"the teacher with {len(c.ranks)} linear maps factorised from the principal components of their "
                f"inputs ({how}; LiteASR), each layer regressing its own teacher layer")

    def card_rows(self) -> dict[str, str]:
        c = self.config
        return {**super().card_rows(), "student kind": "low-rank factorisation (LiteASR, Kamahori et al.)",
                "explained-variance threshold": f"{c.threshold:.4f}",
                "ranks": ", ".join(f"{k}: {r}" for k, r in sorted(c.ranks.items())) or "none (dense)"}

    def report_fields(self) -> dict:
        c = self.config
        return {**super().report_fields(), "ranks": dict(c.ranks), "threshold": c.threshold, "target": c.target}

