"""Checks on real recorded speech beside synthetic speech (the pipeline's ``real_speech/``).

(a) **The teacher is sound on real speech**: a Whisper teacher's word error rate on the held-out
English prompts (its own decoder, greedy; :class:`distill.models.whisper_decoder.WhisperTranscriber`).
(b) **Do the blocks agree?** layer similarity and its blocks on held-out real prompts against
held-out synthetic sentences, with the same settings.
(c) **Do students generalise to real voices?** each student's per-pair reconstruction (cosine and
L1 to the teacher's states, :func:`distill.analysis.reconstruction.reconstruction`) on the same
two sets of audio.

Output folder::

    real_speech.json                 every figure below, transcripts included
    heatmap_real.png  heatmap_synthetic.png   the block measure's matrix on each, blocks outlined
    reconstruction.png               per student: mean cosine on real against synthetic audio
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from distill.analysis.blocks import boundary_targets, find_blocks
from distill.analysis.reconstruction import reconstruction
from distill.analysis.similarity import SimilaritySettings, check_similarity_settings, similarity_matrices
from distill.core.config import to_dict
from distill.core.fsutil import write_json_atomic
from distill.core.names import model_title
from distill.core.plots import grouped_bars, heatmap
from distill.core.text import normalise_words, word_error_rate, word_errors
from distill.data.audio import load_audio
from distill.data.corpus import SkipTally, analysis_batches
from distill.models.whisper_decoder import MAX_SECONDS

log = logging.getLogger(__name__)


def _similarity_defaults() -> SimilaritySettings:
    # frames, not utterance means: 16 frames of each of 80 utterances fill ten mini-batches of 128
    return SimilaritySettings(measures=["linear_cka", "cosine"], granularity="frames", frames_per_utterance=16,
                              max_batches=10)


@dataclass
class RealSpeechConfig:
    enabled: bool = field(default=True, metadata={"help": "run the real-speech checks (needs the prompts corpus)"})
    wer_max_utterances: int = field(default=0, metadata={
        "help": "held-out English prompts transcribed for the teacher's WER (0: all of at most 30 s)"})
    crop_seconds: float = field(default=4.0, metadata={"help": "utterances cut to this length (from the start)"})
    batch_seconds: float = field(default=40.0, metadata={"help": "audio per forward batch"})
    max_utterances: int = field(default=160, metadata={"help": "utterances of each kind (real, synthetic) measured"})
    similarity: SimilaritySettings = field(default_factory=_similarity_defaults)
    block_measure: str = field(default="linear_cka", metadata={"help": "matrix the blocks are found in"})
    seed: int = 0


def teacher_wer(teacher, rows: list[dict], max_utterances: int = 0) -> dict:
    """Word error rate of a Whisper teacher's own decoder on manifest ``rows`` (``path``, ``text``).

    Rows longer than 30 s are left out (counted). A teacher without a decoder (any model but a
    whole CTranslate2 Whisper) gives ``{"measured": False, "reason": ...}``.
    """
    from distill.models.whisper_decoder import WhisperTranscriber

    try:
        transcriber = WhisperTranscriber(teacher)
    except ValueError as err:
        return {"measured": False, "reason": str(err)}
    fitting = [r for r in rows if r["seconds"] <= MAX_SECONDS]
    usable = fitting[:max_utterances] if max_utterances else fitting
    if not usable:
        return {"measured": False, "reason": "no held-out English prompt of at most 30 s"}
    t0 = time.time()
    hyps = [transcriber.transcribe(load_audio(r["path"])) for r in usable]
    result = word_error_rate([r["text"] for r in usable], hyps)
    return {"measured": True, **result, "too_long": len(rows) - len(fitting),
            "audio_seconds": sum(r["seconds"] for r in usable), "seconds": time.time() - t0,
            "transcripts": [{"file": r["file"], "reference": r["text"], "hypothesis": h,
                             "errors": word_errors(normalise_words(r["text"]), normalise_words(h))}
                            for r, h in zip(usable, hyps)]}


def compare_blocks(teacher, loaders: dict, cfg: RealSpeechConfig, out: Path) -> dict:
    """The teacher's layer similarity on the ``real`` and ``synthetic`` loaders, same settings; do the blocks agree?"""
    found, skips = {}, SkipTally()
    for kind in ("real", "synthetic"):
        loader, skipped = loaders[kind]
        skips.note(skipped)
        check_similarity_settings(cfg.similarity, len(loader.dataset), source=f"the {kind} audio")
        mats, counts = similarity_matrices(teacher, loader, cfg.similarity, skips=skips)
        blocks = find_blocks(mats[cfg.block_measure])
        heatmap(mats[cfg.block_measure], out / f"heatmap_{kind}.png",
                f"{cfg.block_measure.replace('_', ' ')}, {kind} speech: {model_title(teacher)}", blocks.blocks)
        found[kind] = {"matrix": mats[cfg.block_measure].tolist(), "blocks": blocks.to_dict(), "counts": counts,
                       "mimic_targets": boundary_targets(blocks, teacher.num_layers)}
    a, b = (np.asarray(found[k]["matrix"]) for k in ("real", "synthetic"))
    off = ~np.eye(a.shape[0], dtype=bool)
    return {**found, "measure": cfg.block_measure,
            "same_blocks": found["real"]["blocks"]["blocks"] == found["synthetic"]["blocks"]["blocks"],
            "same_mimic_targets": found["real"]["mimic_targets"] == found["synthetic"]["mimic_targets"],
            "mean_abs_difference": float(np.abs(a - b)[off].mean()), "max_abs_difference": float(np.abs(a - b).max()),
            "pearson_off_diagonal": float(np.corrcoef(a[off], b[off])[0, 1]),
            "files_skipped": len(skips)}


