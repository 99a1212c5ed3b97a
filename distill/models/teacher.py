"""The frozen teacher: a pretrained speech model as frontend + stack of L layers.

``teacher(wav, lengths) -> (hidden_states, frame_lengths)``: ``wav (batch, samples)`` at 16 kHz,
``lengths (batch,)`` valid samples; ``hidden_states`` is a list of L+1 tensors
``(batch, frames, dim)`` (index 0 the stack input, index i the output of layer i) and
``frame_lengths (batch,)`` the valid frames of each utterance.

:func:`load_teacher` accepts

* a Hugging Face hub id or local folder of a Wav2Vec2, HuBERT, WavLM, Data2VecAudio or Whisper
  model (Whisper: encoder only), e.g. ``facebook/hubert-base-ls960``;
* a stackdistill student folder, or a folder exported from one (every model kind implements the
  protocol of :mod:`distill.core.protocol`, so students are called exactly like teachers);
* ``s3prl:<upstream name>`` (any s3prl hub entry; no reusable frontend);
* ``ct2:<folder>``: a CTranslate2 Whisper model (float16/float32);
* ``whisper-tiny.en`` (the offline default, 4 x 384) or ``whisper-base`` (6 x 512): pretrained
  Whisper encoders installed from PyPI, checked by hash (:mod:`distill.models.offline_teachers`);
* a task-fine-tuned classifier folder (``HubertForSequenceClassification``, ...,
  ``WhisperForAudioClassification``): its encoder is the teacher, its head and label list come
  along as ``teacher.head`` / ``teacher.labels`` (:mod:`distill.models.classifier`).
"""

from __future__ import annotations

import copy
import functools
import os
import re
from pathlib import Path

import torch
from torch import nn

from distill.core.protocol import ModelInfo, autocast_for, check_layers_to_remove, check_wav_batch, count_params
from distill.core.stacks import delete_layers, hf_parts, set_num_layers
from distill.models.offline_teachers import OFFLINE_TEACHERS, offline_teacher_folder

OFFLINE_DEFAULT = "whisper-tiny.en"
HUB_CHECK_TIMEOUT = 5.0  # seconds for the one request that tells whether the hub answers
OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
# names a spec ends with when it means a file, never a hub repository
FILE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".safetensors", ".onnx", ".json", ".yaml", ".yml", ".tsv")
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


class Teacher(nn.Module):
    """A frozen model = ``frontend`` + ``stack``; implements :class:`distill.core.protocol.SpeechModel`."""

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
        self.pruned_from: dict = {}
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

    @property
    def final_norm(self) -> nn.Module | None:
        return self.stack.final_norm

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
        with autocast_for(self.forward_dtype, wav.device):
            feats, frame_lengths = self.frontend(wav, lengths)
            states = self.stack(feats, frame_lengths)
        return feats.float(), [s.float() for s in states], frame_lengths

    # -- model surgery ------------------------------------------------------------------------

    def without_layers(self, remove) -> "Teacher":
        """A copy without the 1-based layers ``remove`` (no retraining); ``self`` is untouched."""
        remove = check_layers_to_remove(remove, self.num_layers)
        pruned = copy.deepcopy(self)
        delete_layers(pruned.stack.layers, remove, self.arch)
        if pruned.config is not None:
            set_num_layers(pruned.config, len(pruned.stack.layers))
        # layer numbers stay those of the original model when a pruned model is pruned again
        before = self.pruned_from.get("kept", list(range(1, self.num_layers + 1)))
        original_depth = len(before) + len(self.pruned_from.get("removed", []))
        kept = [before[i - 1] for i in range(1, self.num_layers + 1) if i not in remove]
        original = self.pruned_from.get("model", self.name)
        removed = [i for i in range(1, original_depth + 1) if i not in kept]
        pruned.name = f"{original} without layers {removed}" if removed else self.name
        pruned.pruned_from = {"model": original, "removed": removed, "kept": kept}
        return pruned

    def save_pretrained(self, out: str | Path, **_ignored) -> Path:
        """Write the model as a Hugging Face folder of its own type (pruned or not)."""
        hf = self.hf_model
        if hf is None and self.ct2_folder:
            from distill.models.ct2 import load_hf_whisper

            hf = load_hf_whisper(self.ct2_folder)  # full model, decoder included, then the same cut
            delete_layers(hf.encoder.layers, self.pruned_from.get("removed", []), "whisper")
            set_num_layers(hf.config, len(hf.encoder.layers))
        if hf is None:
            raise ValueError(f"{self.name}: only Hugging Face and CTranslate2 teachers can be saved as folders")
        hf.save_pretrained(out, safe_serialization=True)
        return Path(out)


