"""Reading one audio file: decode, validate, mix to mono, resample to 16 kHz.

Every failure raises :class:`AudioError` (a ``ValueError``) whose message names the file and
the reason, so callers can report and skip a bad file without stopping a long run.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as AF

from .core import SAMPLE_RATE

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".raw")
RAW_PCM_RATE = SAMPLE_RATE  # headerless .raw files are read as 16 kHz signed 16-bit mono


class AudioError(ValueError):
    """A file that cannot be used as speech input; ``str(err)`` names the file and reason."""

    def __init__(self, path: str | Path, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


# data-chunk sizes that writers streaming to a pipe put in the header: "size unknown", not a length
_STREAMED_SIZES = {0, 0xFFFFFFFF, 0x7FFFFFFF, 0x7FFFF000, 0xFFFFFFFF - 8}


def _wav_truncation(path: Path) -> str | None:
    """Why a RIFF/WAVE file is cut short (its data chunk declares more bytes than it holds), else None.

    libsndfile silently reads what is there, so a truncated WAV would pass as a shorter clip.
    """
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(12)
        if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            return None
        pos = 12
        while pos + 8 <= size:
            f.seek(pos)
            chunk = f.read(8)
            cid, n = chunk[:4], int.from_bytes(chunk[4:8], "little")
            if cid == b"data":
                have = size - pos - 8
                if n not in _STREAMED_SIZES and n > have:
                    return f"truncated: its header declares {n} bytes of audio, the file holds {have}"
                return None
            pos += 8 + n + (n & 1)
    return None


def _decode(path: Path) -> tuple[np.ndarray, int]:
    if path.suffix.lower() == ".raw":
        data = np.fromfile(path, dtype="<i2").astype(np.float32) / 32768.0
        return data[:, None], RAW_PCM_RATE
    data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    return data, rate


def audio_info(path: str | Path) -> tuple[int, int]:
    """Return ``(num_frames, sample_rate)`` from the header, without decoding samples."""
    path = Path(path)
    if not path.is_file():
        raise AudioError(path, "file not found")
    if path.suffix.lower() == ".raw":
        return path.stat().st_size // 2, RAW_PCM_RATE
    try:
        info = sf.info(str(path))
    except Exception as exc:  # soundfile raises RuntimeError / LibsndfileError
        raise AudioError(path, f"unreadable audio header ({exc})") from None
    return int(info.frames), int(info.samplerate)


def resample(wav: torch.Tensor, src_rate: int, dst_rate: int = SAMPLE_RATE) -> torch.Tensor:
    """Band-limited resampling of ``(..., samples)`` from ``src_rate`` to ``dst_rate``."""
    if src_rate == dst_rate:
        return wav
    return AF.resample(wav, src_rate, dst_rate)


def load_audio(path: str | Path, sample_rate: int = SAMPLE_RATE, min_samples: int = 1) -> torch.Tensor:
    """Load ``path`` as a mono float32 waveform ``(samples,)`` at ``sample_rate``.

    Channels are averaged. Raises :class:`AudioError` for a missing, undecodable, empty,
    non-finite or too-short file.
    """
    path = Path(path)
    if not path.is_file():
        raise AudioError(path, "file not found")
    try:
        data, rate = _decode(path)
    except Exception as exc:
        raise AudioError(path, f"cannot decode audio ({exc})") from None
    if data.shape[0] == 0:
        raise AudioError(path, "empty audio (0 samples)")
    truncated = _wav_truncation(path) if path.suffix.lower() == ".wav" else None
    if truncated:
        raise AudioError(path, truncated)
    if not np.isfinite(data).all():
        raise AudioError(path, "audio holds NaN or infinite samples")
    wav = torch.from_numpy(np.ascontiguousarray(data.mean(axis=1)))
    wav = resample(wav, rate, sample_rate)
    if wav.numel() < min_samples:
        raise AudioError(
            path, f"too short: {wav.numel()} samples at {sample_rate} Hz, need at least {min_samples}"
        )
    return wav.contiguous()


def write_wav(path: str | Path, wav: torch.Tensor | np.ndarray, sample_rate: int = SAMPLE_RATE) -> None:
    """Write a mono waveform ``(samples,)`` as 16-bit PCM (parent folders are created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(wav, torch.Tensor):
        wav = wav.detach().cpu().numpy()
    sf.write(str(path), np.clip(wav, -1.0, 1.0), sample_rate, subtype="PCM_16")
