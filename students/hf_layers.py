"""Students whose stack is made of the teacher's own layer type (HuBERT, wav2vec2, WavLM, ...).

The DistilHuBERT-style, shared-layer and pruned students all hold a Hugging Face backbone of
the teacher's architecture with their own number of *unique* layers, initialised by copying
teacher layers. Because the layers are the teacher's own type, such a student exports as a
plain folder of that architecture (``HubertModel``, ``Wav2Vec2Model``, ``WavLMModel``,
``Data2VecAudioModel`` or a Whisper encoder) that transformers loads on its own
(:meth:`HFLayerStudent.to_hf_model`).

Parameter names: ``frontend.*`` (CNN + projection, or Whisper's convolutions) and
``stack.*`` (a kind's wrapper around :class:`distill.core.stacks.SSLStack` / ``WhisperStack``).
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import torch
from torch import nn

from distill.core.fsutil import atomic_dir
from distill.core.protocol import check_layers_to_remove, require_finite
from distill.core.stacks import delete_layers, hf_parts, set_num_layers

from .base import StudentConfig, StudentModel

_LAYER_KEY = re.compile(r"^((?:encoder\.)?layers\.)(\d+)(\..*)$")  # transformer layers only


def arch_config(arch: str, config_dict: dict, num_layers: int):
    """The Hugging Face config of ``arch`` from a dict, with ``num_layers`` layers and no layerdrop."""
    from transformers import WhisperConfig

    from distill.core.frontends import _ssl_classes

    d = {k: v for k, v in config_dict.items() if k not in ("transformers_version",)}
    config = WhisperConfig(**d) if arch == "whisper" else _ssl_classes(arch)[0](**d)
    set_num_layers(config, num_layers)
    if hasattr(config, "layerdrop"):
        config.layerdrop = 0.0  # layers are skipped at random otherwise; s3prl requires 0 too
    if hasattr(config, "encoder_layerdrop"):
        config.encoder_layerdrop = 0.0
    return config


def build_backbone(arch: str, config_dict: dict, num_layers: int) -> nn.Module:
    """A fresh Hugging Face base model of ``arch`` (Whisper: the encoder) with ``num_layers`` layers."""
    config = arch_config(arch, config_dict, num_layers)
    if arch == "whisper":
        from transformers.models.whisper.modeling_whisper import WhisperEncoder

        model = WhisperEncoder(config)
        model.config.architectures = ["WhisperEncoder"]
        return model
    from transformers import AutoModel

    return AutoModel.from_config(config)


def remap_layers(src: dict[str, torch.Tensor], dst_keys, layer_map: list[int]) -> dict[str, torch.Tensor]:
    """State dict for ``dst_keys`` whose layer i is source layer ``layer_map[i]`` (both 0-based).

    Keys outside ``layers.N.`` are taken as they are. WavLM keeps its relative position
    embedding in its first layer only: a destination layer that needs one and whose source
    layer has none takes source layer 0's.
    """
    out = {}
    for key in dst_keys:
        m = _LAYER_KEY.match(key)
        if m is None:
            if key not in src:
                raise KeyError(key)
            out[key] = src[key]
            continue
        head, i, rest = m.group(1), int(m.group(2)), m.group(3)
        cand = f"{head}{layer_map[i]}{rest}"
        if cand not in src and "rel_attn_embed" in rest:
            cand = f"{head}0{rest}"
        if cand not in src:
            raise KeyError(cand)
        out[key] = src[cand]
    return out


def check_layer_teacher(teacher) -> None:
    """A clear error unless ``teacher``'s stack is made of Hugging Face layers of its architecture."""
    frontend = getattr(teacher, "frontend", None)
    stack = getattr(teacher, "stack", None)
    layers = getattr(stack, "layers", None)
    if frontend is None or not hasattr(frontend, "config") or layers is None or not len(layers) or \
            not type(layers[0]).__module__.startswith("transformers."):
        raise ValueError(f"teacher {teacher.name!r}: this student copies the teacher's own transformer layers, so "
                         "it needs a Hugging Face, CTranslate2 or pruned teacher (or a student made of such layers)")


