"""ONNX export of any stackdistill model (teacher, student, pruned), dynamic batch and length.

The graph takes ``wav (batch, samples)`` float32 at 16 kHz and ``lengths (batch,)`` int64 and
returns ``hidden_states (num_layers + 1, batch, frames, dim)`` and ``frame_lengths (batch,)``;
frames past an utterance's length are zero. A padded batch gives each utterance's own states,
as in PyTorch. Two frontends compute per utterance in PyTorch (a Python loop the exporter
would freeze to one batch size), so the export swaps in batched equivalents:

* Whisper's log-mel: per-utterance reflect padding by index arithmetic, the STFT as a matmul
  with a cosine / sine basis, the per-utterance maximum taken over valid frames only.
* wav2vec2-family CNNs with group norm (base models): the first layer's normalisation over time
  uses valid samples only.

Whisper's position table bounds the input as it does in PyTorch: at most 30 s a clip.

:func:`check_onnx` runs the export with onnxruntime against PyTorch on real audio and reports
the largest absolute difference and the CPU time of both.
"""

from __future__ import annotations

import logging
import math
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from distill.core.protocol import lengths_to_mask

log = logging.getLogger(__name__)


class BatchedWhisperFrontend(nn.Module):
    """:class:`~distill.core.frontends.WhisperFrontend` on a padded batch, without a Python loop."""

    def __init__(self, frontend):
        super().__init__()
        self.inner = frontend
        n_fft, hop = frontend.N_FFT, frontend.MEL_HOP
        self.n_fft, self.mel_hop = n_fft, hop
        k = torch.arange(n_fft // 2 + 1, dtype=torch.float64)
        m = torch.arange(n_fft, dtype=torch.float64)
        angle = 2 * math.pi * m[:, None] * k[None, :] / n_fft
        window = frontend.window.double()[:, None]
        self.register_buffer("cos_basis", (torch.cos(angle) * window).float(), persistent=False)
        self.register_buffer("sin_basis", (torch.sin(angle) * window).float(), persistent=False)

    def forward(self, wav: torch.Tensor, lengths: torch.Tensor):
        f = self.inner
        batch, total = wav.shape
        n_frames = total // self.mel_hop
        mel_lengths = torch.div(lengths, self.mel_hop, rounding_mode="floor")
        t = torch.arange(n_frames, device=wav.device)
        j = t[:, None] * self.mel_hop + torch.arange(self.n_fft, device=wav.device)[None, :] - self.n_fft // 2
        j = j[None].expand(batch, -1, -1)
        last = (lengths - 1)[:, None, None]
        j = torch.where(j < 0, -j, j)
        j = torch.where(j > last, 2 * last - j, j)
        j = j.clamp(min=0, max=total - 1)
        frames = torch.gather(wav.float(), 1, j.reshape(batch, -1)).reshape(batch, -1, self.n_fft)
        power = (frames @ self.cos_basis) ** 2 + (frames @ self.sin_basis) ** 2
        mel = power @ f.mel_filters  # (batch, frames, n_mels)
        logm = torch.log10(torch.clamp(mel, min=1e-10))
        valid = lengths_to_mask(mel_lengths, logm.shape[1])[:, :, None]
        peak = torch.where(valid, logm, torch.full_like(logm, -1e30)).amax(dim=(1, 2), keepdim=True)
        logm = (torch.maximum(logm, peak - 8.0) + 4.0) / 4.0
        mel = (logm * valid.to(logm.dtype)).transpose(1, 2)
        x = F.gelu(f.conv1(mel.to(f.conv1.weight.dtype)))
        x = x * lengths_to_mask(mel_lengths, x.shape[-1]).unsqueeze(1).to(x.dtype)
        x = F.gelu(f.conv2(x)).transpose(1, 2)
        x = x + f.embed_positions.weight[: x.shape[1]].to(x.dtype)
        frame_lengths = f.frame_lengths(lengths)
        x = x * lengths_to_mask(frame_lengths, x.shape[1]).unsqueeze(-1).to(x.dtype)
        return x, frame_lengths


class BatchedSSLFrontend(nn.Module):
    """:class:`~distill.core.frontends.SSLFrontend` on a padded batch; group norm over valid samples."""

    def __init__(self, frontend):
        super().__init__()
        self.inner = frontend

    def forward(self, wav: torch.Tensor, lengths: torch.Tensor):
        f = self.inner
        cfg = f.config
        x = wav[:, None]
        n = lengths
        for i, layer in enumerate(f.feature_extractor.conv_layers):
            x = layer.conv(x)
            n = torch.div(n - cfg.conv_kernel[i], cfg.conv_stride[i], rounding_mode="floor") + 1
            norm = getattr(layer, "layer_norm", None)
            if isinstance(norm, nn.GroupNorm):  # one group a channel: statistics over valid time steps
                if norm.num_groups != norm.num_channels:
                    raise ValueError(f"ONNX export handles per-channel group norm only, got {norm.num_groups} groups "
                                     f"for {norm.num_channels} channels")
                mask = lengths_to_mask(n, x.shape[-1])[:, None, :].to(x.dtype)
                count = mask.sum(-1, keepdim=True).clamp(min=1)
                mean = (x * mask).sum(-1, keepdim=True) / count
                var = (((x - mean) * mask) ** 2).sum(-1, keepdim=True) / count
                x = (x - mean) / torch.sqrt(var + norm.eps) * norm.weight[None, :, None] + norm.bias[None, :, None]
            elif norm is not None:
                x = norm(x.transpose(-2, -1)).transpose(-2, -1)
            x = layer.activation(x)
        proj = f.feature_projection(x.transpose(1, 2))
        if isinstance(proj, tuple):
            proj = proj[0]
        frame_lengths = f.frame_lengths(lengths)
        proj = proj * lengths_to_mask(frame_lengths, proj.shape[1]).unsqueeze(-1).to(proj.dtype)
        return proj, frame_lengths


def batched_frontend(frontend: nn.Module) -> nn.Module:
    from distill.core.frontends import SSLFrontend, WhisperFrontend

    if isinstance(frontend, WhisperFrontend):
        return BatchedWhisperFrontend(frontend)
    if isinstance(frontend, SSLFrontend):
        return BatchedSSLFrontend(frontend)
    raise ValueError(f"no ONNX-exportable version of frontend {type(frontend).__name__}")


class ExportGraph(nn.Module):
    """``(wav, lengths) -> (stacked hidden states, frame_lengths)``: the graph that is exported."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.frontend = batched_frontend(model.frontend)

    def forward(self, wav: torch.Tensor, lengths: torch.Tensor):
        feats, frame_lengths = self.frontend(wav, lengths)
        outputs = self.model.stack(feats, frame_lengths)
        states = self.model.states_from_outputs(outputs) if hasattr(self.model, "states_from_outputs") else outputs
        mask = lengths_to_mask(frame_lengths, feats.shape[1])[None, :, :, None].to(feats.dtype)
        return torch.stack([s.float() for s in states]) * mask, frame_lengths


def export_onnx(model: nn.Module, path: str | Path, opset: int = 17) -> Path:
    """Write ``model`` as ONNX with dynamic batch and length; returns the file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    graph = ExportGraph(model).eval()
    wav = torch.randn(2, 24000) * 0.1
    lengths = torch.tensor([24000, 16000])
    tmp = path.with_name(path.name + ".tmp")
    # PyTorch's fused "fast path" of nn.TransformerEncoderLayer / nn.MultiheadAttention (taken in eval
    # mode without grad) has no ONNX symbolic; a model built on them must be traced through the plain ops
    # (the mimic transformer's own layer, students/blocks.py, needs neither)
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        _export_graph(graph, wav, lengths, tmp, opset)
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
    tmp.replace(path)
    return path


def _export_graph(graph: nn.Module, wav: torch.Tensor, lengths: torch.Tensor, tmp: Path, opset: int) -> None:
    with torch.no_grad():
        torch.onnx.export(graph, (wav, lengths), str(tmp), input_names=["wav", "lengths"],
                          output_names=["hidden_states", "frame_lengths"], opset_version=opset, dynamo=False,
                          dynamic_axes={"wav": {0: "batch", 1: "samples"}, "lengths": {0: "batch"},
                                        "hidden_states": {1: "batch", 2: "frames"}, "frame_lengths": {0: "batch"}})


def _median_seconds(fn, rounds: int = 5) -> float:
    fn()
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


@torch.no_grad()
def check_onnx(model: nn.Module, path: str | Path, wav: torch.Tensor, lengths: torch.Tensor,
               rounds: int = 5) -> dict:
    """onnxruntime against PyTorch on ``wav (batch, samples)``: max abs difference over valid frames
    (each utterance alone in PyTorch against the padded batch in ONNX), and the wall seconds per
    second of audio of both on the same number of threads."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    sess = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    feed = {"wav": wav.float().numpy(), "lengths": lengths.long().numpy()}
    onnx_states, onnx_lengths = sess.run(None, feed)
    diff = 0.0
    for i, n in enumerate(lengths.tolist()):
        states, fl = model(wav[i:i + 1, :n], torch.tensor([n]))
        frames = int(fl[0])
        if int(onnx_lengths[i]) != frames:
            raise AssertionError(f"utterance {i}: ONNX gives {int(onnx_lengths[i])} frames, PyTorch {frames}")
        ref = torch.stack([s[0, :frames].float() for s in states])
        diff = max(diff, float((torch.from_numpy(onnx_states[:, i, :frames]) - ref).abs().max()))
    torch_s = _median_seconds(lambda: model(wav, lengths), rounds)
    onnx_s = _median_seconds(lambda: sess.run(None, feed), rounds)
    audio = float(lengths.sum()) / 16000
    return {"max_abs_diff": diff, "torch_seconds_per_audio_second": torch_s / audio,
            "onnx_seconds_per_audio_second": onnx_s / audio, "threads": torch.get_num_threads(),
            "batch": int(wav.shape[0]),
            "lengths": lengths.tolist(), "layers": int(onnx_states.shape[0]) - 1}
