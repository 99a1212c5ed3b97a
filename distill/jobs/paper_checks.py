"""Checks of the paper protocol's figures computed apart from the training loop and its scorer.

:func:`stage1_check` answers "is a stage-1 accuracy at the majority class the student or the
scoring?" (issue 17): it runs the student's stack on the stored test frontend output, takes its
last state by hand, puts it through the fine-tuned teacher's head, and compares that state with
the teacher's own last state (cosine and norm ratio over valid frames), so the figure in
``paper.json`` rests on a computation that shares nothing with :meth:`FrontendTestSet.accuracy`
but the stored features.
"""

from __future__ import annotations

from collections import Counter

import torch
import torch.nn.functional as F

from distill.core.protocol import lengths_to_mask


def _last_state(model, feats: torch.Tensor, frame_lengths: torch.Tensor) -> torch.Tensor:
    """``model``'s last hidden state ``(batch, frames, dim)`` from frontend output ``(batch, frames, dim)``."""
    kwargs = model.valid_kwargs() if hasattr(model, "valid_kwargs") else {}
    outputs = model.stack(feats, frame_lengths, **kwargs)
    states = model.states_from_outputs(outputs) if hasattr(model, "states_from_outputs") else outputs
    return states[-1]


@torch.no_grad()
def stage1_check(teacher, student, test_set) -> dict:
    """The student's last state through ``teacher.head`` on ``test_set``'s stored frontend output.

    Returns ``accuracy`` (computed here), ``cosine`` and ``norm_ratio`` (student against teacher
    last state, mean over valid frames), ``majority_share`` (share of the test clips given the most
    predicted label) and that ``majority_label``.
    """
    teacher.eval(), student.eval()
    index = {label: i for i, label in enumerate(teacher.labels)}
    right = n = 0
    cos_sum = ratio_sum = frames = 0.0
    predicted: Counter = Counter()
    for feats, frame_lengths, labels, _ in test_set.batches:
        t_last = _last_state(teacher, feats, frame_lengths)
        s_last = _last_state(student, feats, frame_lengths)
        if s_last.shape != t_last.shape:
            raise ValueError(f"student states {tuple(s_last.shape)} do not match the teacher's {tuple(t_last.shape)}")
        mask = lengths_to_mask(frame_lengths, feats.shape[1])
        t_valid, s_valid = t_last[mask], s_last[mask]
        cos_sum += float(F.cosine_similarity(s_valid, t_valid, dim=-1).sum())
        ratio_sum += float((s_valid.norm(dim=-1) / t_valid.norm(dim=-1).clamp(min=1e-12)).sum())
        frames += int(mask.sum())
        guess = teacher.head(s_last, frame_lengths).argmax(-1).tolist()
        predicted.update(guess)
        right += sum(g == index[label] for g, label in zip(guess, labels))
        n += len(labels)
    top, count = predicted.most_common(1)[0]
    return {"accuracy": right / max(n, 1), "n": n, "cosine": cos_sum / max(frames, 1),
            "norm_ratio": ratio_sum / max(frames, 1), "majority_label": teacher.labels[top],
            "majority_share": count / max(n, 1)}
