"""What every stackdistill student shares: a teacher's frontend + its own stack, called like a teacher.

A student subclass sets ``config_class`` and builds ``self.stack`` (a module mapping
``(features, frame_lengths)`` to a list of hidden states whose index 0 is the features).
The frontend is rebuilt from ``config.frontend_arch`` + ``config.frontend_config`` alone, so
``save_pretrained`` / ``AutoModel.from_pretrained`` need nothing but the saved folder.
"""

from __future__ import annotations

import torch
from transformers import PretrainedConfig, PreTrainedModel

from distill.frontends import build_frontend, check_wav_batch
from distill.teacher import ModelInfo, autocast_for, count_params


class StudentConfig(PretrainedConfig):
    """Fields every student config has; subclasses add their own."""

    def __init__(self, frontend_arch: str = "whisper", frontend_config: dict | None = None,
                 teacher_name: str = "", teacher_num_layers: int = 0, target_layers: list[int] | None = None,
                 **kwargs):
        self.frontend_arch = frontend_arch
        self.frontend_config = frontend_config or {}
        self.teacher_name = teacher_name
        self.teacher_num_layers = teacher_num_layers
        self.target_layers = list(target_layers or [])
        super().__init__(**kwargs)


class StudentModel(PreTrainedModel):
    """``student(wav, lengths) -> (hidden_states, frame_lengths)``, exactly like a teacher."""

    main_input_name = "wav"
    base_model_prefix = "student"
    forward_dtype = None

    def __init__(self, config: StudentConfig):
        super().__init__(config)
        if not config.frontend_config:
            raise ValueError("student config lacks frontend_config (build students with from_teacher)")
        self.frontend = build_frontend(config.frontend_arch, config.frontend_config)

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
    def info(self) -> ModelInfo:
        return ModelInfo(self.name, self.arch, self.num_layers, self.frontend.output_dim, self.frontend.hop,
                         count_params(self.frontend), count_params(self.stack))

    def freeze_frontend(self, frozen: bool = True) -> None:
        self.frontend.requires_grad_(not frozen)
        positions = getattr(self.frontend, "embed_positions", None)
        if positions is not None:  # Whisper's sinusoid table is fixed, never trained
            positions.requires_grad_(False)

    def forward(self, wav: torch.Tensor, lengths: torch.Tensor | None = None):
        """``wav (batch, samples)`` -> (list of ``(batch, frames, dim)``, ``frame_lengths (batch,)``)."""
        lengths = check_wav_batch(wav, lengths)
        with autocast_for(self.forward_dtype, wav.device):
            feats, frame_lengths = self.frontend(wav, lengths)
            states = self.stack(feats, frame_lengths)
        return [s.float() for s in states], frame_lengths

    def as_teacher(self) -> "StudentModel":
        """Freeze for use wherever a teacher is expected (analysis, evaluation, as a teacher)."""
        self.requires_grad_(False)
        self.eval()
        return self

    def load_frontend_from(self, teacher) -> None:
        """Copy the teacher's frontend weights (shapes must match: same architecture config)."""
        self.frontend.load_state_dict(teacher.frontend.state_dict())
