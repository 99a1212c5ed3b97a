"""Layer x layer matrices over a model, and the block structure found in them."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch

from distill.analysis.blocks import boundary_targets, find_blocks
from distill.analysis.similarity import (
    SimilarityAccumulator,
    SimilaritySettings,
    cosine,
    distance_correlation,
    layer_samples,
    linear_cka,
    matrices_from_samples,
    mutual_knn,
    similarity_matrices,
)
from distill.core.config import load_config
from distill.jobs.analyze import AnalyzeConfig, run_analysis

from . import references


def _block_matrix(sizes, inside=0.9, outside=0.2):
    n = sum(sizes)
    s = np.full((n, n), outside)
    start = 0
    for size in sizes:
        s[start:start + size, start:start + size] = inside
        start += size
    np.fill_diagonal(s, 1.0)
    return s


@pytest.mark.parametrize("sizes", [[3, 5], [1, 6, 6], [4, 4, 5], [13]])
def test_blocks_recover_an_obvious_structure(sizes):
    found = find_blocks(_block_matrix(sizes))
    starts = np.cumsum([0] + sizes[:-1])
    assert found.blocks == [(int(a), int(a + s - 1)) for a, s in zip(starts, sizes)]


def test_fixed_number_of_blocks_and_targets():
    s = _block_matrix([3, 5])
    assert len(find_blocks(s, n_blocks=3).blocks) == 3
    two = find_blocks(s, n_blocks=2)
    assert two.boundaries == [2]
    assert boundary_targets(two, num_layers=7) == [2, 7]
    assert boundary_targets(find_blocks(s, n_blocks=1), num_layers=7) == [7]
    with pytest.raises(ValueError, match="n_blocks"):
        find_blocks(s, n_blocks=9)


def _fake_states(n_utts=40, frames=20, dim=6, layers=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(n_utts, frames, dim, generator=g)
    states = [base]
    for _ in range(layers):
        states.append(states[-1] @ torch.randn(dim, dim, generator=g) * 0.5 + 0.3 * torch.randn(n_utts, frames, dim, generator=g))
    lengths = torch.randint(5, frames + 1, (n_utts,), generator=g)
    return states, lengths


def test_streamed_matrix_equals_the_public_measures():
    states, lengths = _fake_states()
    settings = SimilaritySettings(mode="whole", max_samples=1000, knn_k=5)
    acc = SimilarityAccumulator(settings)
    acc.add([s[:25] for s in states], lengths[:25])  # two pieces, as a stream
    acc.add([s[25:] for s in states], lengths[25:])
    mats = acc.result()
    samples = layer_samples(states, lengths, settings, random.Random(0))
    assert samples[0].shape == (40, 6)
    # the utterance vector is the mean over valid frames only
    torch.testing.assert_close(samples[2][3], states[2][3, : lengths[3]].mean(0))
    assert mats["linear_cka"][1, 3] == pytest.approx(linear_cka(samples[1], samples[3]))
    assert mats["mutual_knn"][0, 2] == pytest.approx(mutual_knn(samples[0], samples[2], k=5))
    assert mats["distance_correlation"][2, 4] == pytest.approx(distance_correlation(samples[2], samples[4]))
    for m in mats.values():
        assert m.shape == (5, 5) and np.allclose(m, m.T) and np.allclose(np.diag(m), 1.0)


def test_minibatch_mode_averages_batches_and_stays_bounded():
    states, lengths = _fake_states(n_utts=100)
    settings = SimilaritySettings(mode="minibatch", batch_size=32, max_batches=2, measures=["linear_cka"])
    acc = SimilarityAccumulator(settings)
    acc.add(states, lengths)
    assert acc.done and acc.batches == 2
    assert len(acc.buffer[0]) == 0  # nothing kept beyond the batch being filled
    samples = layer_samples(states, lengths, settings, random.Random(0))
    first = matrices_from_samples([x[:32] for x in samples], settings)["linear_cka"]
    second = matrices_from_samples([x[32:64] for x in samples], settings)["linear_cka"]
    expected = (first + second) / 2
    np.testing.assert_allclose(acc.result()["linear_cka"], expected)


def _traceable_states(n_utts=12, frames=20, layers=3, seed=0):
    """States whose every frame says where it came from: ``[utterance, frame, layer, noise...]``."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(2, frames + 1, (n_utts,), generator=g)
    states = []
    for layer in range(layers + 1):
        s = torch.randn(n_utts, frames, 5, generator=g)
        s[:, :, 0] = torch.arange(n_utts)[:, None]
        s[:, :, 1] = torch.arange(frames)[None, :]
        s[:, :, 2] = layer
        states.append(s)
    return states, lengths


