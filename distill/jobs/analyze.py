"""``stackdistill analyze``: how similar every pair of layers is, and the block structure.

Output folder::

    config.yaml          resolved settings
    similarity.json      every matrix, the settings, utterances/frames/samples used, blocks
    heatmap_<measure>.png  one per measure, blocks outlined
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from distill.analysis.blocks import boundary_targets, find_blocks
from distill.analysis.similarity import MEASURES, SimilaritySettings, check_similarity_settings, similarity_matrices
from distill.core.config import save_config, to_dict
from distill.core.fsutil import claim_run_folder, write_json_atomic
from distill.core.names import model_title
from distill.core.plots import heatmap
from distill.data.corpus import SkipTally, analysis_batches
from distill.models.teacher import OFFLINE_DEFAULT, check_teacher_spec, load_teacher


@dataclass
class AnalyzeConfig:
    teacher: str = field(default=OFFLINE_DEFAULT, metadata={"help": "teacher or student spec"})
    data: list[str] = field(default_factory=list, metadata={"help": "audio folders / manifests"})
    out: str = field(default="runs/analysis", metadata={"help": "output folder"})
    overwrite: bool = field(default=False, metadata={"help": "write over an earlier run in out (else refused)"})
    similarity: SimilaritySettings = field(default_factory=SimilaritySettings)
    n_blocks: int = field(default=0, metadata={"help": "number of blocks (0: chosen automatically)"})
    block_measure: str = field(default="linear_cka", metadata={"help": "matrix the blocks are found in"})
    crop_seconds: float = field(default=4.0, metadata={"help": "utterances cut to this length (from the start)"})
    batch_seconds: float = field(default=40.0, metadata={"help": "audio per forward batch"})
    max_utterances: int = field(default=0, metadata={"help": "random subset of the data (0: all)"})
    seed: int = 0


def check_audio_run(cfg) -> None:
    """The settings ``analyze`` and ``prune`` share (``teacher``, ``data``, crops, batches): no audio read.

    The teacher spec is checked without loading it (a missing folder, an id neither cached nor
    reachable); the ``data`` sources must exist.
    """
    for name in ("crop_seconds", "batch_seconds"):
        if not getattr(cfg, name) > 0:
            raise ValueError(f"--{name} must be above 0, got {getattr(cfg, name)}")
    if cfg.max_utterances < 0:
        raise ValueError(f"--max_utterances must be 0 (all) or more, got {cfg.max_utterances}")
    if not cfg.data:
        raise ValueError("--data is empty: give audio folders or .tsv manifests")
    for source in cfg.data:
        if not Path(source).exists():
            raise ValueError(f"--data {source}: not found")
    check_teacher_spec(cfg.teacher)


def utterances_source(cfg, utterances: int) -> str:
    """How a message names the utterances a run uses, with the flags that decide their number."""
    if cfg.max_utterances and utterances >= cfg.max_utterances:
        return f"the {utterances} utterances analysed (--max_utterances {cfg.max_utterances})"
    return f"the {utterances} utterances analysed (all that --data holds; --max_utterances {cfg.max_utterances})"


def check(cfg: AnalyzeConfig) -> None:
    """Every setting that can be checked without reading audio; ``ValueError`` names the flag."""
    check_similarity_settings(cfg.similarity)
    if cfg.block_measure not in cfg.similarity.measures:
        raise ValueError(f"--block_measure {cfg.block_measure} is not among --similarity.measures "
                         f"{','.join(cfg.similarity.measures)}")
    if cfg.n_blocks < 0:
        raise ValueError(f"--n_blocks must be 0 (automatic) or more, got {cfg.n_blocks}")
    check_audio_run(cfg)


def check_depth(cfg: AnalyzeConfig, num_layers: int) -> None:
    """The settings that need the model's depth (known once it is loaded, before it runs)."""
    if cfg.n_blocks > num_layers + 1:
        raise ValueError(f"--n_blocks {cfg.n_blocks} is more than the {num_layers + 1} hidden states of a "
                         f"{num_layers}-layer model")


def run_analysis(cfg: AnalyzeConfig) -> dict:
    check(cfg)
    claim_run_folder(cfg.out, overwrite=cfg.overwrite)
    # the audio is listed (headers only) before the teacher loads, so a setting the data cannot meet fails now
    loader, skipped = analysis_batches(cfg.data, cfg.crop_seconds, cfg.batch_seconds, cfg.max_utterances, cfg.seed)
    n = len(loader.dataset)
    check_similarity_settings(cfg.similarity, n, source=utterances_source(cfg, n))
    model = load_teacher(cfg.teacher)
    check_depth(cfg, model.num_layers)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")
    skips = SkipTally(skipped)
    mats, counts = similarity_matrices(model, loader, cfg.similarity, skips=skips)
    blocks = {m: find_blocks(mat, cfg.n_blocks or None) for m, mat in mats.items()}
    for m, mat in mats.items():
        heatmap(mat, out / f"heatmap_{m}.png", f"{m.replace('_', ' ')}: {model_title(model)}", blocks[m].blocks)
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


__all__ = ["AnalyzeConfig", "run_analysis", "check", "check_audio_run", "analysis_batches", "MEASURES"]