def _from_hf_model(name: str, model) -> Teacher:
    arch, frontend, stack = hf_parts(model)
    return Teacher(name, arch, frontend, stack, model.config, hf_model=model)


# -- a spec that cannot load fails at once: a missing folder, an uncached id offline, an unreachable hub --------


def looks_like_hub_id(spec: str) -> bool:
    """``org/name``: one slash, no leading ``.``/``~``, not a file name."""
    return bool(_HUB_ID.fullmatch(spec)) and not spec.lower().endswith(FILE_SUFFIXES)


def looks_like_local_path(spec: str) -> bool:
    """A spec the user meant as a file or folder (``/x``, ``./x``, ``../x``, ``~/x``, ``a/b/c``, ``x.pt``)."""
    if spec.startswith(("/", "./", "../", "~")) or spec in (".", ".."):
        return True
    if spec.lower().endswith(FILE_SUFFIXES):
        return True
    return os.sep in spec and not looks_like_hub_id(spec)


def offline_variable() -> str | None:
    """The environment variable that puts the Hugging Face libraries offline, if one does."""
    for name in OFFLINE_VARIABLES:
        if os.environ.get(name, "").strip().upper() in ("1", "ON", "YES", "TRUE"):
            return name
    return None


def _download_advice(spec: str) -> str:
    return (f"download it where there is network (huggingface-cli download {spec} --local-dir DIR) and pass "
            "the folder instead: --teacher DIR")


def hub_cached(spec: str) -> bool:
    """Whether the local Hugging Face cache holds ``spec``'s config.json and a weights file (no network)."""
    from huggingface_hub import try_to_load_from_cache

    def cached(name: str) -> bool:
        return isinstance(try_to_load_from_cache(spec, name), str)

    return cached("config.json") and any(cached(name) for name in WEIGHT_FILES)


def check_hub_reachable(spec: str, timeout: float | None = None) -> None:
    """One request to the hub (no retries, ``timeout`` seconds): the repository exists and the hub answers."""
    _check_hub_reachable(spec, HUB_CHECK_TIMEOUT if timeout is None else timeout)


@functools.lru_cache(maxsize=None)  # a success is remembered (a failure raises, so it is asked again)
def _check_hub_reachable(spec: str, timeout: float) -> None:
    from huggingface_hub import HfApi
    from huggingface_hub.constants import ENDPOINT
    from huggingface_hub.utils import RepositoryNotFoundError

    try:
        HfApi().model_info(spec, timeout=timeout)
    except RepositoryNotFoundError:
        raise ValueError(f"{spec}: neither a local folder nor a model the hub knows (a typo, or a private or gated "
                         f"repository?); if it is private, log in or {_download_advice(spec)}") from None
    except Exception as err:  # no DNS, refused, timed out, proxy, 5xx: all mean "cannot download now"
        raise ValueError(f"{spec}: neither a local folder nor in the local Hugging Face cache, and the hub "
                         f"({ENDPOINT}) could not be reached ({_network_reason(err, timeout)}); "
                         f"{_download_advice(spec)}") from None