def test_frame_granularity_samples_valid_frames_the_same_in_every_layer():
    states, lengths = _traceable_states()
    settings = SimilaritySettings(granularity="frames", frames_per_utterance=3)
    samples = layer_samples(states, lengths, settings, random.Random(0))
    picked = [(int(b), int(t)) for b, t in samples[0][:, :2].tolist()]
    for layer, x in enumerate(samples):
        assert [(int(b), int(t)) for b, t in x[:, :2].tolist()] == picked  # the same frames from every layer
        assert (x[:, 2] == layer).all()
        for row, (b, t) in zip(x, picked):  # each row is that frame of that layer, untouched
            torch.testing.assert_close(row, states[layer][b, t])
    for b, n in enumerate(lengths.tolist()):
        frames = [t for u, t in picked if u == b]
        assert len(frames) == min(n, 3) == len(set(frames))  # distinct frames ...
        assert all(0 <= t < n for t in frames)  # ... all within the utterance's length
    assert len({t for _, t in picked}) > 3  # drawn at random, not always the first ones


def test_crop_granularity_takes_contiguous_frames_from_the_start_zero_past_the_length():
    states, lengths = _traceable_states()
    c = 8
    samples = layer_samples(states, lengths, SimilaritySettings(granularity="crops", crop_frames=c), random.Random(0))
    for layer, x in enumerate(samples):
        assert x.shape == (12, c * 5)
        for b, n in enumerate(lengths.tolist()):
            crop = x[b].reshape(c, 5)
            kept = min(n, c)
            torch.testing.assert_close(crop[:kept], states[layer][b, :kept])  # frames 0, 1, ... in order
            assert (crop[kept:] == 0).all()  # nothing from beyond the utterance


def test_crop_matrices_equal_the_public_measures_on_crops_built_by_hand():
    """Issue 17: the batched route (one Gram per layer, cosines in one product) gives the references."""
    states, lengths = _fake_states(n_utts=24, frames=12)
    c = 8
    settings = SimilaritySettings(granularity="crops", crop_frames=c, mode="whole", max_samples=100, knn_k=4)
    mats = matrices_from_samples(layer_samples(states, lengths, settings, random.Random(0)), settings)

    def crops(s):  # the first c frames of each utterance, zero past its length, flattened
        rows = []
        for b, n in enumerate(lengths.tolist()):
            x = torch.zeros(c, s.shape[2])
            x[: min(n, c)] = s[b, : min(n, c)]
            rows.append(x.flatten())
        return torch.stack(rows)

    by_hand = [crops(s) for s in states]
    for a, b in ((0, 1), (1, 4), (2, 3)):
        x, y = by_hand[a], by_hand[b]
        assert mats["cosine"][a, b] == pytest.approx(cosine(x, y), abs=1e-6)  # float32 products
        assert mats["linear_cka"][a, b] == pytest.approx(linear_cka(x, y), abs=1e-6)
        assert mats["mutual_knn"][a, b] == pytest.approx(mutual_knn(x, y, k=4))
        assert mats["distance_correlation"][a, b] == pytest.approx(distance_correlation(x, y), abs=1e-6)
    wide = [torch.cat([x, x], 1) if i == 2 else x for i, x in enumerate(by_hand)]  # a layer of another width
    assert np.isnan(matrices_from_samples(wide, settings)["cosine"][1, 2])


def test_whole_mode_reservoir_keeps_the_cap():
    states, lengths = _fake_states(n_utts=100)
    acc = SimilarityAccumulator(SimilaritySettings(mode="whole", max_samples=30, measures=["cosine"]))
    acc.add(states, lengths)
    assert len(acc.buffer[0]) == 30 and acc.utterances == 100


