"""``stackdistill analyze``: how similar every pair of layers is, and the block structure.

Output folder::

    config.yaml          resolved settings
    similarity.json      every matrix, the settings, utterances/frames/samples used, blocks
    heatmap_<measure>.png  one per measure, blocks outlined
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .analysis import MEASURES, SimilaritySettings, similarity_matrices
from .blocks import boundary_targets, find_blocks
from .config import save_config, to_dict
from .data import SkipTally, analysis_batches
from .fsutil import write_json_atomic
from .plots import heatmap
from .teacher import OFFLINE_DEFAULT, load_teacher


@dataclass
class AnalyzeConfig:
    teacher: str = field(default=OFFLINE_DEFAULT, metadata={"help": "teacher or student spec"})
    data: list[str] = field(default_factory=list, metadata={"help": "audio folders / manifests"})
    out: str = field(default="runs/analysis", metadata={"help": "output folder"})
    similarity: SimilaritySettings = field(default_factory=SimilaritySettings)
    n_blocks: int = field(default=0, metadata={"help": "number of blocks (0: chosen automatically)"})
    block_measure: str = field(default="linear_cka", metadata={"help": "matrix the blocks are found in"})
    crop_seconds: float = field(default=4.0, metadata={"help": "utterances cut to this length (from the start)"})
    batch_seconds: float = field(default=40.0, metadata={"help": "audio per forward batch"})
    max_utterances: int = field(default=0, metadata={"help": "random subset of the data (0: all)"})
    seed: int = 0


def run_analysis(cfg: AnalyzeConfig) -> dict:
    if cfg.block_measure not in cfg.similarity.measures:
        raise ValueError(f"block_measure {cfg.block_measure!r} is not among the measures {cfg.similarity.measures}")
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")
    model = load_teacher(cfg.teacher)
    loader, skipped = analysis_batches(cfg.data, cfg.crop_seconds, cfg.batch_seconds, cfg.max_utterances, cfg.seed)
    skips = SkipTally(skipped)
    mats, counts = similarity_matrices(model, loader, cfg.similarity, skips=skips)
    blocks = {m: find_blocks(mat, cfg.n_blocks or None) for m, mat in mats.items()}
    for m, mat in mats.items():
        heatmap(mat, out / f"heatmap_{m}.png", f"{m.replace('_', ' ')}: {model.name}", blocks[m].blocks)
    chosen = blocks[cfg.block_measure]
    result = {
        "model": model.name, "num_layers": model.num_layers, "settings": to_dict(cfg.similarity),
        "counts": {**counts, "files_skipped": len(skips), "skipped": skips.reasons},
        "matrices": {m: mat.tolist() for m, mat in mats.items()},
        "blocks": {m: b.to_dict() for m, b in blocks.items()},
        "block_measure": cfg.block_measure,
        "mimic_targets": boundary_targets(chosen, model.num_layers),
    }
    write_json_atomic(out / "similarity.json", result)
    return result


__all__ = ["AnalyzeConfig", "run_analysis", "analysis_batches", "MEASURES"]