def _network_reason(err: Exception, timeout: float) -> str:
    """A few words on why a request to the hub failed (the library's own text is a nested repr)."""
    text = str(err)
    if "Timeout" in type(err).__name__ or "timed out" in text:
        return f"no answer within {timeout:g} s"
    if "resolve" in text or "NameResolution" in text:
        return "its host name does not resolve"
    if "Connection" in type(err).__name__:
        return "connection failed"
    first = (text.strip().splitlines() or [""])[0][:160]
    return f"{type(err).__name__}: {first}" if first else type(err).__name__


def check_hub_id(spec: str) -> None:
    """A hub id loads without a long wait: it is cached, or the hub answers one quick request.

    Offline (``HF_HUB_OFFLINE`` / ``TRANSFORMERS_OFFLINE``) an id missing from the cache fails
    at once instead of after transformers' retries.
    """
    from huggingface_hub.errors import HFValidationError

    try:
        if hub_cached(spec):
            return
    except HFValidationError:
        raise ValueError(f"{spec}: neither an existing local folder nor a valid Hugging Face hub id") from None
    variable = offline_variable()
    if variable:
        raise ValueError(f"{spec}: neither a local folder nor in the local Hugging Face cache, and offline mode is "
                         f"on ({variable}={os.environ[variable]}); {_download_advice(spec)}")
    check_hub_reachable(spec)


def check_teacher_spec(spec: str) -> None:
    """Fail fast, before any weights load, on a teacher spec that cannot load.

    A local path that does not exist is "not found" (never sent to the hub); a hub id must be
    cached or reachable (:func:`check_hub_id`); ``s3prl:`` names are left to s3prl.
    """
    spec = str(spec)
    if spec in OFFLINE_TEACHERS:
        offline_teacher_folder(spec)
        return
    if spec.startswith("ct2:"):
        if not Path(spec[4:]).expanduser().is_dir():
            raise ValueError(f"teacher folder not found: {spec[4:]}")
        return
    if spec.startswith("s3prl:"):
        return
    path = Path(spec).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise ValueError(f"{spec}: folder has no config.json (not a Hugging Face model folder)")
        return
    if looks_like_local_path(spec):
        raise ValueError(f"teacher folder not found: {spec}")
    check_hub_id(spec)


def _hub_error(spec: str, err: Exception) -> ValueError:
    """One line for a hub id that cannot be loaded: unreachable hub, unknown/gated repo, or missing files."""
    text = str(err).strip()
    reason = text.splitlines()[0][:160] if text else type(err).__name__
    fix = _download_advice(spec)
    if "not a valid model identifier" in text and "connect" not in text.lower():
        return ValueError(f"{spec}: neither a local folder nor a model the hub knows (a typo, or a private or "
                          f"gated repository?) ({reason}); if it is private, log in or {fix}")
    return ValueError(f"{spec}: neither a local folder nor in the local Hugging Face cache (not all of it), and the "
                      f"hub could not be reached ({reason}); {fix}")


def load_hf_teacher(spec: str) -> nn.Module:
    """A Hugging Face hub id or local folder (``config.json`` + weights), or a student folder."""
    from transformers import AutoConfig, AutoModel

    import students  # noqa: F401  (registers the stackdistill student kinds with AutoConfig / AutoModel)

    if Path(spec).expanduser().exists():
        spec = str(Path(spec).expanduser())
    local = Path(spec).exists()
    if local and not (Path(spec) / "config.json").is_file():
        raise ValueError(f"{spec}: folder has no config.json (not a Hugging Face model folder)")
    try:
        try:  # the local cache first: no network round trip for a model already downloaded
            config = AutoConfig.from_pretrained(spec, local_files_only=True)
        except OSError:
            if local:
                raise
            config = AutoConfig.from_pretrained(spec)
    except OSError as err:
        if local:
            raise ValueError(f"{spec}: cannot read the model folder ({err})") from None
        raise _hub_error(spec, err) from None
    try:
        from distill.models.heads import HF_CLASSIFIER_ARCHITECTURES

        if (config.architectures or [""])[0] in HF_CLASSIFIER_ARCHITECTURES:
            return _classifier_teacher(str(spec), config)
        if getattr(config, "model_type", "").startswith("stackdistill"):
            model = AutoModel.from_pretrained(spec)
            model.name = str(spec)
            return model.as_teacher()
        if config.model_type == "whisper" and (config.architectures or [""])[0] == "WhisperEncoder":
            from transformers.models.whisper.modeling_whisper import WhisperEncoder

            return _from_hf_model(str(spec), WhisperEncoder.from_pretrained(spec))
        return _from_hf_model(str(spec), AutoModel.from_pretrained(spec, config=config))
    except OSError as err:  # config cached, weights not (or a folder without weights)
        if local:
            raise ValueError(f"{spec}: cannot read the model's weights ({err})") from None
        raise _hub_error(spec, err) from None