def teacher_layer_stack(teacher) -> nn.Module:
    """The ``SSLStack`` / ``WhisperStack`` of a teacher or of a student made of teacher layers."""
    stack = teacher.stack
    return getattr(stack, "inner", stack)


def teacher_layer_index(teacher, m: int) -> int:
    """Index (0-based) in the teacher's layer list of the module that computes its layer ``m``.

    A shared-layer teacher applies its few layers along a schedule; a DistilHuBERT-style
    teacher with exposed heads has more states than transformer layers.
    """
    schedule = getattr(teacher.stack, "schedule", None)
    if schedule is not None:
        return schedule[m - 1]
    n = len(teacher_layer_stack(teacher).layers)
    if not 1 <= m <= n:
        raise ValueError(f"teacher {teacher.name!r}: its state {m} is not the output of one of its {n} transformer "
                         "layers (prediction heads?), so no layer can be copied from it")
    return m - 1


class HFLayerConfig(StudentConfig):
    """Config of a student made of the teacher's own layers.

    Args:
        backbone_config: the Hugging Face config dict of the teacher's architecture.
        num_unique_layers: distinct transformer layers the student holds.
        layer_sources: for each unique layer, the teacher layer (1-based) it was copied from.
    """

    def __init__(self, backbone_config: dict | None = None, num_unique_layers: int = 1,
                 layer_sources: list[int] | None = None, **kwargs):
        self.backbone_config = backbone_config or {}
        self.num_unique_layers = num_unique_layers
        self.layer_sources = list(layer_sources or [])
        super().__init__(**kwargs)


