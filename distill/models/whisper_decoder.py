"""Greedy transcription with a CTranslate2 Whisper teacher's own decoder: is the teacher sound on real speech?

The encoder states come from the teacher's own encoder, run on the clip zero-padded to 30 s as
Whisper was trained (on clip-length input, which stackdistill's targets use, both decoders
loop: WER 2,155 % for tiny.en and 2,299 % for base on the held-out English prompts, against
9.3 % and 7.4 % padded; measured 2026-12-06); the decoder is the model's own, converted to Hugging Face's
``WhisperForConditionalGeneration`` (:func:`distill.models.ct2.load_hf_whisper`), and decoding
is greedy with the key/value cache. Multilingual models are told the language and the task
(``<|startoftranscript|><|en|><|transcribe|><|notimestamps|>``); English-only ones get
``<|startoftranscript|><|notimestamps|>``.
"""

from __future__ import annotations

from pathlib import Path

import torch

MULTILINGUAL_VOCAB = 51865  # English-only Whisper models have 51,864 tokens (their tokenizer still lists <|en|>)
MAX_SECONDS = 30.0  # Whisper's encoder holds 1,500 positions (30 s)


class WhisperTranscriber:
    """``transcribe(wav)`` -> text, for a Whisper teacher read from a CTranslate2 folder.

    Args:
        teacher: a :class:`distill.models.teacher.Teacher` with ``ct2_folder`` (its encoder runs the audio).
        language: the spoken language's code (``en``, ``es``, ...), used by multilingual models.
        max_tokens: longest transcript decoded.
    """

    def __init__(self, teacher, language: str = "en", max_tokens: int = 224):
        from tokenizers import Tokenizer
        from transformers import WhisperForConditionalGeneration

        from distill.models.ct2 import load_hf_whisper

        folder = getattr(teacher, "ct2_folder", None)
        if not folder or teacher.pruned_from:
            raise ValueError(f"{teacher.name}: transcription needs a whole CTranslate2 Whisper teacher (with its decoder)")
        tokenizer_file = Path(folder) / "tokenizer.json"
        if not tokenizer_file.is_file():
            raise ValueError(f"{tokenizer_file} not found: the teacher's folder has no tokenizer")
        self.teacher, self.max_tokens = teacher, max_tokens
        self.tokenizer = Tokenizer.from_file(str(tokenizer_file))
        self.model = load_hf_whisper(folder, WhisperForConditionalGeneration)
        self.prefix = self._prefix(language)
        self.end = self._token("<|endoftext|>")

    def _token(self, text: str) -> int:
        token = self.tokenizer.token_to_id(text)
        if token is None:
            raise ValueError(f"{self.teacher.name}: the tokenizer has no {text} token")
        return token

    def _prefix(self, language: str) -> list[int]:
        start, no_ts = self._token("<|startoftranscript|>"), self._token("<|notimestamps|>")
        if self.model.config.vocab_size < MULTILINGUAL_VOCAB:  # English-only (tiny.en): no language or task
            if language != "en":
                raise ValueError(f"{self.teacher.name} is English-only; it cannot transcribe {language!r}")
            return [start, no_ts]
        return [start, self._token(f"<|{language}|>"), self._token("<|transcribe|>"), no_ts]

    @property
    def multilingual(self) -> bool:
        return len(self.prefix) == 4

    @torch.no_grad()
    def transcribe(self, wav: torch.Tensor) -> str:
        """Greedy transcript of one clip ``wav (samples,)`` at 16 kHz, at most 30 s long."""
        if wav.dim() != 1:
            raise ValueError(f"transcribe takes one clip (samples,), got shape {tuple(wav.shape)}")
        if wav.numel() > MAX_SECONDS * 16000:
            raise ValueError(f"clip of {wav.numel() / 16000:.1f} s: Whisper transcribes at most {MAX_SECONDS:.0f} s")
        padded = torch.zeros(int(MAX_SECONDS * 16000), dtype=wav.dtype)
        padded[: wav.numel()] = wav
        states, _ = self.teacher(padded[None])
        encoder = (states[-1],)
        tokens, past, step_input = list(self.prefix), None, torch.tensor([self.prefix])
        for _ in range(self.max_tokens):
            out = self.model(encoder_outputs=encoder, decoder_input_ids=step_input, past_key_values=past,
                             use_cache=True)
            past = out.past_key_values
            nxt = int(out.logits[0, -1].argmax())
            if nxt == self.end:
                break
            tokens.append(nxt)
            step_input = torch.tensor([[nxt]])
        return self.tokenizer.decode(tokens[len(self.prefix):], skip_special_tokens=True).strip()