def test_analyze_on_a_teacher(tiny_whisper_dir, sentences_corpus, tmp_path):
    from distill.data.corpus import analysis_batches
    from distill.models.teacher import load_teacher

    cfg = load_config(AnalyzeConfig, None, {"teacher": str(tiny_whisper_dir), "data": [str(sentences_corpus)],
                                            "out": str(tmp_path), "similarity.mode": "whole", "similarity.knn_k": 3,
                                            "crop_seconds": 1.0, "batch_seconds": 8.0, "n_blocks": 2})
    result = run_analysis(cfg)
    saved = json.loads((tmp_path / "similarity.json").read_text())
    n = saved["counts"]["utterances"]
    assert n == saved["counts"]["samples"] == 16 and saved["counts"]["frames"] > 0  # every utterance of the corpus
    # the saved matrices are the measures on the teacher's own states for the same audio
    loader, _ = analysis_batches(cfg.data, cfg.crop_seconds, cfg.batch_seconds, cfg.max_utterances, cfg.seed)
    means = references.utterance_means(load_teacher(str(tiny_whisper_dir)), loader)
    assert len(means) == 4 and means[0].shape[0] == n
    for a in range(4):
        for b in range(4):
            cka, cos = references.linear_cka(means[a], means[b]), references.mean_cosine(means[a], means[b])
            assert saved["matrices"]["linear_cka"][a][b] == pytest.approx(cka, abs=1e-5)
            assert saved["matrices"]["cosine"][a][b] == pytest.approx(cos, abs=1e-5)
    for m in ("cosine", "linear_cka", "mutual_knn", "distance_correlation"):
        mat = np.array(saved["matrices"][m])
        assert mat.shape == (4, 4) and np.allclose(mat, mat.T) and np.allclose(np.diag(mat), 1.0)
        assert (tmp_path / f"heatmap_{m}.png").stat().st_size > 1000
    # the blocks and the students' targets come from the saved CKA matrix: 2 blocks, split where the
    # within-block similarity above the matrix's off-diagonal mean is largest (every split tried here)
    cka = np.array(saved["matrices"]["linear_cka"])
    off = ~np.eye(4, dtype=bool)
    centred = np.where(off, cka - cka[off].mean(), 0.0)
    best = max(range(1, 4), key=lambda k: centred[:k, :k].sum() + centred[k:, k:].sum())
    assert saved["blocks"]["linear_cka"]["blocks"] == [[0, best - 1], [best, 3]]
    assert result["mimic_targets"] == ([best - 1, 3] if best > 1 else [3])


def test_similarity_matrices_on_a_model_stream(tiny_whisper_dir):
    from distill.models.teacher import load_teacher

    teacher = load_teacher(str(tiny_whisper_dir))
    g = torch.Generator().manual_seed(0)
    batches = [{"wav": 0.1 * torch.randn(4, 8000, generator=g), "lengths": torch.tensor([8000, 7000, 6000, 5000])}
               for _ in range(3)]
    mats, counts = similarity_matrices(teacher, batches, SimilaritySettings(mode="whole", knn_k=3), progress=False)
    assert counts["utterances"] == 12 and counts["samples"] == 12
    means = references.utterance_means(teacher, batches)
    for a in range(4):
        for b in range(4):
            assert mats["linear_cka"][a, b] == pytest.approx(references.linear_cka(means[a], means[b]), abs=1e-5)
            assert mats["cosine"][a, b] == pytest.approx(references.mean_cosine(means[a], means[b]), abs=1e-5)
    for m in mats.values():
        assert m.shape == (4, 4) and np.allclose(m, m.T) and np.allclose(np.diag(m), 1.0)
    assert mats["linear_cka"].min() < 0.9999  # the layers do differ: the checks above are not all ones


def test_l2_normalised_samples_have_unit_rows():
    states, lengths = _fake_states()
    samples = layer_samples(states, lengths, SimilaritySettings(l2_normalize=True), random.Random(0))
    torch.testing.assert_close(samples[3].norm(dim=1), torch.ones(40))