class HFLayerStudent(StudentModel):
    """Base of the students made of teacher layers; a kind wraps :attr:`inner` in its ``stack``."""

    per_layer_targets = True  # config.target_layers[k]: the target of layer k+1 (False: e.g. heads' targets)

    def build_parts(self, config: HFLayerConfig):
        backbone = build_backbone(config.frontend_arch, config.backbone_config, config.num_unique_layers)
        embed = getattr(backbone, "masked_spec_embed", None)
        if embed is not None:  # unused here, kept so exports carry the teacher's (SpecAugment fine-tuning uses it)
            self.register_buffer("masked_spec_embed", embed.detach().clone())
        _, frontend, inner = hf_parts(backbone)
        return frontend, self.wrap_stack(inner, config, frontend.output_dim)

    def wrap_stack(self, inner: nn.Module, config, dim: int) -> nn.Module:
        """The kind's ``stack`` around the backbone stack (default: the backbone stack itself)."""
        return inner

    @property
    def inner(self) -> nn.Module:
        """The :class:`~distill.core.stacks.SSLStack` / ``WhisperStack`` holding the unique layers."""
        return getattr(self.stack, "inner", self.stack)

    @property
    def final_norm(self) -> nn.Module | None:
        return self.inner.final_norm

    @classmethod
    def config_from_teacher(cls, teacher, num_unique_layers: int, layer_sources: list[int], **fields):
        check_layer_teacher(teacher)
        frontend = teacher.frontend
        return cls.config_class(
            backbone_config=frontend.config.to_dict(), num_unique_layers=num_unique_layers,
            layer_sources=list(layer_sources), frontend_arch=frontend.arch, frontend_config=frontend.config.to_dict(),
            teacher_name=teacher.name, teacher_num_layers=teacher.num_layers, **fields)

    @classmethod
    def initialised_from(cls, teacher, config: HFLayerConfig, seed: int) -> "HFLayerStudent":
        """A student of ``config`` (seeded) whose frontend and layers are copied from ``teacher``."""
        torch.manual_seed(seed)
        student = cls(config)
        student.copy_from_teacher(teacher)
        return student

    def copy_from_teacher(self, teacher) -> None:
        """Frontend and non-layer parts from ``teacher``; unique layer g from ``layer_sources[g]``."""
        self.frontend.load_state_dict(teacher.frontend.state_dict())
        src = teacher_layer_stack(teacher).state_dict()
        dst = self.inner.state_dict()
        index = [teacher_layer_index(teacher, m) for m in self.config.layer_sources]
        self.inner.load_state_dict(remap_layers(src, dst.keys(), index))
        embed = getattr(getattr(teacher, "hf_model", None), "masked_spec_embed", None)
        if embed is None:
            embed = getattr(teacher, "masked_spec_embed", None)  # a student made of teacher layers
        if embed is not None and hasattr(self, "masked_spec_embed") and embed.shape == self.masked_spec_embed.shape:
            self.masked_spec_embed.copy_(embed.detach())

    def without_layers(self, remove) -> "HFLayerStudent":
        """A copy without the 1-based transformer layers ``remove`` (model surgery, no retraining).

        Each remaining layer keeps its distillation target; the config records the new depth.
        """
        remove = check_layers_to_remove(remove, self.config.num_unique_layers)
        pruned = copy.deepcopy(self)
        delete_layers(pruned.inner.layers, remove, self.config.frontend_arch)
        keep = [k for k in range(1, self.config.num_unique_layers + 1) if k not in remove]
        c = pruned.config
        c.num_unique_layers = len(keep)
        c.layer_sources = [self.config.layer_sources[k - 1] for k in keep]
        if self.per_layer_targets:
            c.target_layers = [self.config.target_layers[k - 1] for k in keep]
        pruned.name = f"{self.name} without layers {remove}"
        return pruned

    # -- export as the teacher's own architecture ---------------------------------------------------

    def exports_plain(self) -> bool:
        """Whether :meth:`to_hf_model` can express this student (else it is exported with its code)."""
        return True

    def export_layer_map(self, depth: int | None = None) -> list[int]:
        """Unique layer (0-based) at each position of the exported model."""
        if depth is not None and depth != self.num_layers:
            raise ValueError(f"{self.kind} students have a fixed depth ({self.num_layers}); --depth is for shared students")
        return list(range(self.config.num_unique_layers))

    def to_hf_model(self, depth: int | None = None) -> nn.Module:
        """A plain Hugging Face model of the teacher's architecture equal to this student (at ``depth``)."""
        layer_map = self.export_layer_map(depth)
        model = build_backbone(self.config.frontend_arch, self.config.backbone_config, len(layer_map))
        _, frontend, inner = hf_parts(model)
        frontend.load_state_dict(self.frontend.state_dict())
        inner.load_state_dict(remap_layers(self.inner.state_dict(), inner.state_dict().keys(), layer_map))
        if hasattr(model, "masked_spec_embed") and hasattr(self, "masked_spec_embed"):
            with torch.no_grad():
                model.masked_spec_embed.copy_(self.masked_spec_embed)
        return model.eval()

    def save_standard(self, out: str | Path, depth: int | None = None, card: str | None = None) -> Path:
        """Write :meth:`to_hf_model` as a folder transformers (and stock s3prl) load without stackdistill.

        HuBERT / wav2vec2-family folders also get ``preprocessor_config.json`` (raw 16 kHz input,
        no normalisation, as the student was trained), which s3prl's ``hf_hubert_custom`` /
        ``hf_wav2vec2_custom`` upstreams read; Whisper folders get Whisper's feature extractor.
        """
        model = self.to_hf_model(depth)
        out = Path(out)
        require_finite(model, f"exporting {out}")
        with atomic_dir(out) as tmp:
            model.save_pretrained(tmp, safe_serialization=True)
            if self.config.frontend_arch == "whisper":
                from transformers import WhisperFeatureExtractor

                WhisperFeatureExtractor(feature_size=model.config.num_mel_bins).save_pretrained(tmp)
            else:
                from transformers import Wav2Vec2FeatureExtractor

                Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=16000, padding_value=0.0, do_normalize=False,
                                         return_attention_mask=True).save_pretrained(tmp)
            (tmp / "stackdistill.json").write_text(json.dumps(
                {"kind": self.kind, "teacher": self.config.teacher_name, "depth": len(self.export_layer_map(depth)),
                 "layer_sources": self.config.layer_sources}, indent=2) + "\n")
            if card:
                (tmp / "README.md").write_text(card)
        return out

    def card_rows(self) -> dict[str, str]:
        return {**super().card_rows(), "architecture": self.config.frontend_arch,
                "initialised from teacher layers": str(self.config.layer_sources)}
