"""Shared fixtures: tiny random models of every architecture, tiny synthetic corpora, real clips."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch

warnings.filterwarnings("ignore")
torch.set_num_threads(2)

POCKETSPHINX = Path("/usr/share/pocketsphinx/test/data")
REAL_CLIP = POCKETSPHINX / "librivox" / "sense_and_sensibility_01_austen_64kb-0870.wav"

_SSL_COMMON = dict(hidden_size=32, num_hidden_layers=3, num_attention_heads=2, intermediate_size=64,
                   conv_dim=(16,) * 7, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2)


def tiny_config(arch: str, **overrides):
    """A small random-weight config of each supported architecture (offline)."""
    from transformers import Data2VecAudioConfig, HubertConfig, Wav2Vec2Config, WavLMConfig, WhisperConfig

    if arch == "whisper":
        cfg = dict(num_mel_bins=80, d_model=32, encoder_layers=3, decoder_layers=1, encoder_attention_heads=2,
                   decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64, max_source_positions=1500,
                   vocab_size=51864, max_target_positions=32)
        return WhisperConfig(**{**cfg, **overrides})
    cls = {"wav2vec2": Wav2Vec2Config, "hubert": HubertConfig, "wavlm": WavLMConfig,
           "data2vec-audio": Data2VecAudioConfig}[arch]
    kw = dict(_SSL_COMMON)
    if arch == "wavlm":
        kw.update(num_buckets=16, max_bucket_distance=64)
    if arch == "data2vec-audio":
        kw.update(num_conv_pos_embeddings=5, conv_pos_kernel_size=5)
    return cls(**{**kw, **overrides})


def save_tiny_model(arch: str, folder: Path, seed: int = 0, **overrides) -> Path:
    from transformers import AutoModel

    torch.manual_seed(seed)
    model = AutoModel.from_config(tiny_config(arch, **overrides))
    model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_whisper_dir(tmp_path_factory) -> Path:
    return save_tiny_model("whisper", tmp_path_factory.mktemp("tiny_whisper"))


@pytest.fixture(scope="session")
def sentences_corpus(tmp_path_factory) -> Path:
    from tasks.corpora.synthetic import SentencesConfig, build_sentences

    return build_sentences(SentencesConfig(out=str(tmp_path_factory.mktemp("sent") / "corpus"), speakers=4,
                                           utterances_per_speaker=4, max_words=8, workers=1))


@pytest.fixture(scope="session")
def ks_corpus(tmp_path_factory) -> Path:
    from tasks.corpora.synthetic import SpeechCommandsConfig, build_speech_commands

    out = tmp_path_factory.mktemp("ks") / "sc"
    build_speech_commands(SpeechCommandsConfig(out=str(out), train_speakers=12, test_speakers=2, unknown_words=4,
                                               test_unknown_per_speaker=2, test_silence=4, background_seconds=3,
                                               workers=1))
    return out


@pytest.fixture(scope="session")
def real_clip() -> Path:
    if not REAL_CLIP.is_file():
        pytest.fail(f"{REAL_CLIP} missing: install Debian's pocketsphinx-testdata (scripts/setup.sh does)")
    return REAL_CLIP


@pytest.fixture(scope="session")
def vox_corpus(tmp_path_factory) -> Path:
    from tasks.corpora.superb_corpora import VoxCelebConfig, build_voxceleb1

    return build_voxceleb1(VoxCelebConfig(out=str(tmp_path_factory.mktemp("vox") / "vox1"), speakers=4, videos=2,
                                          train_per_speaker=4, valid_per_speaker=1, test_per_speaker=2, workers=1))


@pytest.fixture(scope="session")
def fsc_corpus(tmp_path_factory) -> Path:
    from tasks.corpora.superb_corpora import FluentCommandsConfig, build_fluent_commands

    return build_fluent_commands(FluentCommandsConfig(out=str(tmp_path_factory.mktemp("fsc") / "fsc"),
                                                      train_speakers=2, valid_speakers=1, test_speakers=1, workers=1))


@pytest.fixture(scope="session")
def libri_corpus(tmp_path_factory) -> Path:
    from tasks.corpora.superb_corpora import LibriSpeechConfig, build_librispeech

    return build_librispeech(LibriSpeechConfig(out=str(tmp_path_factory.mktemp("libri") / "ls"), train_speakers=3,
                                               dev_speakers=1, test_speakers=1, utterances_per_speaker=3,
                                               max_words=6, workers=1))


@pytest.fixture(scope="session")
def prompts_corpus(tmp_path_factory) -> Path:
    """A small slice of the real Asterisk prompts (English and Spanish, 16 each, a third held out)."""
    from tasks.corpora.prompts import PromptsConfig, build_prompts

    return build_prompts(PromptsConfig(out=str(tmp_path_factory.mktemp("prompts") / "p"), languages=["en", "es"],
                                       max_files=16, heldout_fraction=0.34, lexicon=False))
