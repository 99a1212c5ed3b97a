"""Read CTranslate2 Whisper models (``model.bin``) without CTranslate2 installed.

Format (version 6, little-endian): ``u32 version``, string spec name, ``u32 revision``,
``u32 n_vars``; each variable: name string, ``u8 rank``, ``rank x u32`` dims, ``u8 dtype``,
``u32 nbytes``, raw data; then ``u32 n_aliases`` and (alias, target) string pairs. A string is
``u16 length`` (counting a trailing NUL) then the bytes and the NUL. The whole file is consumed.

:func:`whisper_state_dict` maps the variables to Hugging Face ``WhisperModel`` names
(``encoder.*``, optionally ``decoder.*``) and :func:`whisper_config` builds the matching
``WhisperConfig`` from the tensor shapes.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import torch

# dtype codes of the format -> numpy dtype (None: not a plain float/int array we can map)
_DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16, 5: None}


class _Reader:
    def __init__(self, data: bytes, path: Path):
        self.data, self.pos, self.path = data, 0, path

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise ValueError(f"{self.path}: truncated CTranslate2 model (need {n} bytes at offset {self.pos})")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def u8(self) -> int:
        return self.take(1)[0]

    def u16(self) -> int:
        return struct.unpack("<H", self.take(2))[0]

    def u32(self) -> int:
        return struct.unpack("<I", self.take(4))[0]

    def string(self) -> str:
        n = self.u16()
        raw = self.take(n)
        if not raw.endswith(b"\0"):
            raise ValueError(f"{self.path}: malformed string at offset {self.pos - n}")
        return raw[:-1].decode("utf-8")


def read_ct2_model(path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """Read every variable of a CTranslate2 ``model.bin`` (or its folder).

    Returns ``(variables, meta)``: tensors in their stored dtype (bfloat16 kept as bfloat16),
    aliases resolved; ``meta`` holds ``version``, ``spec``, ``revision`` and the folder's
    ``config.json`` (if any) under ``"config"``.
    """
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    if path.is_dir():
        path = path / "model.bin"
    if not path.is_file():
        raise ValueError(f"CTranslate2 model file not found: {path}")
    r = _Reader(path.read_bytes(), path)
    version = r.u32()
    if version < 5:
        raise ValueError(f"{path}: CTranslate2 format version {version} is not supported (need >= 5)")
    spec = r.string()
    revision = r.u32()
    variables: dict[str, torch.Tensor] = {}
    for _ in range(r.u32()):
        name = r.string()
        rank = r.u8()
        shape = [r.u32() for _ in range(rank)]
        code = r.u8()
        nbytes = r.u32()
        raw = r.take(nbytes)
        if code == 5:  # bfloat16: reinterpret the 16-bit words
            t = torch.from_numpy(np.frombuffer(raw, dtype=np.int16).copy()).view(torch.bfloat16)
        elif code in _DTYPES:
            t = torch.from_numpy(np.frombuffer(raw, dtype=_DTYPES[code]).copy())
        else:
            raise ValueError(f"{path}: variable {name!r} has unknown dtype code {code}")
        expected = int(np.prod(shape)) if shape else 1
        if t.numel() != expected:
            raise ValueError(f"{path}: variable {name!r} holds {t.numel()} values, shape {shape} needs {expected}")
        variables[name] = t.reshape(shape)
    for _ in range(r.u32()):
        alias, target = r.string(), r.string()
        variables[alias] = variables[target]
    if r.pos != len(r.data):
        raise ValueError(f"{path}: {len(r.data) - r.pos} trailing bytes after the model")
    config_file = folder / "config.json"
    config = json.loads(config_file.read_text()) if config_file.is_file() else {}
    return variables, {"version": version, "spec": spec, "revision": revision, "config": config}


def _float(t: torch.Tensor, name: str) -> torch.Tensor:
    if not t.is_floating_point():
        raise ValueError(
            f"variable {name!r} is quantized ({t.dtype}); convert the model with "
            "--quantization float16 or float32 to use it as a teacher"
        )
    return t


def _split_fused(sd: dict, prefix: str, w: torch.Tensor, b: torch.Tensor, names: tuple[str, ...], where: str) -> None:
    """Split a fused projection (rows stacked in ``names`` order); ``k_proj`` has no bias in Whisper."""
    d = w.shape[1]
    if w.shape[0] != len(names) * d:
        raise ValueError(f"{where}: fused weight has shape {tuple(w.shape)}, expected ({len(names) * d}, {d})")
    for name, w_part, b_part in zip(names, w.split(d, dim=0), b.split(d, dim=0)):
        sd[f"{prefix}.{name}.weight"] = w_part
        if name != "k_proj":
            sd[f"{prefix}.{name}.bias"] = b_part


def _layer_common(sd: dict, put, ct: str, hf: str) -> None:
    put(f"{hf}.self_attn.out_proj.weight", f"{ct}/self_attention/linear_1/weight")
    put(f"{hf}.self_attn.out_proj.bias", f"{ct}/self_attention/linear_1/bias")
    put(f"{hf}.self_attn_layer_norm.weight", f"{ct}/self_attention/layer_norm/gamma")
    put(f"{hf}.self_attn_layer_norm.bias", f"{ct}/self_attention/layer_norm/beta")
    put(f"{hf}.fc1.weight", f"{ct}/ffn/linear_0/weight")
    put(f"{hf}.fc1.bias", f"{ct}/ffn/linear_0/bias")
    put(f"{hf}.fc2.weight", f"{ct}/ffn/linear_1/weight")
    put(f"{hf}.fc2.bias", f"{ct}/ffn/linear_1/bias")
    put(f"{hf}.final_layer_norm.weight", f"{ct}/ffn/layer_norm/gamma")
    put(f"{hf}.final_layer_norm.bias", f"{ct}/ffn/layer_norm/beta")


def whisper_state_dict(variables: dict[str, torch.Tensor], decoder: bool = False) -> dict[str, torch.Tensor]:
    """Map CTranslate2 Whisper variables to Hugging Face ``WhisperModel`` names (``encoder.*``, and
    with ``decoder=True`` also ``decoder.*``)."""
    sd: dict[str, torch.Tensor] = {}

    def get(ct: str) -> torch.Tensor:
        if ct not in variables:
            raise ValueError(f"CTranslate2 Whisper model lacks variable {ct!r}")
        return _float(variables[ct], ct)

    def put(hf: str, ct: str) -> None:
        sd[hf] = get(ct)

    for conv in ("conv1", "conv2"):
        put(f"encoder.{conv}.weight", f"encoder/{conv}/weight")
        put(f"encoder.{conv}.bias", f"encoder/{conv}/bias")
    put("encoder.embed_positions.weight", "encoder/position_encodings/encodings")
    put("encoder.layer_norm.weight", "encoder/layer_norm/gamma")
    put("encoder.layer_norm.bias", "encoder/layer_norm/beta")
    for i in range(num_encoder_layers(variables)):
        ct, hf = f"encoder/layer_{i}", f"encoder.layers.{i}"
        _split_fused(sd, f"{hf}.self_attn", get(f"{ct}/self_attention/linear_0/weight"),
                     get(f"{ct}/self_attention/linear_0/bias"), ("q_proj", "k_proj", "v_proj"), ct)
        _layer_common(sd, put, ct, hf)
    if not decoder:
        return sd
    put("decoder.embed_tokens.weight", "decoder/embeddings/weight")
    put("decoder.embed_positions.weight", "decoder/position_encodings/encodings")
    put("decoder.layer_norm.weight", "decoder/layer_norm/gamma")
    put("decoder.layer_norm.bias", "decoder/layer_norm/beta")
    i = 0
    while f"decoder/layer_{i}/ffn/linear_0/weight" in variables:
        ct, hf = f"decoder/layer_{i}", f"decoder.layers.{i}"
        _split_fused(sd, f"{hf}.self_attn", get(f"{ct}/self_attention/linear_0/weight"),
                     get(f"{ct}/self_attention/linear_0/bias"), ("q_proj", "k_proj", "v_proj"), ct)
        _layer_common(sd, put, ct, hf)
        put(f"{hf}.encoder_attn.q_proj.weight", f"{ct}/attention/linear_0/weight")
        put(f"{hf}.encoder_attn.q_proj.bias", f"{ct}/attention/linear_0/bias")
        _split_fused(sd, f"{hf}.encoder_attn", get(f"{ct}/attention/linear_1/weight"),
                     get(f"{ct}/attention/linear_1/bias"), ("k_proj", "v_proj"), ct)
        put(f"{hf}.encoder_attn.out_proj.weight", f"{ct}/attention/linear_2/weight")
        put(f"{hf}.encoder_attn.out_proj.bias", f"{ct}/attention/linear_2/bias")
        put(f"{hf}.encoder_attn_layer_norm.weight", f"{ct}/attention/layer_norm/gamma")
        put(f"{hf}.encoder_attn_layer_norm.bias", f"{ct}/attention/layer_norm/beta")
        i += 1
    return sd


def num_encoder_layers(variables: dict) -> int:
    n = 0
    while f"encoder/layer_{n}/ffn/linear_0/weight" in variables:
        n += 1
    if n == 0:
        raise ValueError("no encoder layers found: is this a CTranslate2 Whisper model?")
    return n


def whisper_config(variables: dict[str, torch.Tensor]):
    """A ``WhisperConfig`` whose encoder matches the stored tensors."""
    from transformers import WhisperConfig

    d_model = variables["encoder/conv1/weight"].shape[0]
    n_mels = variables["encoder/conv1/weight"].shape[1]
    ffn = variables["encoder/layer_0/ffn/linear_0/weight"].shape[0]
    heads = variables.get("encoder/num_heads")
    heads = int(heads.item()) if heads is not None else max(1, d_model // 64)
    n_layers = num_encoder_layers(variables)
    n_pos = variables["encoder/position_encodings/encodings"].shape[0]
    vocab = variables["decoder/embeddings/weight"].shape[0] if "decoder/embeddings/weight" in variables else 51865
    n_dec = 0
    while f"decoder/layer_{n_dec}/ffn/linear_0/weight" in variables:
        n_dec += 1
    dec_heads = variables.get("decoder/num_heads")
    dec_heads = int(dec_heads.item()) if dec_heads is not None else heads
    dec_ffn = variables["decoder/layer_0/ffn/linear_0/weight"].shape[0] if n_dec else ffn
    dec_pos = variables["decoder/position_encodings/encodings"].shape[0] if n_dec else 448
    return WhisperConfig(
        vocab_size=vocab, num_mel_bins=n_mels, d_model=d_model,
        encoder_layers=n_layers, decoder_layers=n_dec or n_layers,
        encoder_attention_heads=heads, decoder_attention_heads=dec_heads,
        encoder_ffn_dim=ffn, decoder_ffn_dim=dec_ffn,
        max_source_positions=n_pos, max_target_positions=dec_pos,
    )


def load_hf_whisper(folder, cls=None):
    """A full Hugging Face Whisper model (encoder and decoder, float32) from a CTranslate2 folder.

    ``cls`` defaults to ``WhisperModel``; pass ``WhisperForConditionalGeneration`` to decode
    (its output projection is tied to the token embeddings, as CTranslate2 stores them).
    """
    from transformers import WhisperModel

    cls = cls or WhisperModel
    variables, _ = read_ct2_model(folder)
    model = cls(whisper_config(variables))
    prefix = "model." if hasattr(model, "model") else ""
    sd = {prefix + k: v.float() for k, v in whisper_state_dict(variables, decoder=True).items()}
    missing, unexpected = model.load_state_dict(sd, strict=False)
    missing = [k for k in missing if k != "proj_out.weight"]  # tied to decoder.embed_tokens
    if missing or unexpected:
        raise ValueError(f"{folder}: CTranslate2 weights do not fit {cls.__name__} "
                         f"(missing {missing}, unexpected {unexpected})")
    return model.eval()
