"""Decoding raw G.722 (ITU-T wideband, 16 kHz) files, as Asterisk ships its prompts.

The decoder is FFmpeg's, through PyAV's wheel (``pip install av``; the ``prompts`` extra):
maintained, installed by pip on any machine without Debian's ffmpeg and its few hundred MB of
libraries, and it reads the headerless ``.g722`` stream directly (format ``g722``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from distill.data.audio import AudioError

G722_RATE = 16000


def decode_g722(path: str | Path) -> np.ndarray:
    """The samples of a raw ``.g722`` file: float32 ``(samples,)`` in [-1, 1] at 16 kHz.

    Raises :class:`distill.data.audio.AudioError` (naming the file) when it cannot be decoded,
    and ``ValueError`` when PyAV is not installed.
    """
    try:
        import av
    except ImportError:
        raise ValueError("decoding G.722 needs PyAV: pip install 'av>=14,<19' (scripts/setup.sh installs it)") from None
    path = Path(path)
    if not path.is_file():
        raise AudioError(path, "file not found")
    frames = []
    try:
        with av.open(str(path), format="g722") as container:
            if not container.streams.audio:
                raise AudioError(path, "no audio stream")
            stream = container.streams.audio[0]
            if stream.codec_context.name != "g722" or stream.rate != G722_RATE:
                raise AudioError(path, f"expected G.722 at {G722_RATE} Hz, got {stream.codec_context.name} "
                                 f"at {stream.rate} Hz")
            for frame in container.decode(stream):
                frames.append(frame.to_ndarray().reshape(-1))
    except AudioError:
        raise
    except (av.error.FFmpegError, OSError, ValueError) as err:  # invalid data, truncated stream
        raise AudioError(path, f"cannot decode as G.722 ({type(err).__name__}: {err})") from None
    if not frames:
        raise AudioError(path, "no audio decoded (empty G.722 stream)")
    pcm = np.concatenate(frames)
    return (pcm.astype(np.float32) / 32768.0) if pcm.dtype == np.int16 else pcm.astype(np.float32)
