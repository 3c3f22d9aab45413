"""The house's layout: no file imports itself back through others (no circle), and no package
imports one above it. Read from the source with ast, every import, local ones included.

The order, lowest first; a module imports only from its own package or from a lower level:

    0  common                         errors, files, device: plumbing everything shares
    1  configs, data, viz             the config parser; corpora and tokenizers; the views
    2  model                          the GPT, its decoding, checkpoints, GPT-2's weights
    3  training                       what train.py runs
    4  train.py, sample.py, lab, bench  the programs
"""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LEVELS = {"common": 0, "configs": 1, "data": 1, "viz": 1, "model": 2, "training": 3,
          "train": 4, "sample": 4, "lab": 4, "bench": 4}


def project_files() -> dict[str, Path]:
    """{module name: file} for every module of the project (tests/ and .venv/ left out)."""
    files = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        if parts[0] in ("tests", ".venv", "build") or parts[0].startswith("."):
            continue
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        files[name] = path
    return files


def imports(name: str, path: Path, modules) -> set[str]:
    """The project's modules that `name` imports, anywhere in the file."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()

    def add(target: str):
        # `from a.b import c`: a.b (and its packages) run, and a.b.c if c is a module
        while target and target not in modules:
            target = target.rpartition(".")[0]
        if target and target != name:
            found.add(target)

    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module
                sibling = f"{package}.{module.split('.')[0]}"
                if module.split(".")[0] not in LEVELS and sibling in modules:  # a script's (bench/)
                    module = f"{package}.{module}"
            targets = [module] + [f"{module}.{a.name}" for a in node.names]
        else:
            continue
        for target in targets:
            if target.split(".")[0] in LEVELS:
                add(target)
    return found


def graph() -> dict[str, set[str]]:
    files = project_files()
    return {name: imports(name, path, files) for name, path in files.items()}


def top(name: str) -> str:
    return name.split(".")[0]


def test_every_package_has_a_level():
    assert {top(name) for name in project_files()} == set(LEVELS)


def test_no_import_goes_up_or_sideways():
    wrong = [f"{a} imports {b} ({top(a)} is level {LEVELS[top(a)]}, {top(b)} level {LEVELS[top(b)]})"
             for a, targets in graph().items() for b in sorted(targets)
             if top(a) != top(b) and LEVELS[top(b)] >= LEVELS[top(a)]]
    assert not wrong, "\n".join(wrong)


def test_no_circle_between_files():
    g = graph()
    circles, done = [], set()

    def visit(node, path):
        if node in path:
            circles.append(path[path.index(node):] + [node])
            return
        if node in done:
            return
        for nxt in sorted(g[node]):
            visit(nxt, path + [node])
        done.add(node)

    for node in sorted(g):
        visit(node, [])
    assert not circles, "\n".join(" -> ".join(c) for c in circles)
