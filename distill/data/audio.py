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

from distill.core.protocol import SAMPLE_RATE

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


def load_audio(path: str | Path, sample_rate: int = SAMPLE_RATE, min_samples: int = 1, start: int = 0,
               num_samples: int | None = None) -> torch.Tensor:
    """Load ``path`` as a mono float32 waveform ``(samples,)`` at ``sample_rate``.

    ``start`` / ``num_samples`` (in samples at ``sample_rate``) select a window: a file already at
    that rate is read only there (a crop of an hour-long file costs the crop, not the hour);
    other files are decoded whole, resampled, then cut. Channels are averaged. Raises
    :class:`AudioError` for a missing, undecodable, empty, truncated, non-finite or too-short
    file (``min_samples`` applies to the whole file, before the window is cut).
    """
    path = Path(path)
    if not path.is_file():
        raise AudioError(path, "file not found")
    if start < 0 or (num_samples is not None and num_samples <= 0):
        raise ValueError(f"{path}: window start={start}, num_samples={num_samples} is not a valid window")
    total, rate = audio_info(path)
    windowed = rate == sample_rate and (start > 0 or num_samples is not None)
    try:
        if windowed:
            data = _decode_window(path, start, num_samples)
        else:
            data, rate = _decode(path)
            total = data.shape[0]
    except Exception as exc:
        raise AudioError(path, f"cannot decode audio ({exc})") from None
    if total == 0 or data.shape[0] == 0:
        raise AudioError(path, "empty audio (0 samples)")
    truncated = _wav_truncation(path) if path.suffix.lower() == ".wav" else None
    if truncated:
        raise AudioError(path, truncated)
    if not np.isfinite(data).all():
        raise AudioError(path, "audio holds NaN or infinite samples")
    wav = torch.from_numpy(np.ascontiguousarray(data.mean(axis=1)))
    total_out = total if windowed else None
    if not windowed:
        wav = resample(wav, rate, sample_rate)
        total_out = wav.numel()
        if start or num_samples is not None:
            wav = wav[start: None if num_samples is None else start + num_samples]
    if total_out < min_samples:
        raise AudioError(
            path, f"too short: {total_out} samples at {sample_rate} Hz, need at least {min_samples}"
        )
    if wav.numel() == 0:
        raise AudioError(path, f"window from sample {start} lies beyond the file's {total_out} samples")
    return wav.contiguous()


def _decode_window(path: Path, start: int, num_samples: int | None) -> np.ndarray:
    """Samples ``[start, start + num_samples)`` of a file at its own rate, ``(samples, channels)``."""
    if path.suffix.lower() == ".raw":
        count = -1 if num_samples is None else num_samples
        data = np.fromfile(path, dtype="<i2", count=count, offset=2 * start).astype(np.float32) / 32768.0
        return data[:, None]
    frames = -1 if num_samples is None else num_samples
    data, _ = sf.read(str(path), start=start, frames=frames, dtype="float32", always_2d=True)
    return data


def write_wav(path: str | Path, wav: torch.Tensor | np.ndarray, sample_rate: int = SAMPLE_RATE) -> None:
    """Write a mono waveform ``(samples,)`` as 16-bit PCM (parent folders are created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(wav, torch.Tensor):
        wav = wav.detach().cpu().numpy()
    sf.write(str(path), np.clip(wav, -1.0, 1.0), sample_rate, subtype="PCM_16")


REAL_SPEECH = Path("/usr/share/pocketsphinx/test/data/librivox")  # Debian pocketsphinx-testdata (BSD-2)


def real_speech_batch(seconds=(3.0, 1.2, 2.1), fallback: bool = False) -> tuple[torch.Tensor, torch.Tensor, str]:
    """A zero-padded batch ``(batch, samples)`` of real recordings cut to ``seconds`` (tiled when a
    length exceeds the recordings), its lengths ``(batch,)``, and what the audio is. Without the
    recordings: a ``ValueError``, or seeded noise if ``fallback``."""
    n = [int(SAMPLE_RATE * s) for s in seconds]
    clips = sorted(REAL_SPEECH.glob("*.wav")) if REAL_SPEECH.is_dir() else []
    if clips:
        source, what = torch.cat([load_audio(c) for c in clips]), f"recorded speech from {REAL_SPEECH}"
    elif fallback:
        source = torch.randn(sum(n), generator=torch.Generator().manual_seed(0)) * 0.1
        what = "seeded noise (no recorded speech installed: Debian pocketsphinx-testdata)"
    else:
        raise ValueError(f"real speech not found in {REAL_SPEECH}: install Debian's pocketsphinx-testdata "
                         "(scripts/setup.sh does)")
    tiled = source.repeat(sum(n) // source.numel() + 1)
    wav = torch.zeros(len(n), max(n))
    start = 0
    for i, k in enumerate(n):
        wav[i, :k] = tiled[start:start + k]
        start += k
    return wav, torch.tensor(n), what
