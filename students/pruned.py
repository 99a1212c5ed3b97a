"""Pruned, then distilled: CoMFLP's last step (Liu et al.) as a student kind.

The student starts as the teacher without some layers (given, picked by an ordering, or by
CoMFLP's correlation coarse search on the training audio) and is distilled against the full
teacher: each kept layer regresses the teacher layer it came from, the last onto the last.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Literal

from distill.core.protocol import check_layers_to_remove

from .base import BuildContext
from .hf_layers import HFLayerConfig, HFLayerStudent, check_layer_teacher

log = logging.getLogger(__name__)


@dataclass
class PrunedOptions:
    """``--student.pruned.*``: which layers the student starts without."""

    removed: list[int] = field(default_factory=list,
                               metadata={"help": "teacher layers to remove (1-based); empty: choose by ordering"})
    ordering: Literal["comflp", "last", "first", "block_influence"] = field(
        default="comflp", metadata={"help": "how to choose them: CoMFLP coarse search, last/first layers, block influence"})
    n_remove: int = field(default=0, metadata={"help": "layers to remove (0: half of them)"})
    measure: Literal["distance_correlation", "linear_cka", "cosine"] = field(
        default="distance_correlation", metadata={"help": "correlation the CoMFLP search ranks by"})
    max_utterances: int = field(default=256, metadata={"help": "training utterances used to choose"})
    crop_seconds: float = field(default=2.0, metadata={"help": "those utterances cut to this length"})


class PrunedConfig(HFLayerConfig):
    """Config of :class:`PrunedStudent`; ``removed_layers``: teacher layers it started without."""

    model_type = "stackdistill-pruned"

    def __init__(self, removed_layers: list[int] | None = None, **kwargs):
        self.removed_layers = list(removed_layers or [])
        super().__init__(**kwargs)


def choose_removed(teacher, options: PrunedOptions, context: BuildContext) -> tuple[list[int], dict]:
    """``(removed layers, how they were chosen)`` for ``options`` on ``context.data``."""
    num_layers = teacher.num_layers
    if options.removed:
        return check_layers_to_remove(options.removed, num_layers), {"how": "given"}
    n = options.n_remove or max(1, num_layers // 2)
    check_layers_to_remove(range(1, n + 1), num_layers)
    if options.ordering in ("last", "first"):
        from distill.analysis.prune import removal_order

        return sorted(removal_order(options.ordering, num_layers)[:n]), {"how": options.ordering}
    if not context.data:
        raise ValueError(f"pruned student: ordering {options.ordering!r} needs training audio to rank layers on")
    from distill.data.corpus import analysis_batches

    loader, _ = analysis_batches(context.data, options.crop_seconds, 40.0, options.max_utterances, context.seed)
    if options.ordering == "block_influence":
        from distill.analysis.prune import block_influence, removal_order

        influence = block_influence(teacher, loader)
        return sorted(removal_order("block_influence", num_layers, influence)[:n]), \
            {"how": "block_influence", "influence": influence}
    from distill.analysis.comflp import coarse_search
    from distill.analysis.similarity import SimilaritySettings, similarity_matrices

    settings = SimilaritySettings(measures=[options.measure], mode="whole", max_samples=options.max_utterances,
                                  l2_normalize=True, seed=context.seed)
    mats, counts = similarity_matrices(teacher, loader, settings, progress=False)
    best = coarse_search(mats[options.measure], n, "exact", top_k=5)
    log.info("CoMFLP coarse search on %d utterances: %s", counts["utterances"], best)
    return list(best[0][0]), {"how": "comflp", "measure": options.measure,
                              "top": [[list(r), s] for r, s in best], "utterances": counts["utterances"]}


class PrunedStudent(HFLayerStudent):
    kind = "pruned"
    config_class = PrunedConfig
    options_class = PrunedOptions

    @classmethod
    def from_teacher(cls, teacher, options: PrunedOptions, context: BuildContext) -> "PrunedStudent":
        check_layer_teacher(teacher)
        removed, chosen = choose_removed(teacher, options, context)
        kept = [i for i in range(1, teacher.num_layers + 1) if i not in removed]
        targets = kept[:-1] + [teacher.num_layers]  # each kept layer -> its own, the last -> the last
        config = cls.config_from_teacher(teacher, len(kept), kept, removed_layers=removed, target_layers=targets)
        student = cls.initialised_from(teacher, config, context.seed)
        student.chosen = chosen
        return student

    def resolved_options(self, options: PrunedOptions) -> PrunedOptions:
        from dataclasses import replace

        return replace(options, removed=list(self.config.removed_layers))

    def without_layers(self, remove) -> "PrunedStudent":
        pruned = super().without_layers(remove)
        c = pruned.config
        c.removed_layers = sorted(set(range(1, c.teacher_num_layers + 1)) - set(c.layer_sources))
        return pruned

    def describe(self) -> str:
        c = self.config
        return (f"the teacher without layers {c.removed_layers}, then distilled (kept layers {c.layer_sources} "
                f"regress themselves, the last regresses layer {c.teacher_num_layers})")

    def card_rows(self) -> dict[str, str]:
        return {**super().card_rows(), "student kind": "pruned, then distilled (CoMFLP, Liu et al.)",
                "removed teacher layers": str(self.config.removed_layers)}

    def report_fields(self) -> dict:
        return {**super().report_fields(), "removed_layers": list(self.config.removed_layers),
                "layer_sources": list(self.config.layer_sources)}
