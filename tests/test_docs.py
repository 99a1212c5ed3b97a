"""Every command line shown in README.md and docs/*.md parses against the current CLI.

Collected from the documents (no model is loaded):

* fenced shell blocks (```bash, ```sh, unlabeled): lines invoking ``stackdistill``,
  ``.venv/bin/stackdistill``, ``python -m distill.cli`` or ``accelerate launch ... -m distill.cli``,
  joined across trailing backslashes, ``# comments`` dropped, each ``&&``-separated command alone
  (so ``scripts/setup.sh && ...`` checks the second half);
* inline code spans ``stackdistill <command> ...`` in prose and tables.

Each must name a command (``cache build``, ``corpus ks``, ... included), use only flags that command
has (spelled out in full: argparse would accept an abbreviation), parse, and build its config
(types, ``Literal`` choices, student kinds), and every choice-valued setting given (SUPERB tasks,
similarity measures, orderings, ...) must be one the code knows. Every ``--flag`` written anywhere
in the documents (table brace lists such as ``--train.{max_steps,lr}`` expanded) must be a flag of
some command, of ``accelerate launch`` where accelerate is spoken of, or of the script invoked.
Placeholders are fine as string values: ``...``, ``DIR``, ``/path/...``, ``<upstream>``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib
import io
import re
import shlex
import sys
import typing
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOC_FILES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
DOC_PAGES = ["cli", "students", "protocols", "superb", "cache-and-multi-gpu", "export", "benchmarks", "results",
             "layout", "dependencies", "real-speech"]

SHELL_LANGS = {"", "bash", "sh", "shell", "console", "zsh"}
FENCE = re.compile(r"^\s*(```+|~~~+)\s*([\w+-]*)")
# where a command starts: the line start or after `&&` / `;`
INVOCATION = re.compile(r"(?:^|&&|;)\s*(?:\S*/)?(?:stackdistill\b|python3?\s+-m\s+distill\.cli\b|accelerate\s+launch\b"
                        r"|python3?\s+scripts/)")
INLINE_SPAN = re.compile(r"(?<!`)`([^`]+)`(?!`)")
FLAG = re.compile(r"(?<![\w-])--(?=[A-Za-z{<])[A-Za-z0-9_.{},<>*-]*")
PLACEHOLDER = re.compile(r"^(PLACEHOLDER|[A-Z][A-Z0-9_]*(\.\w+)?|<[^>]+>)$")  # DIR, M, FILE.yaml, <upstream>
ELLIPSIS_VALUE = "PLACEHOLDER"

# choice-valued settings whose allowed values live in a registry or constant of the code (typing.Literal
# fields are checked by the config itself): field name -> name of the constant (a tuple or a dict's keys)
CHOICES = {
    "granularity": "GRANULARITIES", "mode": "MODES", "measures": "MEASURES", "block_measure": "MEASURES",
    "measure": "MEASURES", "strategy": "STRATEGIES", "orderings": "ORDERINGS", "metric": "METRICS",
    "noise_kinds": "NOISE_KINDS", "task": "TASKS", "suite": "TASKS", "tasks": "TASKS",
}
COMMA_SEPARATED = {"suite"}  # str fields holding a comma-separated list


# ---------------------------------------------------------------- reading the documents


@dataclass(frozen=True)
class Shown:
    """A piece of a document: a command line, or text whose ``--flags`` are checked."""

    path: str  # relative to the repository
    line: int
    text: str
    context: str = ""  # the enclosing block or paragraph

    def where(self) -> str:
        return f"{self.path}:{self.line}: {self.text}"


def _rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def _blocks(path: Path):
    """(kind, language, first line number, lines): fenced blocks and prose paragraphs."""
    lines = path.read_text().split("\n")
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if m:
            fence, lang = m.group(1), m.group(2).lower()
            j = i + 1
            while j < len(lines) and not lines[j].strip().startswith(fence[:3]):
                j += 1
            yield "fence", lang, i + 2, lines[i + 1:j]
            i = j + 1
        elif lines[i].strip():
            j = i
            while j < len(lines) and lines[j].strip() and not FENCE.match(lines[j]):
                j += 1
            yield "prose", "", i + 1, lines[i:j]
            i = j
        else:
            i += 1


def _logical_lines(first: int, lines: list[str]):
    """(line number, text) with trailing-backslash continuations joined."""
    buf, start = [], None
    for n, line in enumerate(lines, first):
        if start is None:
            start = n
        if line.rstrip().endswith("\\"):
            buf.append(line.rstrip()[:-1])
            continue
        buf.append(line)
        yield start, " ".join(part.strip() for part in buf)
        buf, start = [], None
    if buf:
        yield start, " ".join(part.strip() for part in buf)


def _span_line(first: int, text: str, offset: int) -> int:
    return first + text.count("\n", 0, offset)


@lru_cache(maxsize=None)
def scan(path: Path) -> tuple[tuple[Shown, ...], tuple[Shown, ...]]:
    """(command lines, pieces whose flags are checked) of one document."""
    commands, pieces = [], []
    rel = _rel(path)
    for kind, lang, first, lines in _blocks(path):
        block = "\n".join(lines)
        if kind == "fence":
            for n, text in _logical_lines(first, lines):
                if lang in SHELL_LANGS and INVOCATION.search(text.lstrip()) and not text.lstrip().startswith("#"):
                    commands.append(Shown(rel, n, text, block))
                pieces.append(Shown(rel, n, text, block))
            continue
        prose = INLINE_SPAN.sub(lambda m: " " * len(m.group(0)), block)  # the text around the spans
        for m in INLINE_SPAN.finditer(block):
            span = " ".join(m.group(1).split())
            n = _span_line(first, block, m.start())
            if re.match(r"^(\S*/)?(stackdistill|python3? -m distill\.cli) +[a-z]", span) or \
                    re.match(r"^accelerate launch ", span):
                commands.append(Shown(rel, n, span, block))
            pieces.append(Shown(rel, n, span, block))
        for m in FLAG.finditer(prose):
            pieces.append(Shown(rel, _span_line(first, prose, m.start()), m.group(0), block))
    return tuple(commands), tuple(pieces)


def all_commands() -> list[Shown]:
    return [c for path in DOC_FILES for c in scan(path)[0]]


def all_pieces() -> list[Shown]:
    return [p for path in DOC_FILES for p in scan(path)[1]]


# ---------------------------------------------------------------- the CLI


def _import_first(*names: str):
    errors = []
    for name in names:
        try:
            return importlib.import_module(name)
        except ImportError as err:
            errors.append(f"{name}: {err}")
    raise ImportError("; ".join(errors))


class Cli:
    """The real parser and configs of ``stackdistill`` (wherever the modules live)."""

    def __init__(self):
        errors = []
        for name in ("distill.cli", "distill.jobs.cli"):  # the entry point, or where it delegates to
            try:
                mod = importlib.import_module(name)
            except ImportError as err:
                errors.append(f"{name}: {err}")
                continue
            if hasattr(mod, "_commands") and hasattr(mod, "build_parser"):
                break
            errors.append(f"{name}: no _commands / build_parser")
        else:
            raise ImportError("; ".join(errors))
        self.commands = mod._commands()
        self.parser: argparse.ArgumentParser = mod.build_parser(self.commands)
        self.config_from_args = _import_first("distill.core.config", "distill.core.config").config_from_args

    @staticmethod
    def subparsers(parser: argparse.ArgumentParser):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                return action
        return None

    @staticmethod
    def options(parser: argparse.ArgumentParser) -> set[str]:
        return {s for a in parser._actions for s in a.option_strings}

    def leaf_parsers(self):
        """(command words, parser) of every command."""
        def walk(parser, words):
            sub = self.subparsers(parser)
            if sub is None:
                yield words, parser
                return
            for name, child in sub.choices.items():
                yield from walk(child, [*words, name])
        yield from walk(self.parser, [])

    def all_flags(self) -> set[str]:
        flags = self.options(self.parser)
        for _words, parser in self.leaf_parsers():
            flags |= self.options(parser)
        return {f for f in flags if f.startswith("--")}


@pytest.fixture(scope="module")
def cli() -> Cli:
    return Cli()


@lru_cache(maxsize=None)
def accelerate_flags() -> frozenset[str]:
    from accelerate.commands.launch import launch_command_parser

    return frozenset(s for a in launch_command_parser()._actions for s in a.option_strings)


@lru_cache(maxsize=None)
def script_flags(script: str) -> frozenset[str]:
    path = ROOT / script
    if not path.is_file():
        return frozenset()
    return frozenset(re.findall(r"add_argument\(\s*\"(--[\w.-]+)\"", path.read_text()))


@lru_cache(maxsize=None)
def constant(name: str) -> frozenset[str]:
    """The values of a constant (tuple, or a dict's keys) of the code, wherever its module now lives."""
    found = set()
    for mod_name, mod in list(sys.modules.items()):
        if mod is None or not mod_name.split(".")[0] in ("distill", "tasks", "students"):
            continue
        value = getattr(mod, name, None)
        if isinstance(value, (tuple, list, frozenset, set, dict)) and value:
            found |= set(value)
    if not found:
        raise AssertionError(f"tests/test_docs.py: constant {name} not found in distill/, tasks/, students/: "
                             f"update CHOICES")
    return frozenset(found)


# ---------------------------------------------------------------- checking a command line


def _tokens(text: str) -> list[str]:
    try:
        return shlex.split(text, comments=True)
    except ValueError:  # an apostrophe in prose
        return text.split()


def split_invocation(text: str) -> list[tuple[str, list[str], list[str]]]:
    """(kind, accelerate args, stackdistill argv) of each command of a shell line.

    kind: ``cli`` (stackdistill argv), ``script:<path>`` (argv of a script), or ``other``.
    """
    out = []
    tokens = _tokens(text)
    segments, seg = [], []
    for t in tokens:
        if t in ("&&", ";", "||"):
            segments.append(seg)
            seg = []
        else:
            seg.append(t)
    segments.append(seg)
    for seg in segments:
        if not seg:
            continue
        head = seg[0]
        if head == "stackdistill" or head.endswith("/stackdistill"):
            out.append(("cli", [], seg[1:]))
        elif re.fullmatch(r"(\S*/)?python3?", head) and seg[1:3] == ["-m", "distill.cli"]:
            out.append(("cli", [], seg[3:]))
        elif re.fullmatch(r"(\S*/)?python3?", head) and len(seg) > 1 and seg[1].startswith("scripts/"):
            out.append((f"script:{seg[1]}", [], seg[2:]))
        elif head == "accelerate" and seg[1:2] == ["launch"]:
            rest = seg[2:]
            for i, t in enumerate(rest):
                if t in ("-m", "--module") and i + 1 < len(rest):
                    kind = "cli" if rest[i + 1] == "distill.cli" else "other"
                    out.append((kind, rest[:i], rest[i + 2:]))
                    break
            else:
                out.append(("other", rest, []))
        else:
            out.append(("other", [], seg))
    return out


def _ellipses(argv: list[str]) -> list[str]:
    """``--data ... --out X``: ``...`` is a value; an ellipsis anywhere else stands for omitted flags."""
    out = []
    for t in argv:
        if t == "...":
            if out and out[-1].startswith("--"):
                out.append(ELLIPSIS_VALUE)
            continue
        out.append(t)
    return out


def check_accelerate(args: list[str]) -> str | None:
    flags = accelerate_flags()
    for t in args:
        if t.startswith("-") and t.split("=")[0] not in flags:
            return f"{t.split('=')[0]} is not a flag of accelerate launch"
    from accelerate.commands.launch import launch_command_parser

    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            launch_command_parser().parse_args([*args, "-m", "distill.cli"])
        except SystemExit:
            return "accelerate launch: " + (err.getvalue().strip().splitlines() or ["refused"])[-1]
    return None


def _field_hints(obj) -> dict:
    try:
        return typing.get_type_hints(type(obj))
    except Exception:  # a config whose annotations do not resolve here: only the fields' values are walked
        return {}


def check_choices(cfg) -> str | None:
    """Every choice-valued setting one the code knows (placeholders and empty values skipped)."""
    def walk(obj, prefix):
        if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
            hints = _field_hints(obj)
            for f in dataclasses.fields(obj):
                value = getattr(obj, f.name)
                if f.name == "sections" and isinstance(value, dict):  # a student spec's per-kind settings
                    for kind, options in value.items():
                        yield from walk(options, f"{prefix}{kind}.")
                    continue
                if f.name in CHOICES and typing.get_origin(hints.get(f.name)) is not typing.Literal:
                    yield from check(f.name, value, f"--{prefix}{f.name}")
                yield from walk(value, f"{prefix}{f.name}.")
        elif isinstance(obj, (list, tuple)):
            for item in obj:
                if dataclasses.is_dataclass(item):
                    yield from walk(item, prefix)

    def check(name, value, flag):
        if isinstance(value, str):
            values = value.split(",") if name in COMMA_SEPARATED else [value]
        elif isinstance(value, (list, tuple)):
            values = list(value)
        else:
            return
        allowed = constant(CHOICES[name])
        for v in values:
            if not isinstance(v, str) or v in ("", "...") or PLACEHOLDER.match(v):
                continue
            if v not in allowed:
                yield f"{flag}: {v!r} is not one of {', '.join(sorted(allowed))}"

    problems = list(walk(cfg, ""))
    return problems[0] if problems else None


def check_cli_argv(cli: Cli, argv: list[str]) -> str | None:
    """Why ``stackdistill <argv>`` does not parse against the current CLI (None: it does)."""
    argv = [t for t in _ellipses(argv) if t not in ("-h", "--help")]
    parser, words, i = cli.parser, [], 0
    while i < len(argv) and argv[i].startswith("-"):  # options before the command (-v)
        if argv[i] not in cli.options(parser):
            return f"{argv[i]} is not an option of stackdistill"
        i += 1
    sub = cli.subparsers(parser)
    while sub is not None:
        if i >= len(argv):
            return f"no command after {' '.join(['stackdistill', *words])}"
        if argv[i] not in sub.choices:
            return (f"{' '.join([*words, argv[i]])!r} is not a command; known: "
                    f"{', '.join(sorted(sub.choices))}")
        words.append(argv[i])
        parser = sub.choices[argv[i]]
        i += 1
        sub = cli.subparsers(parser)
    command = " ".join(words)
    known = cli.options(parser)
    for t in argv[i:]:
        if t.startswith("--") and t.split("=")[0] not in known:
            return f"{t.split('=')[0]} is not a flag of stackdistill {command}"
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            args = cli.parser.parse_args(argv)
        except SystemExit:
            return "argparse: " + (err.getvalue().strip().splitlines() or ["refused"])[-1]
    if command == "config":
        name = " ".join(args.name)
        if "<" not in name and name not in cli.commands:
            return f"stackdistill config {name}: not a command; known: {', '.join(sorted(cli.commands))}"
        return None
    cls = cli.commands[command][1]
    args.config = None  # a --config FILE shown in a document is a placeholder: its flags are what is checked
    try:
        cfg = cli.config_from_args(cls, args)
    except Exception as err:  # ValueError from the config, or YAML refusing a value
        return f"stackdistill {command}: {type(err).__name__}: {err}"
    if getattr(args, "positional_models", None):
        cfg.models = list(args.positional_models)
    return check_choices(cfg)


def check_line(cli: Cli, text: str) -> str | None:
    """Why a documented command line fails (None: every command of it is fine)."""
    found = False
    for kind, accel, argv in split_invocation(text):
        if accel:
            problem = check_accelerate(accel)
            if problem:
                return problem
        if kind == "cli":
            found = True
            problem = check_cli_argv(cli, argv)
            if problem:
                return problem
        elif kind.startswith("script:"):
            flags = script_flags(kind.split(":", 1)[1])
            for t in argv:
                if t.startswith("--") and t.split("=")[0] not in flags:
                    return f"{t.split('=')[0]} is not a flag of {kind.split(':', 1)[1]}"
    if not found and not any(k.startswith("script:") for k, _a, _v in split_invocation(text)) \
            and "accelerate" not in text:
        return "no stackdistill command found in this line"
    return None


# ---------------------------------------------------------------- checking any --flag


def expand_braces(flag: str) -> list[str]:
    """``--train.{max_steps,lr,...}`` -> ``--train.max_steps``, ``--train.lr`` (``...`` dropped)."""
    m = re.search(r"\{([^{}]*)\}", flag)
    if not m:
        return [flag]
    out = []
    for item in m.group(1).split(","):
        if item.strip() in ("...", ""):
            continue
        out += expand_braces(flag[:m.start()] + item.strip() + flag[m.end():])
    return out


def _clean_flag(raw: str) -> str:
    flag = raw
    while flag and flag[-1] in ".,-" and not flag.endswith(".*"):
        flag = flag[:-1]
    return flag


def flag_known(flag: str, known: set[str]) -> bool:
    if "<" in flag or flag.endswith("*"):
        pattern = re.escape(flag)
        pattern = re.sub(r"<[^>]*>", "[^.]+", pattern.replace(r"\<", "<").replace(r"\>", ">"))
        pattern = pattern.replace(r"\.\*", r"\..+").replace(r"\*", ".*")
        return any(re.fullmatch(pattern, k) for k in known)
    return flag in known


def check_piece(cli_flags: set[str], piece: Shown) -> list[str]:
    known = set(cli_flags)
    if "accelerate" in piece.context:
        known |= accelerate_flags()
    scripts = re.findall(r"scripts/[\w.-]+\.py", piece.text)
    if scripts:
        known = set().union(*(script_flags(s) for s in scripts)) | {"--help"}
    problems = []
    for raw in FLAG.findall(piece.text):
        flag = _clean_flag(raw)
        for expanded in expand_braces(flag):
            if not flag_known(expanded, known):
                what = f" (from {flag})" if expanded != flag else ""
                where = (f"the flags of {', '.join(scripts)}" if scripts else "any stackdistill command" +
                         (" nor of accelerate launch" if "accelerate" in piece.context else ""))
                problems.append(f"{piece.path}:{piece.line}: {expanded}{what} is not a flag of {where}")
    return problems


# ---------------------------------------------------------------- the tests


COMMANDS = all_commands()


def test_documents_show_commands():
    """The collector finds the documents' commands (an empty collection would check nothing)."""
    assert (ROOT / "docs").is_dir()
    by_file = {}
    for c in COMMANDS:
        by_file[c.path] = by_file.get(c.path, 0) + 1
    assert by_file.get("README.md", 0) >= 5, by_file
    assert by_file.get("docs/cli.md", 0) >= 20, by_file
    for page in ("students", "protocols", "superb", "cache-and-multi-gpu", "export", "results"):
        assert by_file.get(f"docs/{page}.md", 0) >= 1, (page, by_file)
    texts = " ".join(c.text for c in COMMANDS)
    for shape in ("scripts/setup.sh && .venv/bin/stackdistill pipeline", "accelerate launch", "cache build",
                  "stackdistill config"):
        assert shape in texts, shape


@pytest.mark.parametrize("shown", COMMANDS, ids=[f"{c.path}:{c.line}" for c in COMMANDS])
def test_command_line_parses(cli, shown):
    problem = check_line(cli, shown.text)
    assert problem is None, f"{shown.where()}\n  -> {problem}"


def test_every_flag_exists(cli):
    known = cli.all_flags()
    problems = [p for piece in all_pieces() for p in check_piece(known, piece)]
    assert not problems, "flags in the documents that no command has:\n" + "\n".join(problems)


def _slug(heading: str) -> str:
    text = re.sub(r"[`*_]", lambda m: "_" if m.group(0) == "_" else "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    anchors = set()
    for kind, _lang, _first, lines in _blocks(path):
        if kind == "prose":
            anchors |= {_slug(line.lstrip("#")) for line in lines if re.match(r"^#{1,6} ", line)}
    return anchors


def test_pages_and_links():
    """Every page has a title and a one-line summary, links back to the README, the README links every
    page, and every relative link (and its #anchor) resolves."""
    readme = (ROOT / "README.md").read_text()
    problems = []
    for page in DOC_PAGES:
        path = ROOT / "docs" / f"{page}.md"
        if not path.is_file():
            problems.append(f"docs/{page}.md is missing")
            continue
        lines = path.read_text().split("\n")
        if not lines[0].startswith("# ") or lines[1].strip() or not lines[2].strip():
            problems.append(f"docs/{page}.md: a '# title', a blank line and a one-line summary come first")
        if "](../README.md" not in path.read_text():
            problems.append(f"docs/{page}.md: no link back to ../README.md")
        if f"](docs/{page}.md)" not in readme:
            problems.append(f"README.md does not link docs/{page}.md")
    for path in DOC_FILES:
        for n, line in enumerate(path.read_text().split("\n"), 1):
            for target in re.findall(r"\]\(([^)\s]+)\)", line):
                if re.match(r"^[a-z]+:", target):
                    continue
                file, _, anchor = target.partition("#")
                dest = (path.parent / file).resolve() if file else path
                if not dest.exists():
                    problems.append(f"{_rel(path)}:{n}: link {target}: no such file")
                elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
                    problems.append(f"{_rel(path)}:{n}: link {target}: no such heading")
    assert not problems, "\n".join(problems)


def test_readme_is_a_front_door():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.encode()) <= 15 * 1024, len(readme.encode())  # at most about 15 KB
    assert "scripts/setup.sh && .venv/bin/python -m pytest -q tests\n" in readme  # .ci/run runs exactly this
    start, end = readme.index("<!-- results:start -->"), readme.index("<!-- results:end -->")
    assert start < end and "| model |" in readme[start:end]


@pytest.mark.parametrize("line, fault", [
    ("stackdistill distil --teacher x", "is not a command"),  # a command that does not exist
    ("stackdistill corpus kws --out x", "is not a command"),  # nor a two-word one
    ("stackdistill distill --train.max_stepz 5", "is not a flag"),  # an unknown flag
    ("stackdistill distill --train.max_step 5", "is not a flag"),  # an abbreviation argparse would take
    ("stackdistill distill --train.max_steps many", "expects an integer"),  # a bad type
    ("stackdistill distill --train.mixed_precision fp8", "must be one of"),  # a bad Literal choice
    ("stackdistill distill --student.kind tiny", "unknown student kind"),  # a kind not registered
    ("stackdistill export --format tflite", "must be one of"),
    ("stackdistill evaluate --task kws", "is not one of"),  # a SUPERB task not registered
    ("stackdistill evaluate --suite ks,kws", "is not one of"),
    ("stackdistill pipeline --tasks ks,kws", "is not one of"),  # a comma-separated list with an unknown task
    ("stackdistill analyze --similarity.granularity tokens", "is not one of"),
    ("stackdistill prune --comflp.strategy random", "is not one of"),
    ("stackdistill prune --orderings '[last, middle]'", "is not one of"),
    ("stackdistill config distil", "not a command"),
    ("accelerate launch --multi_gpus -m distill.cli distill", "not a flag of accelerate launch"),
    ("accelerate launch --num_processes four -m distill.cli distill", "accelerate launch:"),
    ("scripts/setup.sh && .venv/bin/stackdistill pipline", "is not a command"),
    (".venv/bin/python scripts/bench_train.py --outdir x", "is not a flag of scripts/bench_train.py"),
])
def test_checks_catch_drift(cli, line, fault):
    """Each check fails on a broken line (and the documented shapes of the same lines pass)."""
    problem = check_line(cli, line)
    assert problem is not None and fault in problem, (line, problem)


@pytest.mark.parametrize("text, fault", [
    ("`--train.{max_steps,lrate,...}`", "--train.lrate (from --train.{max_steps,lrate,...})"),
    ("`--student.<kind>.mimic_width`", "--student.<kind>.mimic_width"),
    ("`--papers.*`", "--papers.*"),
    ("with its own --machine_rank", "--machine_rank"),  # accelerate's, but accelerate is not spoken of here
])
def test_flag_check_catches_drift(cli, text, fault):
    problems = check_piece(cli.all_flags(), Shown("x.md", 1, text, text))
    assert any(fault in p for p in problems), problems
    assert not check_piece(cli.all_flags(), Shown("x.md", 1, "`--train.{max_steps,lr,...}` `--student.<kind>.*` "
                                                  "`--{train,valid,test}_per_speaker`", ""))
