"""Pruning without post-training: shallower models made by dropping transformer layers.

Layers are numbered 1..L (hidden state i is the output of layer i). :func:`prune` returns a
real shallower copy of a teacher (layers removed from the module list, config updated) that is
used like any teacher; :func:`save_pruned` writes it as a Hugging Face folder of the same model
type, so it loads wherever that type loads (and through ``load_teacher`` / the s3prl adapter).

Orderings (which layer goes next), after the redundancy paper (Dorszewski et al. 2025):

* ``last``: drop the last layers first; ``first``: drop the first layers first;
* ``block_influence``: ShortGPT's ``BI_i = 1 - cos(h_{i-1}, h_i)`` over valid frames, lowest first;
* ``similarity_block``: layers inside a block of mutually similar hidden states go first (the
  most similar to their input first), keeping each block's last layer, its boundary; then the
  boundaries, again most similar first.
"""

from __future__ import annotations

import contextlib
import copy
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .blocks import BlockStructure
from .frontends import lengths_to_mask
from .fsutil import atomic_dir

ORDERINGS = ("last", "first", "block_influence", "similarity_block")


def _check_layers(remove, num_layers: int) -> list[int]:
    remove = sorted(set(int(i) for i in remove))
    if any(not 1 <= i <= num_layers for i in remove):
        raise ValueError(f"layers to remove must lie in 1..{num_layers}, got {remove}")
    if len(remove) >= num_layers:
        raise ValueError(f"cannot remove all {num_layers} layers")
    return remove


def _delete_layers(layers: nn.ModuleList, remove: list[int], arch: str) -> None:
    """Delete 1-based ``remove`` from ``layers`` in place (shared with the full HF model)."""
    first = layers[0]
    for i in sorted(remove, reverse=True):
        del layers[i - 1]
    if arch == "wavlm" and 1 in remove:
        # WavLM computes its relative position bias in the first layer only: hand it on
        new_first = layers[0].attention
        new_first.rel_attn_embed = first.attention.rel_attn_embed
        new_first.has_relative_position_bias = True


def _set_num_layers(config, n: int) -> None:
    if config.model_type == "whisper":
        config.encoder_layers = n  # WhisperConfig mirrors it in num_hidden_layers
    config.num_hidden_layers = n


def prune(teacher, remove) -> nn.Module:
    """A copy of ``teacher`` without the layers ``remove`` (1-based); the original is untouched."""
    remove = _check_layers(remove, teacher.num_layers)
    pruned = copy.deepcopy(teacher)
    _delete_layers(pruned.stack.layers, remove, teacher.arch)
    if pruned.config is not None:
        _set_num_layers(pruned.config, len(pruned.stack.layers))
    kept = [i for i in range(1, teacher.num_layers + 1) if i not in remove]
    pruned.name = f"{teacher.name} without layers {remove}" if remove else teacher.name
    pruned.pruned_from = {"model": teacher.name, "removed": remove, "kept": kept}
    return pruned


def save_pruned(pruned, out: str | Path) -> Path:
    """Write a pruned teacher as a Hugging Face folder of its own model type (atomically)."""
    removed = getattr(pruned, "pruned_from", {}).get("removed", [])
    hf = pruned.hf_model
    if hf is None and pruned.ct2_folder:
        from .ct2 import load_hf_whisper

        hf = load_hf_whisper(pruned.ct2_folder)  # full model, decoder included, then the same cut
        _delete_layers(hf.encoder.layers, removed, "whisper")
        _set_num_layers(hf.config, len(hf.encoder.layers))
    if hf is None:
        raise ValueError(f"{pruned.name}: only Hugging Face and CTranslate2 teachers can be saved as folders")
    out = Path(out)
    with atomic_dir(out) as tmp:
        hf.save_pretrained(tmp, safe_serialization=True)
    return out


@contextlib.contextmanager
def skip_layers(teacher, skip):
    """Run ``teacher`` with layers ``skip`` (1-based) turned into identities (forward hooks)."""
    handles = []
    for i in _check_layers(skip, teacher.num_layers):
        def hook(module, args, kwargs, output):
            hidden = args[0] if args else kwargs["hidden_states"]
            return (hidden,) + tuple(output[1:]) if isinstance(output, tuple) else hidden
        handles.append(teacher.stack.layers[i - 1].register_forward_hook(hook, with_kwargs=True))
    try:
        yield teacher
    finally:
        for h in handles:
            h.remove()


@torch.no_grad()
def block_influence(model, batches, max_batches: int | None = None) -> list[float]:
    """``BI_i = 1 - mean cos(h_{i-1}, h_i)`` over valid frames, for layers i = 1..L."""
    sums, frames = None, 0
    for n, batch in enumerate(batches):
        if max_batches is not None and n >= max_batches:
            break
        if batch.get("wav") is None:
            continue
        states, frame_lengths = model(batch["wav"], batch["lengths"])
        mask = lengths_to_mask(frame_lengths, states[0].shape[1])
        cos = torch.stack([torch.nn.functional.cosine_similarity(states[i - 1], states[i], dim=-1)[mask]
                           for i in range(1, len(states))])
        sums = cos.sum(1) if sums is None else sums + cos.sum(1)
        frames += int(mask.sum())
    if sums is None:
        raise ValueError("no audio to measure block influence on")
    return (1.0 - sums / frames).tolist()


def removal_order(name: str, num_layers: int, influence: list[float] | None = None,
                  similarity=None, blocks: BlockStructure | None = None) -> list[int]:
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
    if name == "similarity_block":
        if similarity is None or blocks is None:
            raise ValueError("similarity_block ordering needs a similarity matrix and its blocks")
        s = np.asarray(similarity)
        boundaries = {last for _, last in blocks.blocks}
        inside = [i for i in layers if i not in boundaries]
        by_similarity = lambda i: (-s[i - 1, i], i)  # noqa: E731
        return sorted(inside, key=by_similarity) + sorted([i for i in layers if i in boundaries], key=by_similarity)
    raise ValueError(f"unknown ordering {name!r}; known: {ORDERINGS}")
