"""Pruning without post-training: shallower models made by dropping transformer layers.

Layers are numbered 1..L (hidden state i is the output of layer i). :func:`prune` returns a
real shallower copy of any model of the protocol (``model.without_layers``: layers removed
from the module list, config updated) that is used like any teacher; :func:`save_pruned` writes
it as a folder of the same model type, so it loads wherever that type loads (and through
``load_teacher`` / the s3prl adapter).

Orderings (which layer goes next), after the redundancy paper (Dorszewski et al. 2025):

* ``last``: drop the last layers first; ``first``: drop the first layers first;
* ``block_influence``: ShortGPT's ``BI_i = 1 - cos(h_{i-1}, h_i)`` over valid frames, lowest first;
* ``knn_block_influence``: the same score with mutual k-NN alignment (k = 8) of utterance vectors
  in place of cosine, lowest first; the first layer goes last, as the paper never prunes the
  first block;
* ``similarity_block``: layers inside a block of mutually similar hidden states go first (the
  most similar to their input first), keeping each block's last layer, its boundary; then the
  boundaries, again most similar first.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np
import torch

from distill.analysis.blocks import BlockStructure
from distill.core.fsutil import atomic_dir
from distill.core.protocol import check_layers_to_remove, lengths_to_mask, masked_mean

ORDERINGS = ("last", "first", "block_influence", "knn_block_influence", "similarity_block")


def prune(model, remove):
    """A copy of ``model`` (teacher, student or pruned model) without the 1-based layers ``remove``."""
    return model.without_layers(remove)


def save_pruned(pruned, out: str | Path) -> Path:
    """Write a pruned model as a folder :func:`distill.models.teacher.load_teacher` reads (atomically).

    Hugging Face / CTranslate2 teachers give a folder of their own model type; students give a
    student folder of their kind.
    """
    out = Path(out)
    with atomic_dir(out) as tmp:
        pruned.save_pretrained(tmp, safe_serialization=True)
    return out


@contextlib.contextmanager
def skip_layers(teacher, skip):
    """Run ``teacher`` with layers ``skip`` (1-based) turned into identities (forward hooks)."""
    handles = []
    for i in check_layers_to_remove(skip, teacher.num_layers):
        def hook(module, args, kwargs, output):
            hidden = args[0] if args else kwargs["hidden_states"]
            return (hidden,) + tuple(output[1:]) if isinstance(output, tuple) else hidden
        handles.append(teacher.stack.layers[i - 1].register_forward_hook(hook, with_kwargs=True))
    try:
        yield teacher
    finally:
        for h in handles:
            h.remove()


def _states(model, batches, max_batches: int | None = None):
    """``(hidden states, frame_lengths)`` of ``model`` on each batch of audio (batches of bad files skipped)."""
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    for n, batch in enumerate(batches):
        if max_batches is not None and n >= max_batches:
            break
        if batch.get("wav") is not None:
            yield model(batch["wav"].to(device), batch["lengths"].to(device))


@torch.no_grad()
def block_influence(model, batches, max_batches: int | None = None) -> list[float]:
    """``BI_i = 1 - mean cos(h_{i-1}, h_i)`` over valid frames, for layers i = 1..L."""
    sums, frames = None, 0
    for states, frame_lengths in _states(model, batches, max_batches):
        mask = lengths_to_mask(frame_lengths, states[0].shape[1])
        cos = torch.stack([torch.nn.functional.cosine_similarity(states[i - 1], states[i], dim=-1)[mask]
                           for i in range(1, len(states))])
        sums = cos.sum(1).cpu() if sums is None else sums + cos.sum(1).cpu()
        frames += int(mask.sum())
    if sums is None:
        raise ValueError("no audio to measure block influence on")
    return (1.0 - sums / frames).tolist()


@torch.no_grad()
def knn_block_influence(model, batches, k: int = 8, max_batches: int | None = None) -> list[float]:
    """``BI_i = 1 - mutual_knn(h_{i-1}, h_i)`` for layers i = 1..L, on utterance vectors (mean over valid frames).

    The redundancy paper's kNN block influence (k = 8): the fraction of shared nearest
    neighbours between a layer's input and output, over the utterances of ``batches``.
    """
    from distill.analysis.similarity import mutual_knn

    pooled: list[list[torch.Tensor]] = []
    for states, frame_lengths in _states(model, batches, max_batches):
        if not pooled:
            pooled = [[] for _ in states]
        for i, s in enumerate(states):
            pooled[i].append(masked_mean(s.float(), frame_lengths).cpu())
    if not pooled:
        raise ValueError("no audio to measure kNN block influence on")
    vectors = [torch.cat(p) for p in pooled]
    if vectors[0].shape[0] <= k:
        raise ValueError(f"kNN block influence with k = {k} needs more than {k} utterances, got {vectors[0].shape[0]}")
    return [1.0 - mutual_knn(vectors[i - 1], vectors[i], k) for i in range(1, len(vectors))]


def removal_order(name: str, num_layers: int, influence: list[float] | None = None,
                  similarity=None, blocks: BlockStructure | None = None,
                  knn_influence: list[float] | None = None) -> list[int]:
    """All layers 1..L in the order ``name`` removes them."""
    layers = list(range(1, num_layers + 1))
    if name == "last":
        return layers[::-1]
    if name == "first":
        return layers
    if name == "block_influence":
        if influence is None or len(influence) != num_layers:
            raise ValueError("block_influence ordering needs one influence value per layer")
        return sorted(layers, key=lambda i: (influence[i - 1], i))
    if name == "knn_block_influence":
        if knn_influence is None or len(knn_influence) != num_layers:
            raise ValueError("knn_block_influence ordering needs one kNN influence value per layer")
        return sorted(layers[1:], key=lambda i: (knn_influence[i - 1], i)) + [1]
    if name == "similarity_block":
        if similarity is None or blocks is None:
            raise ValueError("similarity_block ordering needs a similarity matrix and its blocks")
        s = np.asarray(similarity)
        boundaries = {last for _, last in blocks.blocks}
        inside = [i for i in layers if i not in boundaries]
        by_similarity = lambda i: (-s[i - 1, i], i)  # noqa: E731
        return sorted(inside, key=by_similarity) + sorted([i for i in layers if i in boundaries], key=by_similarity)
    raise ValueError(f"unknown ordering {name!r}; known: {ORDERINGS}")
