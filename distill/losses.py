"""Layer-to-layer distillation losses, averaged over valid frames only.

* ``mse``: mean squared error per frame (the redundancy paper's loss).
* ``l1_cos``: L1 + ``-log sigmoid(cos)`` (DistilHuBERT's loss, Chang et al. 2022).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .frontends import lengths_to_mask

LOSSES = ("mse", "l1_cos")


def layer_loss(pred: torch.Tensor, target: torch.Tensor, frame_lengths: torch.Tensor,
               kind: str = "mse") -> tuple[torch.Tensor, dict[str, float]]:
    """Loss between ``pred`` and ``target`` ``(batch, frames, dim)`` over valid frames.

    Returns ``(loss, parts)`` with ``parts`` the detached components for logging.
    """
    if pred.shape != target.shape:
        raise ValueError(f"prediction {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape")
    mask = lengths_to_mask(frame_lengths, pred.shape[1]).to(pred.dtype)
    n = mask.sum().clamp(min=1)
    if kind == "mse":
        loss = (((pred - target) ** 2).mean(-1) * mask).sum() / n
        return loss, {"mse": float(loss)}
    if kind == "l1_cos":
        l1 = ((pred - target).abs().mean(-1) * mask).sum() / n
        cos = F.cosine_similarity(pred, target, dim=-1)
        cos_term = (-F.logsigmoid(cos) * mask).sum() / n
        return l1 + cos_term, {"l1": float(l1), "cos": float((cos * mask).sum() / n)}
    raise ValueError(f"unknown loss {kind!r}; known: {LOSSES}")


def distill_loss(student_states: list[torch.Tensor], teacher_states: list[torch.Tensor],
                 target_layers: list[int], frame_lengths: torch.Tensor, kind: str = "mse"):
    """Sum over student layers k of ``layer_loss(student[k], teacher[target_layers[k-1]])``.

    ``student_states[0]`` is the shared frontend output and is not trained against anything.
    Returns ``(total, logs)`` with one entry per target layer.
    """
    if len(student_states) != len(target_layers) + 1:
        raise ValueError(f"student returned {len(student_states)} states for {len(target_layers)} targets")
    total, logs = 0.0, {}
    for k, layer in enumerate(target_layers, start=1):
        loss, parts = layer_loss(student_states[k], teacher_states[layer], frame_lengths, kind)
        total = total + loss
        logs[f"loss_layer{layer}"] = float(loss)
        for name, v in parts.items():
            logs[f"{name}_layer{layer}"] = v
    return total, logs
