"""``stackdistill`` command line: a thin layer over the library functions.

Every setting of a command is a flag named after its config field (``--train.max_steps 100``)
and can also come from ``--config file.yaml``; ``stackdistill config CMD`` prints the defaults.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import warnings
from pathlib import Path

import yaml

from distill.core.bench_record import BenchmarkIncomplete
from distill.core.config import add_config_arguments, config_from_args, to_dict
from distill.core.fsutil import remove_if_empty


def _commands():
    """name -> (help, config class, function); imported lazily so --help is fast."""
    from distill.deploy.export import ExportConfig, export
    from distill.jobs.analyze import AnalyzeConfig, run_analysis
    from distill.jobs.bench_run import BenchCommandConfig, run_bench
    from distill.jobs.cache_build import CacheBuildConfig, run_cache_build
    from distill.jobs.finetune_run import FinetuneConfig, finetune
    from distill.jobs.paper import PaperConfig, paper_command
    from distill.jobs.pipeline import PipelineConfig, run_pipeline
    from distill.jobs.prune_run import PruneConfig, run_prune
    from distill.training.distillation import DistillConfig, distill
    from tasks.corpora.prompts import PromptsConfig, build_prompts
    from tasks.corpora.superb_corpora import (
        FluentCommandsConfig,
        LibriSpeechConfig,
        VoxCelebConfig,
        build_fluent_commands,
        build_librispeech,
        build_voxceleb1,
    )
    from tasks.corpora.synthetic import SentencesConfig, SpeechCommandsConfig, build_sentences, build_speech_commands
    from tasks.superb.evaluate import EvaluateConfig
    from tasks.superb.suite import evaluate

    return {
        "pipeline": ("the main job: corpora, distil, evaluate teacher and student on KS, export, report",
                     PipelineConfig, run_pipeline),
        "distill": ("distil a student from a teacher on unlabeled audio (accelerate launch works)",
                    DistillConfig, distill),
        "finetune": ("fine-tune a teacher (or a student) with a classification head on a labelled corpus "
                     "(ks, label folders, VoxCeleb1 sid)", FinetuneConfig, finetune),
        "paper": ("the redundancy paper's protocol: fine-tuned teacher, mimic stage 1 + 2, baselines",
                  PaperConfig, paper_command),
        "analyze": ("layer x layer similarity (cosine, CKA, mutual k-NN, dCor), blocks, heatmaps",
                    AnalyzeConfig, run_analysis),
        "prune": ("pruning curves per ordering and CoMFLP search, without retraining", PruneConfig, run_prune),
        "evaluate": ("SUPERB task (ks, sid, ic, er, pr, asr) through s3prl's own recipe on a teacher, student or "
                     "exported folder; --suite ks,sid,... --models A,B: the SUPERB table", EvaluateConfig, evaluate),
        "bench": ("parameters, MACs, CPU time per second of audio, real-time factor and peak memory of models, "
                  "side by side", BenchCommandConfig, run_bench),
        "export": ("export a trained student as a Hugging Face folder", ExportConfig, export),
        "cache build": ("compute the teacher's targets once (float16 shards) for distill --train.cache true",
                        CacheBuildConfig, run_cache_build),
        "corpus ks": ("synthesise Speech Commands v0.01 (train + test roots) with espeak-ng",
                      SpeechCommandsConfig, build_speech_commands),
        "corpus sentences": ("synthesise unlabeled read speech (LibriSpeech layout) with espeak-ng",
                             SentencesConfig, build_sentences),
        "corpus sid": ("synthesise VoxCeleb1 (identification split) with espeak voices as speakers",
                       VoxCelebConfig, build_voxceleb1),
        "corpus ic": ("synthesise Fluent Speech Commands (action / object / location)",
                      FluentCommandsConfig, build_fluent_commands),
        "corpus prompts": ("real recorded speech: Asterisk's telephone prompts (5 languages, about 2.2 h) as 16 kHz "
                           "WAV + manifest, held-out split, English in LibriSpeech layout", PromptsConfig, build_prompts),
        "corpus librispeech": ("synthesise LibriSpeech (exact transcripts, SPEAKERS.TXT, an espeak-ng phoneme "
                               "lexicon for PR)", LibriSpeechConfig, build_librispeech),
    }


def _quiet_third_party() -> None:
    warnings.filterwarnings("ignore", category=UserWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    for name in ("accelerate", "s3prl", "matplotlib", "transformers", "torchaudio"):
        logging.getLogger(name).setLevel(logging.WARNING)


def build_parser(commands) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="stackdistill", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    groups: dict[str, argparse._SubParsersAction] = {}
    for name, (help_, cls, _fn) in commands.items():
        if " " in name:  # "corpus ks": a sub-command of a group
            group, leaf = name.split(" ", 1)
            if group not in groups:
                groups[group] = sub.add_parser(group, help=f"{group} commands").add_subparsers(
                    dest="leaf", required=True)
            p = groups[group].add_parser(leaf, help=help_, description=help_)
        else:
            p = sub.add_parser(name, help=help_, description=help_)
        add_config_arguments(p, cls)
        if name == "bench":
            p.add_argument("positional_models", nargs="*", metavar="MODEL", help="models to measure (= --models)")
    p = sub.add_parser("config", help="print a command's default settings as YAML")
    p.add_argument("name", nargs="+", help=f"one of: {', '.join(sorted(commands))}")
    return parser


def main(argv: list[str] | None = None) -> int:
    commands = _commands()
    args = build_parser(commands).parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    _quiet_third_party()
    if args.command == "config":
        name = " ".join(args.name)
        if name not in commands:
            print(f"stackdistill config: unknown command {name!r}; known: {sorted(commands)}", file=sys.stderr)
            return 2
        print(yaml.safe_dump(to_dict(commands[name][1]()), sort_keys=False), end="")
        return 0
    command = args.command + (f" {args.leaf}" if getattr(args, "leaf", None) else "")
    _help, cls, fn = commands[command]
    try:
        cfg = config_from_args(cls, args)
        if getattr(args, "positional_models", None):
            cfg.models = list(args.positional_models)
        out = Path(cfg.out) if isinstance(getattr(cfg, "out", None), str) and cfg.out else None
        existed = out is not None and out.exists()
        try:
            result = fn(cfg)
        except BaseException:
            if out is not None and not existed:  # failed before doing work: leave no empty folder behind
                remove_if_empty(out)
            raise
    except ValueError as err:
        print(f"stackdistill {command}: error: {err}", file=sys.stderr)
        return 2
    except BenchmarkIncomplete as err:  # the parts that ran are in its JSON
        print(f"stackdistill {command}: {err}", file=sys.stderr)
        return 1
    if isinstance(result, dict):
        summary = {k: v for k, v in result.items() if k not in ("skipped",)}
        print(json.dumps(summary, indent=2, default=str))
    elif result is not None:
        print(result if not isinstance(result, tuple) else "\n".join(map(str, result)))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
