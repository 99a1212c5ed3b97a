"""The offline teacher: CTranslate2 Whisper tiny.en read exactly, and run correctly on real speech."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from distill.data.audio import load_audio
from distill.models.ct2 import read_ct2_model
from distill.models.teacher import load_teacher, offline_whisper_folder


@pytest.fixture(scope="module")
def ct2_vars():
    return read_ct2_model(offline_whisper_folder())


@pytest.fixture(scope="module")
def tiny_en():
    return load_teacher("whisper-tiny.en")


def test_reader_consumes_the_file_and_finds_the_spec(ct2_vars):
    variables, meta = ct2_vars
    assert meta["version"] == 6 and meta["spec"] == "WhisperSpec"
    assert variables["encoder/conv1/weight"].shape == (384, 80, 3)
    assert variables["encoder/position_encodings/encodings"].shape == (1500, 384)
    assert variables["encoder/conv1/weight"].dtype == torch.float16


def test_conversion_is_exact(ct2_vars, tiny_en):
    """Every teacher tensor equals the stored float16 value; Q/K/V are the thirds of the fused matrix."""
    variables, _ = ct2_vars
    info = tiny_en.info
    assert (info.num_layers, info.dim, info.hop) == (4, 384, 320)
    assert 8.1e6 < info.params_total < 8.3e6  # 8.2 M encoder parameters
    f, st = tiny_en.frontend, tiny_en.stack
    assert torch.equal(f.conv1.weight, variables["encoder/conv1/weight"].float())
    assert torch.equal(f.embed_positions.weight, variables["encoder/position_encodings/encodings"].float())
    for i in range(4):
        layer = st.layers[i]
        qkv = variables[f"encoder/layer_{i}/self_attention/linear_0/weight"].float()
        assert torch.equal(layer.self_attn.q_proj.weight, qkv[:384])
        assert torch.equal(layer.self_attn.k_proj.weight, qkv[384:768])
        assert torch.equal(layer.self_attn.v_proj.weight, qkv[768:])
        assert torch.equal(layer.fc2.bias, variables[f"encoder/layer_{i}/ffn/linear_1/bias"].float())
        assert torch.equal(layer.final_layer_norm.weight, variables[f"encoder/layer_{i}/ffn/layer_norm/gamma"].float())
    assert torch.equal(st.layer_norm.bias, variables["encoder/layer_norm/beta"].float())


def test_truncated_model_file_is_a_clear_error(tmp_path):
    data = (offline_whisper_folder() / "model.bin").read_bytes()
    (tmp_path / "model.bin").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="truncated"):
        read_ct2_model(tmp_path)


def test_real_clip_finite_and_deterministic(tiny_en, real_clip):
    wav = load_audio(real_clip)[None]
    a, fl = tiny_en(wav)
    b, _ = tiny_en(wav)
    assert len(a) == 5 and fl.item() == (wav.shape[1] // 160 - 1) // 2 + 1
    for x, y in zip(a, b):
        assert torch.isfinite(x).all()
        assert torch.equal(x, y)
    # a pretrained model, not noise: consecutive frames of the last layer are strongly related
    last = a[-1][0]
    cos = torch.nn.functional.cosine_similarity(last[1:], last[:-1], dim=-1).mean()
    assert cos > 0.5


def test_log_mel_matches_whisper_feature_extractor(tiny_en, real_clip):
    from transformers import WhisperFeatureExtractor

    wav = load_audio(real_clip)
    ours = tiny_en.frontend.log_mel(wav)
    ref = WhisperFeatureExtractor(feature_size=80)(wav.numpy(), sampling_rate=16000, return_tensors="np")
    ref = torch.from_numpy(ref["input_features"][0, :, : ours.shape[1]])
    # the reference pads the clip to 30 s: only the last frames (whose window reaches the pad) differ
    torch.testing.assert_close(ours[:, :-2], ref[:, :-2], atol=2e-4, rtol=1e-4)


def test_whole_teacher_matches_hf_whisper_encoder_on_30s(tiny_en, real_clip):
    """On a full 30 s input our encoder call equals Hugging Face's own WhisperEncoder."""
    from transformers import WhisperFeatureExtractor
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    wav = torch.zeros(480000)
    clip = load_audio(real_clip)
    wav[: clip.numel()] = clip
    ours, _ = tiny_en(wav[None])
    enc = WhisperEncoder(tiny_en.config).eval()
    sd = {k: v for k, v in tiny_en.stack.state_dict().items()}
    sd.update({k: v for k, v in tiny_en.frontend.state_dict().items()})
    enc.load_state_dict(sd, strict=True)
    feats = WhisperFeatureExtractor(feature_size=80)(wav.numpy(), sampling_rate=16000, return_tensors="pt")
    with torch.no_grad():
        ref = enc(feats["input_features"], output_hidden_states=True).hidden_states
    assert len(ref) == len(ours)
    for x, y in zip(ours, ref):
        torch.testing.assert_close(x, y, atol=5e-3, rtol=1e-3)
    assert np.isclose(float(ours[-1].std()), float(ref[-1].std()), rtol=1e-3)


def test_converted_decoder_transcribes_the_real_clip(tiny_en, real_clip):
    """The strongest check of the conversion: our encoder call + the converted decoder, greedy
    decoding, give the recording's transcript."""
    import re

    from tokenizers import Tokenizer
    from transformers import WhisperForConditionalGeneration

    from distill.models.ct2 import load_hf_whisper

    model = load_hf_whisper(offline_whisper_folder(), WhisperForConditionalGeneration)
    clip = load_audio(real_clip)
    states, _ = tiny_en(clip[None])
    tokens = [50257, 50362]  # <|startoftranscript|> <|notimestamps|> (tiny.en)
    with torch.no_grad():
        for _ in range(60):
            logits = model(encoder_outputs=(states[-1],), decoder_input_ids=torch.tensor([tokens])).logits
            nxt = int(logits[0, -1].argmax())
            if nxt == 50256:  # <|endoftext|>
                break
            tokens.append(nxt)
    text = Tokenizer.from_file(str(offline_whisper_folder() / "tokenizer.json")).decode(tokens[2:])
    hyp = re.sub(r"[^a-z ]", "", text.lower().replace("mr.", "mister")).split()
    ref = ("and mister john dashwood had then leisure to consider how much there might be "
           "prudently in his power to do for them").split()
    assert hyp == ref
