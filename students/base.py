"""What every stackdistill student shares: a frontend + its own stack, called like a teacher.

A student kind is a :class:`StudentModel` subclass with

* ``kind`` (the name ``--student.kind`` selects), ``config_class`` (its ``PretrainedConfig``)
  and ``options_class`` (a dataclass: its typed section of the distillation config);
* ``build_parts(config) -> (frontend, stack)``: ``stack(features (batch, frames, dim),
  frame_lengths (batch,), **step_kwargs)`` returns the stack outputs, a list whose first
  ``num_layers + 1`` entries are the hidden states (a kind may append training-only outputs,
  e.g. prediction heads);
* ``from_teacher(teacher, options, context) -> student``: the initial student;
* ``distill_pairs(outputs, targets, **step_kwargs) -> [(label, prediction, target), ...]``: which
  output regresses which teacher state (``targets``: :class:`distill.core.protocol.TeacherTargets`);
* ``describe()`` and ``card_rows()``: the text that reports and model cards show.

It implements the model protocol of :mod:`distill.core.protocol` (forward, features_and_states, info,
num_layers, frontend, final_norm, name, without_layers, save_pretrained), so a student is
accepted wherever a teacher is. ``save_pretrained`` / ``AutoModel.from_pretrained`` need
nothing but the saved folder (the frontend is rebuilt from the config).
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel

from distill.core.protocol import ModelInfo, TeacherTargets, autocast_for, check_wav_batch, count_params, require_finite


class StudentConfig(PretrainedConfig):
    """Fields every student config has; subclasses add their own.

    Args:
        frontend_arch: architecture of the frontend (``whisper``, ``hubert``, ...).
        frontend_config: the Hugging Face config dict the frontend is rebuilt from.
        teacher_name: the teacher the student was distilled from (provenance).
        teacher_num_layers: that teacher's depth.
        target_layers: teacher layer each student layer regresses (1-based), as trained.
    """

    def __init__(self, frontend_arch: str = "whisper", frontend_config: dict | None = None,
                 teacher_name: str = "", teacher_num_layers: int = 0, target_layers: list[int] | None = None,
                 **kwargs):
        self.frontend_arch = frontend_arch
        self.frontend_config = frontend_config or {}
        self.teacher_name = teacher_name
        self.teacher_num_layers = teacher_num_layers
        self.target_layers = list(target_layers or [])
        super().__init__(**kwargs)


class BuildContext:
    """What a student kind may use to build its initial model beyond the teacher.

    ``data``: the training audio sources (a pruned student ranks layers on them); ``seed``.
    """

    def __init__(self, data: list[str] | None = None, seed: int = 0):
        self.data = list(data or [])
        self.seed = seed


class StudentModel(PreTrainedModel):
    """``student(wav, lengths) -> (hidden_states, frame_lengths)``, exactly like a teacher."""

    kind: ClassVar[str] = ""
    options_class: ClassVar[type] = type(None)
    default_loss: ClassVar[str] = "mse"
    main_input_name = "wav"
    base_model_prefix = "student"
    forward_dtype = None

    def __init__(self, config: StudentConfig):
        super().__init__(config)
        if not config.frontend_config:
            raise ValueError(f"{type(self).__name__} config lacks frontend_config (build students with from_teacher)")
        self.frontend, self.stack = self.build_parts(config)
        self.post_init()

    # -- what a kind supplies --------------------------------------------------------------------

    def build_parts(self, config) -> tuple[nn.Module, nn.Module]:
        raise NotImplementedError

    @classmethod
    def from_teacher(cls, teacher, options, context: BuildContext) -> "StudentModel":
        raise NotImplementedError

    def distill_pairs(self, outputs: list[torch.Tensor], targets: TeacherTargets, **step_kwargs):
        """Default: stack output k regresses teacher layer ``config.target_layers[k - 1]``."""
        layers = self.config.target_layers
        if len(outputs) < len(layers) + 1:
            raise ValueError(f"student returned {len(outputs)} states for {len(layers)} targets")
        return [(f"layer{m}", outputs[k], targets.layer(m)) for k, m in enumerate(layers, start=1)]

    def extra_loss(self, outputs: list[torch.Tensor], **step_kwargs) -> tuple[torch.Tensor, dict] | None:
        """A term the kind adds to the distillation loss in training (``(tensor, log figures)``), or ``None``."""
        return None

    @classmethod
    def stages(cls, options, out, train) -> list[tuple]:
        """The runs that train this kind: ``[(run folder, option changes, train changes), ...]``.

        Default: one run in ``out``. A kind trained in phases (the structured kind: prune, then
        distil the sliced model) lists each; a later one reads what an earlier one saved.
        """
        return [(out, {}, {})]

    def required_teacher_layers(self) -> list[int]:
        """Every teacher layer :meth:`distill_pairs` may read: what a target cache must hold."""
        return sorted(set(self.config.target_layers))

    def step_kwargs(self, step: int) -> dict:
        """Keyword arguments of the stack for training step ``step`` (e.g. a sampled depth)."""
        return {}

    def valid_kwargs(self) -> dict:
        """Keyword arguments of the stack for validation (deterministic: e.g. the full depth)."""
        return {}

    def resolved_options(self, options):
        """``options`` with every choice made while building filled in, so they rebuild this student."""
        return options

    def describe(self) -> str:
        return f"{self.kind} student of {self.config.teacher_name}"

    def card_rows(self) -> dict[str, str]:
        return {"student kind": self.kind, "target layers": str(self.config.target_layers)}

    def report_fields(self) -> dict:
        """Kind-specific facts for the pipeline report (JSON-serialisable)."""
        return {"kind": self.kind, "target_layers": list(self.config.target_layers)}

    # -- the model protocol -----------------------------------------------------------------------

    def _init_weights(self, module):  # modules initialise themselves in __init__
        pass

    @property
    def name(self) -> str:
        return getattr(self, "_name", None) or self.config.name_or_path or self.config.model_type

    @name.setter
    def name(self, value: str) -> None:
        self._name = value

    @property
    def arch(self) -> str:
        return self.config.model_type

    @property
    def num_layers(self) -> int:
        return len(self.stack.layers)

    @property
    def final_norm(self) -> nn.Module | None:
        return None

    @property
    def info(self) -> ModelInfo:
        return ModelInfo(self.name, self.arch, self.num_layers, self.frontend.output_dim, self.frontend.hop,
                         count_params(self.frontend), count_params(self.stack))

    def freeze_frontend(self, frozen: bool = True) -> None:
        self.frontend.requires_grad_(not frozen)
        positions = getattr(self.frontend, "embed_positions", None)
        if positions is not None:  # Whisper's sinusoid table is fixed, never trained
            positions.requires_grad_(False)

    def states_from_outputs(self, outputs: list[torch.Tensor]) -> list[torch.Tensor]:
        """The hidden states among the stack outputs (training-only extras dropped)."""
        return outputs[: self.num_layers + 1]

    def features_and_states(self, wav: torch.Tensor, lengths: torch.Tensor | None = None):
        """``(features (batch, frames, dim), hidden states, frame_lengths (batch,))``."""
        lengths = check_wav_batch(wav, lengths)
        with autocast_for(self.forward_dtype, wav.device):
            feats, frame_lengths = self.frontend(wav, lengths)
            states = self.states_from_outputs(self.stack(feats, frame_lengths))
        return feats.float(), [s.float() for s in states], frame_lengths

    def forward(self, wav: torch.Tensor, lengths: torch.Tensor | None = None):
        """``wav (batch, samples)`` -> (list of ``(batch, frames, dim)``, ``frame_lengths (batch,)``)."""
        _, states, frame_lengths = self.features_and_states(wav, lengths)
        return states, frame_lengths

    def save_pretrained(self, save_directory, *args, **kwargs):
        """Hugging Face's ``save_pretrained``; refuses NaN or infinite weights, naming the tensor (nothing written)."""
        require_finite(self, f"saving {save_directory}")
        return super().save_pretrained(save_directory, *args, **kwargs)

    def as_teacher(self) -> "StudentModel":
        """Freeze for use wherever a teacher is expected (analysis, evaluation, as a teacher)."""
        self.requires_grad_(False)
        self.eval()
        return self

    def without_layers(self, remove) -> "StudentModel":
        raise ValueError(f"{self.kind} students cannot drop layers")
