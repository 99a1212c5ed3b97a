"""The tree mirrors the architecture: every import points down, and no module imports itself in a circle.

The order of the layers is written once, here (low to high); a module may import its own layer
and any layer below, never one above, at module level or inside a function. The entry points
(``distill/__init__.py``, ``distill/cli.py``) may import anything and nothing imports them.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("distill", "students", "tasks")
LAYERS = (
    "distill.core",       # the model protocol and building blocks
    "distill.data",       # audio, listing, batches, the target cache
    "distill.analysis",   # similarity, blocks, pruning orderings, CoMFLP
    "students",           # the student kinds
    "distill.models",     # loading any model: teachers, students, classifiers
    "distill.training",   # the loop, checkpoints, losses, distillation, fine-tuning
    "distill.deploy",     # export, ONNX, bench
    "tasks.corpora",      # synthetic and labelled corpora
    "tasks.probe",        # the quick linear probe
    "tasks.superb",       # SUPERB tasks through s3prl
    "distill.jobs",       # pipeline, paper, commands: the only layer importing tasks/
)
ENTRY_POINTS = ("distill", "distill.cli", "tasks")  # the public API, the CLI shim, an empty package root


def module_files() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = path
    return found


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> list[tuple[str, int]]:
    """``(imported module of ours, line)`` for every import in ``path``, wherever it stands."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            # ``from pkg import submodule`` imports the submodule
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
        else:
            continue
        for target in targets:
            while target and target not in modules:  # ``import a.b.c`` names module a.b.c or a package above
                target = target.rpartition(".")[0]
            if target.split(".")[0] in PACKAGES and target:
                out.append((target, node.lineno))
    return out


def layer_of(name: str) -> int | None:
    best = None
    for i, prefix in enumerate(LAYERS):
        if name == prefix or name.startswith(prefix + "."):
            if best is None or len(prefix) > len(LAYERS[best]):
                best = i
    return best


def upward_imports(graph: dict[str, list[tuple[str, int]]], modules: dict[str, Path]) -> list[str]:
    problems = []
    for source, targets in graph.items():
        if source in ENTRY_POINTS:
            continue
        for target, line in targets:
            if target in ENTRY_POINTS:
                problems.append(f"{modules[source]}:{line}: {source} imports the entry point {target}")
                continue
            low, high = layer_of(target), layer_of(source)
            if low is None or high is None:
                problems.append(f"{modules[source]}:{line}: {source} or {target} is in no layer of LAYERS")
            elif low > high:
                problems.append(f"{modules[source]}:{line}: {source} ({LAYERS[high]}) imports {target} "
                                f"({LAYERS[low]}), a layer above it")
    return problems


def cycles(graph: dict[str, list[tuple[str, int]]]) -> list[list[str]]:
    """Every import circle found by a depth-first search (each reported once, from its first module)."""
    found, state = [], {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = "open"
        stack.append(node)
        for target, _ in graph.get(node, []):
            if target == node or target in ENTRY_POINTS:
                continue
            if state.get(target) == "open":
                found.append(stack[stack.index(target):] + [target])
            elif target not in state:
                visit(target, stack)
        stack.pop()
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [])
    return found


def _graph():
    modules = module_files()
    return {name: imports_of(name, path, modules) for name, path in modules.items()}, modules


def test_every_import_points_down():
    graph, modules = _graph()
    assert len(modules) > 60
    problems = upward_imports(graph, modules)
    assert not problems, "imports that point up:\n" + "\n".join(problems)


def test_no_import_circle_anywhere():
    graph, _ = _graph()
    found = cycles(graph)
    assert not found, "import circles:\n" + "\n".join(" -> ".join(c) for c in found)


def test_every_module_sits_in_a_layer():
    _, modules = _graph()
    loose = [m for m in modules if m not in ENTRY_POINTS and layer_of(m) is None]
    assert not loose, f"modules in no layer of LAYERS: {loose}"


def test_the_checks_catch_an_upward_import_and_a_circle(tmp_path):
    """The checker itself, on made-up modules: a core module importing a job, and a two-module circle."""
    modules = {"distill.core.a": tmp_path / "a.py", "distill.jobs.b": tmp_path / "b.py",
               "distill.core.c": tmp_path / "c.py"}
    graph = {"distill.core.a": [("distill.jobs.b", 3), ("distill.core.c", 4)],
             "distill.jobs.b": [("distill.core.a", 1)],
             "distill.core.c": [("distill.core.a", 2)]}
    problems = upward_imports(graph, modules)
    assert len(problems) == 1 and "distill.core.a (distill.core) imports distill.jobs.b" in problems[0]
    assert ["distill.core.a", "distill.core.c", "distill.core.a"] in cycles(graph)


def test_the_public_api_resolves():
    """``from distill import ...`` for what the README shows in Python (imported on first use)."""
    import distill

    for name in distill.__all__:
        assert getattr(distill, name) is not None, name
    from distill import DistillConfig, distill as run, load_student, load_teacher

    assert callable(run) and callable(load_teacher) and callable(load_student) and DistillConfig().train.max_steps
