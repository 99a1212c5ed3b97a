"""Speech and noise synthesis primitives: espeak-ng voices, coloured noise, mixing at an SNR.

A :class:`Speaker` is a fixed espeak-ng voice (accent + variant) with its own base pitch and
speed; each utterance jitters both, so one speaker sounds alike but never identical.
"""

from __future__ import annotations

import hashlib
import io
import random
import shutil
import subprocess
from dataclasses import dataclass

import numpy as np
import soundfile as sf
import torch

from distill.data.audio import SAMPLE_RATE, resample

ACCENTS = ("en-us", "en-gb", "en-029", "en-gb-scotland", "en-gb-x-rp", "en-gb-x-gbclan")
VARIANTS = ("m1", "m2", "m3", "m4", "m5", "m6", "m7", "f1", "f2", "f3", "f4", "f5",
            "klatt", "klatt2", "klatt3", "klatt4", "Andy", "Annie", "david", "linda",
            "robert", "steph", "travis", "victor", "edward", "grandma", "john", "paul")
NOISE_KINDS = ("white", "pink", "brown", "hum")


def espeak_binary() -> str:
    exe = shutil.which("espeak-ng")
    if exe is None:
        raise RuntimeError("espeak-ng not found: install it (Debian: apt-get install espeak-ng, "
                           "or run scripts/setup.sh)")
    return exe


@dataclass(frozen=True)
class Speaker:
    id: str
    voice: str  # e.g. "en-us+m3"
    pitch: int  # espeak -p, 0..99
    speed: int  # espeak -s, words per minute


def make_speakers(n: int, seed: int, voices: list[str] | None = None, pitch_range=(25, 75),
                  speed_range=(130, 190), prefix: str = "") -> list[Speaker]:
    """``n`` distinct speakers with 8-hex ids (Speech Commands style), deterministic given seed."""
    rng = random.Random(f"speakers-{seed}-{prefix}")
    pool = voices or [f"{a}+{v}" for a in ACCENTS for v in VARIANTS]
    out = []
    for i in range(n):
        sid = hashlib.sha1(f"{prefix}{seed}-{i}".encode()).hexdigest()[:8]
        out.append(Speaker(sid, rng.choice(pool), rng.randint(*pitch_range), rng.randint(*speed_range)))
    return out


def speak(text: str, speaker: Speaker, rng: random.Random, pitch_jitter: int = 8,
          speed_jitter: int = 15) -> torch.Tensor:
    """Synthesise ``text`` with espeak-ng; returns a 16 kHz mono waveform ``(samples,)``."""
    pitch = min(99, max(0, speaker.pitch + rng.randint(-pitch_jitter, pitch_jitter)))
    speed = max(80, speaker.speed + rng.randint(-speed_jitter, speed_jitter))
    cmd = [espeak_binary(), "-v", speaker.voice, "-p", str(pitch), "-s", str(speed), "--stdout", text]
    proc = subprocess.run(cmd, capture_output=True, check=False)
    if proc.returncode != 0 or not proc.stdout:
        raise RuntimeError(f"espeak-ng failed for voice {speaker.voice!r}: {proc.stderr.decode(errors='replace')}")
    data, rate = sf.read(io.BytesIO(proc.stdout), dtype="float32")
    wav = resample(torch.from_numpy(data), rate, SAMPLE_RATE)
    peak = float(wav.abs().max())
    return wav / peak * 0.5 if peak > 0 else wav


def noise(kind: str, n: int, rng: np.random.Generator) -> torch.Tensor:
    """``n`` samples of unit-RMS noise: white, pink (1/f), brown (1/f^2) or mains hum."""
    if kind == "hum":
        t = np.arange(n) / SAMPLE_RATE
        f0 = rng.uniform(48, 62)
        x = sum(np.sin(2 * np.pi * f0 * k * t + rng.uniform(0, 2 * np.pi)) / k for k in range(1, 6))
        x = x + 0.05 * rng.standard_normal(n)
    else:
        white = rng.standard_normal(n)
        if kind == "white":
            x = white
        else:
            spec = np.fft.rfft(white)
            f = np.fft.rfftfreq(n)
            f[0] = f[1]
            power = {"pink": 1.0, "brown": 2.0}.get(kind)
            if power is None:
                raise ValueError(f"unknown noise kind {kind!r}; known: {NOISE_KINDS}")
            x = np.fft.irfft(spec / f ** (power / 2), n)
    x = x - x.mean()
    return torch.from_numpy((x / (np.sqrt((x ** 2).mean()) + 1e-12)).astype(np.float32))


def add_noise(wav: torch.Tensor, snr_db: float, kind: str, rng: np.random.Generator) -> torch.Tensor:
    """Mix noise into ``wav`` at ``snr_db`` relative to the power of its non-silent part."""
    active = wav[wav.abs() > 0.01 * float(wav.abs().max() + 1e-12)]
    p_speech = float((active ** 2).mean()) if active.numel() else 1e-8
    n = noise(kind, wav.numel(), rng) * (p_speech / 10 ** (snr_db / 10)) ** 0.5
    mixed = wav + n
    peak = float(mixed.abs().max())
    return mixed / peak * 0.9 if peak > 0.99 else mixed


def fit_length(wav: torch.Tensor, n: int, rng: random.Random) -> torch.Tensor:
    """Place ``wav`` at a random offset in ``n`` samples of silence (centre-trim if longer)."""
    if wav.numel() >= n:
        start = (wav.numel() - n) // 2
        return wav[start:start + n].clone()
    out = torch.zeros(n)
    off = rng.randint(0, n - wav.numel())
    out[off:off + wav.numel()] = wav
    return out