def _classifier_teacher(spec: str, config) -> Teacher:
    """A Hugging Face audio classification folder as a teacher: its encoder, with ``head`` and ``labels``."""
    from transformers import AutoModelForAudioClassification

    from distill.models.heads import head_from_hf, labels_of

    model = AutoModelForAudioClassification.from_pretrained(spec, config=config)
    base = model.encoder if config.model_type == "whisper" else getattr(model, model.base_model_prefix)
    base.config = copy.deepcopy(config)  # saved pruned copies are plain encoders, not classifiers
    base.config.architectures = [type(base).__name__]
    teacher = _from_hf_model(spec, base)
    teacher.head = head_from_hf(model).requires_grad_(False).eval()
    teacher.labels = labels_of(config)
    return teacher


def load_ct2_whisper(folder: str | Path, name: str | None = None) -> Teacher:
    """A CTranslate2 Whisper model folder, converted to a float32 Hugging Face encoder."""
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    from distill.models.ct2 import read_ct2_model, whisper_config, whisper_state_dict

    variables, _meta = read_ct2_model(folder)
    config = whisper_config(variables)
    encoder = WhisperEncoder(config)
    sd = {k[len("encoder."):]: v.float() for k, v in whisper_state_dict(variables).items()}
    missing, unexpected = encoder.load_state_dict(sd, strict=False)
    if missing or unexpected:
        raise ValueError(f"{folder}: CTranslate2 weights do not fit WhisperEncoder "
                         f"(missing {missing}, unexpected {unexpected})")
    _, frontend, stack = hf_parts(encoder)
    return Teacher(name or f"ct2:{folder}", "whisper", frontend, stack, config, ct2_folder=str(folder))


def offline_whisper_folder(name: str = OFFLINE_DEFAULT) -> Path:
    """The checked CTranslate2 folder of an offline teacher (default: Whisper tiny.en)."""
    return offline_teacher_folder(name)


def load_teacher(spec: str, dtype: str | torch.dtype | None = None, device: str | torch.device = "cpu") -> nn.Module:
    """Build a frozen teacher from ``spec`` (see the module docstring); ``dtype`` e.g. ``"bfloat16"``.

    A spec that cannot load fails first, in seconds (:func:`check_teacher_spec`).
    """
    if isinstance(dtype, str):
        if dtype not in ("float32", "bfloat16", "float16"):
            raise ValueError(f"dtype must be float32, bfloat16 or float16, got {dtype!r}")
        dtype = getattr(torch, dtype)
    spec = str(spec)
    teacher = _build_teacher(spec)
    teacher.forward_dtype = dtype
    return teacher.to(device)


def _build_teacher(spec: str) -> nn.Module:
    if spec in OFFLINE_TEACHERS:  # its files are checked (sizes, hashes) once, as its folder is found
        return load_ct2_whisper(offline_teacher_folder(spec), name=spec)
    check_teacher_spec(spec)
    if spec.startswith("ct2:"):
        return load_ct2_whisper(spec[4:])
    if spec.startswith("s3prl:"):
        from distill.models.s3prl_teacher import S3PRLTeacher

        return S3PRLTeacher(spec[6:])
    return load_hf_teacher(spec)
