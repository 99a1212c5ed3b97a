"""Pruning without retraining: real shallower models, orderings, CoMFLP search, the probe."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import torch

from distill.analysis.blocks import find_blocks
from distill.analysis.comflp import coarse_search, fine_search, proposal_score, segments
from distill.analysis.prune import block_influence, prune, removal_order, save_pruned, skip_layers
from distill.core.config import load_config
from distill.jobs.prune_run import PruneConfig, run_prune
from distill.models.teacher import load_teacher
from tasks.probe import ProbeConfig, run_probe

from .conftest import save_tiny_model
from .references import count_of, s3prl_ks_validation


def _wav():
    g = torch.Generator().manual_seed(1)
    return 0.1 * torch.randn(2, 12000, generator=g), torch.tensor([12000, 9000])


@pytest.mark.parametrize("arch", ["wav2vec2", "hubert", "wavlm", "data2vec-audio", "whisper"])
@pytest.mark.parametrize("remove", [[1], [2, 3]])
def test_pruned_model_equals_original_with_layers_skipped(arch, remove, tmp_path):
    teacher = load_teacher(str(save_tiny_model(arch, tmp_path / arch)))
    pruned = prune(teacher, remove)
    assert pruned.num_layers == 3 - len(remove) and teacher.num_layers == 3  # the original is untouched
    wav, lens = _wav()
    ours, _ = pruned(wav, lens)
    with skip_layers(teacher, remove):
        ref, _ = teacher(wav, lens)
    assert len(ours) == pruned.num_layers + 1
    torch.testing.assert_close(ours[-1], ref[-1], atol=1e-6, rtol=1e-5)
    # a real Hugging Face folder of the same type, with the config updated
    folder = save_pruned(pruned, tmp_path / "pruned")
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == teacher.config.model_type
    assert config["num_hidden_layers"] == 3 - len(remove)
    assert config.get("encoder_layers", 3 - len(remove)) == 3 - len(remove)
    reloaded, _ = load_teacher(str(folder))(wav, lens)
    torch.testing.assert_close(reloaded[-1], ours[-1], atol=1e-6, rtol=1e-5)


def test_pruned_offline_whisper_saves_a_full_whisper_folder(tmp_path):
    teacher = load_teacher("whisper-tiny.en")
    pruned = prune(teacher, [2, 3])
    folder = save_pruned(pruned, tmp_path / "p")
    config = json.loads((folder / "config.json").read_text())
    assert config["encoder_layers"] == 2 and config["decoder_layers"] == 4
    wav, lens = _wav()
    a, _ = pruned(wav, lens)
    b, _ = load_teacher(str(folder))(wav, lens)
    torch.testing.assert_close(a[-1], b[-1], atol=1e-5, rtol=1e-5)


def test_segments_and_scores_closed_form():
    assert segments([5, 2, 3, 7, 8]) == [(2, 3), (5, 5), (7, 8)]
    corr = np.arange(36, dtype=float).reshape(6, 6) / 36
    # segments (2,3) and (5,5): corr[1,3] and corr[4,5]
    assert proposal_score(corr, (2, 3, 5)) == pytest.approx((corr[1, 3] + corr[4, 5]) / 2)


def test_exhaustive_search_equals_brute_force():
    rng = np.random.default_rng(0)
    corr = rng.uniform(0, 1, (9, 9))
    corr = (corr + corr.T) / 2
    for n_remove in (1, 3, 5):
        brute = sorted(((c, proposal_score(corr, c)) for c in itertools.combinations(range(1, 9), n_remove)),
                       key=lambda kv: (-kv[1], kv[0]))[:10]
        assert coarse_search(corr, n_remove, "exhaustive", top_k=10) == brute


def test_exact_search_equals_brute_force_at_every_depth_and_returns_distinct_proposals():
    """Issue 17: exact top-K by dynamic programming, against enumeration, for every L <= 14 and every k."""
    rng = np.random.default_rng(17)
    for num_layers in range(2, 15):
        corr = rng.uniform(-1, 1, (num_layers + 1, num_layers + 1))
        if num_layers % 2:
            corr = (corr + corr.T) / 2  # symmetric like a real correlation matrix, and not
        for n_remove in range(1, num_layers):
            brute = sorted(((c, proposal_score(corr, c)) for c in
                            itertools.combinations(range(1, num_layers + 1), n_remove)),
                           key=lambda kv: (-kv[1], kv[0]))[:10]
            exact = coarse_search(corr, n_remove, "exact", top_k=10)
            assert [c for c, _ in exact] == [c for c, _ in brute], (num_layers, n_remove)
            assert [s for _, s in exact] == pytest.approx([s for _, s in brute])
            assert len({c for c, _ in exact}) == len(exact) == min(10, len(brute))
            assert all(len(c) == n_remove for c, _ in exact)
    deep = rng.uniform(0, 1, (33, 33))  # 32 layers, 16 removed: 6e8 proposals, beyond enumeration
    top = coarse_search(deep, 16, top_k=10)  # exact is the default
    assert len({c for c, _ in top}) == 10 and all(len(c) == 16 for c, _ in top)
    assert [s for _, s in top] == sorted((s for _, s in top), reverse=True)
    beam = coarse_search(deep, 16, "beam", top_k=1, beam=10)[0][1]
    assert top[0][1] >= beam - 1e-12  # no heuristic beats the exact best


def test_greedy_and_beam_find_the_obvious_answer():
    # layers 5..8 change nothing (their input and output are highly correlated), the rest change a lot
    n = 13
    corr = np.full((n, n), 0.1)
    for a in range(4, 9):
        for b in range(4, 9):
            corr[a, b] = 0.99
    np.fill_diagonal(corr, 1.0)
    exhaustive = coarse_search(corr, 4, "exhaustive", top_k=1)[0][0]
    assert exhaustive == (5, 6, 7, 8)
    assert coarse_search(corr, 4, "greedy", top_k=1)[0][0] == exhaustive
    assert coarse_search(corr, 4, "beam", top_k=1, beam=4)[0][0] == exhaustive
    assert coarse_search(corr, 4, "exact", top_k=1)[0][0] == exhaustive


def test_fine_search_picks_by_metric_not_by_correlation():
    proposals = [((1,), 0.9), ((2,), 0.8), ((3,), 0.7)]
    result = fine_search(proposals, lambda removed: removed, lambda removed: {1: 0.1, 2: 0.5, 3: 0.3}[removed[0]])
    assert result["best"]["removed"] == [2] and len(result["candidates"]) == 3
    lower = fine_search(proposals, lambda r: r, lambda r: float(r[0]), higher_is_better=False)
    assert lower["best"]["removed"] == [1]


def test_removal_orders():
    assert removal_order("last", 4) == [4, 3, 2, 1]
    assert removal_order("first", 4) == [1, 2, 3, 4]
    assert removal_order("block_influence", 4, influence=[0.3, 0.1, 0.4, 0.2]) == [2, 4, 1, 3]
    sim = np.array([[1, .9, .8, .1, .1], [.9, 1, .95, .1, .1], [.8, .95, 1, .2, .1],
                    [.1, .1, .2, 1, .9], [.1, .1, .1, .9, 1]])
    blocks = find_blocks(sim)
    assert blocks.blocks == [(0, 2), (3, 4)]
    # inside blocks first (layers 1 and 3: not a block's last state), most similar to its input first
    assert removal_order("similarity_block", 4, similarity=sim, blocks=blocks) == [1, 3, 2, 4]


def test_block_influence_is_zero_for_a_skipped_layer(tiny_whisper_dir):
    teacher = load_teacher(str(tiny_whisper_dir))
    wav, lens = _wav()
    with skip_layers(teacher, [2]):
        bi = block_influence(teacher, [{"wav": wav, "lengths": lens}])
    assert bi[1] == pytest.approx(0.0, abs=1e-7) and bi[0] > 1e-5  # a random pre-LN layer changes little, but not nothing


def test_probe_beats_chance_with_a_pretrained_teacher(ks_corpus, tmp_path):
    cfg = ProbeConfig(data=str(ks_corpus / "train"), max_utterances=0, cache_dir=str(tmp_path), epochs=40)
    teacher = load_teacher("whisper-tiny.en")
    result = run_probe(teacher, cfg)
    assert result["accuracy"] > 3 * result["chance"]
    assert len(result["layer_weights"]) == 5
    assert len(list(tmp_path.glob("features_*.npz"))) == 1
    again = run_probe(teacher, cfg)  # from the cache: same features, same seeded probe
    assert again["accuracy"] == result["accuracy"]
    # speaker identity from the same (cached) features: 12 espeak speakers, random utterance split
    speakers = run_probe(teacher, ProbeConfig(data=cfg.data, label="speaker", max_utterances=0,
                                              cache_dir=cfg.cache_dir, epochs=40))
    assert speakers["classes"] == 12 and speakers["accuracy"] > 3 * speakers["chance"]
    assert len(list(tmp_path.glob("features_*.npz"))) == 1


def test_probe_weights_go_to_the_layer_that_holds_the_label():
    from tasks.probe import fit_probe

    rng = np.random.default_rng(0)
    n, layers, dim = 240, 4, 8
    labels = [f"c{k % 3}" for k in range(n)]
    feats = rng.standard_normal((n, layers, dim)).astype(np.float32)  # noise in every layer ...
    for k, label in enumerate(labels):
        feats[k, 2, int(label[1])] += 3.0  # ... but layer 2 says the class
    is_test = [k % 4 == 0 for k in range(n)]
    result = fit_probe(feats, labels, is_test, ProbeConfig(epochs=60))
    weights = result["layer_weights"]
    assert max(range(layers), key=weights.__getitem__) == 2 and weights[2] > 0.5
    assert result["accuracy"] > 0.9 and result["test"] == 60 and result["chance"] == pytest.approx(1 / 3)
    shuffled = list(np.random.default_rng(1).permutation(labels))  # labels no layer holds
    assert fit_probe(feats, shuffled, is_test, ProbeConfig(epochs=60))["accuracy"] < 0.6


@pytest.mark.slow
def test_prune_command_writes_curves_and_search(tiny_whisper_dir, sentences_corpus, tmp_path):
    cfg = load_config(PruneConfig, None, {
        "teacher": str(tiny_whisper_dir), "data": [str(sentences_corpus)], "out": str(tmp_path),
        "metric": "reconstruction", "similarity.batch_size": 8, "similarity.max_batches": 2,
        "similarity.knn_k": 3, "crop_seconds": 1.0, "batch_seconds": 8.0, "comflp.top_k": 3})
    run_prune(cfg)
    curve = json.loads((tmp_path / "curve.json").read_text())
    assert set(curve["orderings"]) == {"last", "first", "block_influence", "knn_block_influence", "similarity_block"}
    for c in curve["orderings"].values():
        assert c["removed"] == [0, 1, 2] and c["metric"][0] == pytest.approx(0.0, abs=1e-9)
        assert c["metric"][2] > 0
    search = json.loads((tmp_path / "search.json").read_text())
    assert len(search["candidates"]) == 3 and search["n_remove"] == 1
    assert search["best"]["metric"] == min(c["metric"] for c in search["candidates"])
    pruned = load_teacher(str(tmp_path / "pruned"))  # CoMFLP's pick, saved: the teacher's other layers, unchanged
    teacher = load_teacher(str(tiny_whisper_dir))
    kept = [i for i in range(3) if i + 1 not in search["best"]["removed"]]
    assert pruned.num_layers == 2
    for mine, theirs in zip(pruned.stack.layers, [teacher.stack.layers[i] for i in kept]):
        for (name, a), (_, b) in zip(mine.state_dict().items(), theirs.state_dict().items()):
            assert torch.equal(a, b), name
    from PIL import Image

    with Image.open(tmp_path / "curve.png") as im:
        assert im.size == (660, 440)
    # the proposals built are the top 3 by the saved correlation matrix (one layer: corr[l-1, l])
    corr = np.array(json.loads((tmp_path / "similarity.json").read_text())["matrices"]["distance_correlation"])
    by_corr = sorted(range(1, corr.shape[0]), key=lambda layer: -corr[layer - 1, layer])[:3]
    assert [c["removed"] for c in search["candidates"]] == [[layer] for layer in by_corr]
    assert [c["corr_score"] for c in search["candidates"]] == pytest.approx([corr[l - 1, l] for l in by_corr])


@pytest.mark.slow
def test_ks_metric_scores_a_pruned_model_on_the_validation_split(tiny_whisper_dir, ks_corpus, tmp_path):
    from distill.jobs.prune_run import _metric_fn

    teacher = load_teacher(str(tiny_whisper_dir))
    cfg = load_config(PruneConfig, None, {"teacher": str(tiny_whisper_dir), "metric": "ks",
                                          "ks.data": str(ks_corpus), "ks.steps": 6, "ks.eval_every": 3,
                                          "ks.batch_size": 8})
    fn, higher, name = _metric_fn(cfg, teacher, [], tmp_path)
    value = fn(prune(teacher, [3]), (3,))
    assert higher and "validation" in name and 0.0 <= value <= 1.0
    saved = json.loads((tmp_path / "candidates" / "without_3" / "ks" / "metrics.json").read_text())
    assert saved["valid_best_accuracy"] == value
    # recomputed from s3prl's saved best model: the figure is its class-balanced validation draw
    again = s3prl_ks_validation(tmp_path / "candidates" / "without_3" / "ks" / "s3prl")
    assert value == pytest.approx(again["balanced_draw"], abs=1e-9)
    count_of(value, again["rows"])  # a whole count over as many draws as validation rows
    assert load_teacher(str(tmp_path / "candidates" / "without_3" / "model")).num_layers == 2

