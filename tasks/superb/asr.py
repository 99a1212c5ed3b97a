"""SUPERB automatic speech recognition (LibriSpeech) through s3prl's ``SuperbASR`` recipe.

A 2-layer BLSTM trained with CTC on characters over the frozen model's weighted hidden states,
greedy decoding, word error rate on ``test-clean``. The recipe's ``SPEAKERS.TXT`` must list every
speaker. The interval is a Wilson interval over the reference words, which treats words as
independent: it understates the true uncertainty of a WER.
"""

from __future__ import annotations

from pathlib import Path

from tasks.corpora.layouts import require
from tasks.superb.protocol import MetricRecord, RecipeOverrides, SuperbTask, read_yaml

SPLITS = {"train": "train-clean-100", "valid": "dev-clean", "test": "test-clean"}
LIBRISPEECH_LAYOUT = """  <data>/SPEAKERS.TXT      header ';ID |SEX| SUBSET |MINUTES| NAME', then one 'ID | SEX | SUBSET | MINUTES | NAME' line a speaker
  <data>/{train-clean-100,dev-clean,test-clean}/<spk>/<chapter>/<spk>-<chapter>-<utt>.flac
  <data>/{...}/<spk>/<chapter>/<spk>-<chapter>.trans.txt   lines '<spk>-<chapter>-<utt> TRANSCRIPT'"""


def librispeech_root(data: str, layout: str = LIBRISPEECH_LAYOUT) -> Path:
    """The folder holding SPEAKERS.TXT and the splits: ``data`` itself or ``data/LibriSpeech``."""
    root = require(Path(data), "LibriSpeech root", layout)
    if not (root / "SPEAKERS.TXT").is_file() and (root / "LibriSpeech" / "SPEAKERS.TXT").is_file():
        root = root / "LibriSpeech"
    require(root / "SPEAKERS.TXT", "LibriSpeech speaker list", layout)
    speakers, lines = set(), (root / "SPEAKERS.TXT").read_text().splitlines()
    header = next((i for i, line in enumerate(lines) if all(k in line for k in ("SEX", "SUBSET", "MINUTES", "NAME"))),
                  None)
    if header is None:
        raise ValueError(f"{root / 'SPEAKERS.TXT'}: no header line naming SEX, SUBSET, MINUTES and NAME\n"
                         f"expected layout:\n{layout}")
    for i, line in enumerate(lines[header + 1:], header + 2):
        if len(line.split("|")) != 5:  # s3prl reads every line after the header as 5 fields
            raise ValueError(f"{root / 'SPEAKERS.TXT'}:{i}: expected 'ID | SEX | SUBSET | MINUTES | NAME', got {line!r}")
        speakers.add(line.split("|")[0].strip())
    for split in SPLITS.values():
        folder = require(root / split, f"LibriSpeech split {split}", layout)
        flacs = list(folder.rglob("*.flac"))
        if not flacs:
            raise ValueError(f"{folder} holds no .flac files\nexpected layout:\n{layout}")
        transcripts: dict[Path, set] = {}
        for flac in flacs:
            spk, chapter = flac.stem.split("-")[:2]
            trans = require(flac.parent / f"{spk}-{chapter}.trans.txt", "LibriSpeech transcript", layout)
            if trans not in transcripts:
                transcripts[trans] = {line.split(" ", 1)[0] for line in trans.read_text().splitlines() if line.strip()}
            if flac.stem not in transcripts[trans]:
                raise ValueError(f"{flac}: no line for {flac.stem} in {trans}")
            if spk not in speakers:
                raise ValueError(f"speaker {spk} ({flac}) is not listed in {root / 'SPEAKERS.TXT'}")
    return root


def read_pairs(folder: Path) -> tuple[int, int]:
    """``(utterances, reference tokens)`` from s3prl's ``ref`` file (``uid text`` a line)."""
    ref = folder / "ref"
    if not ref.is_file():
        raise RuntimeError(f"s3prl finished without {ref}")
    lines = [line.split()[1:] for line in ref.read_text().splitlines() if line.strip()]
    return len(lines), sum(len(words) for words in lines)


class SpeechRecognition(SuperbTask):
    name = "asr"
    recipe = "SuperbASR"
    metric = "wer"
    higher_is_better = False
    layout = LIBRISPEECH_LAYOUT
    default_steps = 300
    default_batch_size = 16
    default_lr = 1e-4

    def resolve(self, data: str, test_data: str = "") -> dict[str, Path]:
        return {"root": librispeech_root(data, self.layout)}

    def configure(self, conf: dict, roots: dict[str, Path], overrides: RecipeOverrides) -> None:
        conf["prepare_data"] = {"dataset_root": str(roots["root"]), "train_sets": [SPLITS["train"]],
                                "valid_sets": [SPLITS["valid"]], "test_sets": [SPLITS["test"]], "n_jobs": 1}
        conf["build_batch_sampler"]["train"]["batch_size"] = overrides.batch_size
        model_conf = (conf.get("build_downstream") or {}).get("model_conf")
        if overrides.rnn_hidden and model_conf is not None:
            model_conf["proj_size"] = overrides.rnn_hidden
            model_conf["hidden_size"] = [overrides.rnn_hidden] * len(model_conf["hidden_size"])
        conf.pop("save_model", None)  # an unresolved ${...} interpolation outside s3prl's own runner

    def read_result(self, target_dir: Path, roots: dict[str, Path], overrides: RecipeOverrides) -> MetricRecord:
        folder = target_dir / "evaluate" / "valid_best" / SPLITS["test"]
        test = read_yaml(folder / "result.yaml")
        n, units = read_pairs(folder)
        extra = {k: float(v) for k, v in test.items() if k != self.metric and isinstance(v, (int, float))}
        return MetricRecord(task=self.name, metric=self.metric, value=float(test[self.metric]),
                            higher_is_better=False, test_n=n, units=units, extra=extra)