def compare_reconstruction(students: dict, teacher, loaders: dict) -> dict:
    """Each student's reconstruction of the teacher on the real against the synthetic held-out loader."""
    if not students:
        return {}
    measured = {kind: reconstruction(students, teacher, loaders[kind][0]) for kind in ("real", "synthetic")}
    rows = {}
    for name in students:
        real, synthetic = measured["real"][name], measured["synthetic"][name]
        rows[name] = {"real": real, "synthetic": synthetic,
                      "cosine_drop": synthetic["all"]["cosine"] - real["all"]["cosine"],
                      "l1_ratio": real["all"]["l1"] / max(synthetic["all"]["l1"], 1e-12)}
    return rows


def run_real_speech_checks(teacher, students: dict, wer_rows: list[dict], real: list[str], synthetic: list[str],
                           cfg: RealSpeechConfig, out: str | Path) -> dict:
    """(a) + (b) + (c) of the module docstring; writes ``out/real_speech.json`` and its plots.

    Args:
        teacher: the frozen teacher; students: ``{name: student}``.
        wer_rows: held-out English prompts (manifest rows with ``path``, ``text``, ``seconds``, ``file``).
        real, synthetic: audio sources (folders / manifests) of held-out real and synthetic speech.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    wer = teacher_wer(teacher, wer_rows, cfg.wer_max_utterances)
    if wer["measured"]:
        log.info("%s on %d held-out English prompts: WER %.2f %%", teacher.name, wer["utterances"], 100 * wer["wer"])
    # each kind of audio listed and batched once, for the blocks and the reconstruction alike
    loaders = {kind: analysis_batches(data, cfg.crop_seconds, cfg.batch_seconds, cfg.max_utterances, cfg.seed)
               for kind, data in (("real", real), ("synthetic", synthetic))}
    blocks = compare_blocks(teacher, loaders, cfg, out)
    recon = compare_reconstruction(students, teacher, loaders)
    if recon:
        grouped_bars({name: {"real": r["real"]["all"]["cosine"], "synthetic": r["synthetic"]["all"]["cosine"]}
                      for name, r in recon.items()}, out / "reconstruction.png", "mean cosine to the teacher",
                     f"Students of {model_title(teacher)}: reconstruction on held-out real and synthetic speech")
    result = {"teacher": teacher.name, "settings": to_dict(replace(cfg)), "real_data": real,
              "synthetic_data": synthetic, "teacher_wer": wer, "blocks": blocks, "reconstruction": recon,
              "seconds": time.time() - t0}
    write_json_atomic(out / "real_speech.json", result)
    return result
