"""The import graph of src/diffrep has no upward edges (issue 10 item 7).

Every module belongs to a layer; a module may import from its own layer or a lower one, never a
higher one. Imports inside functions count too: a lazy import hides a cycle from Python, not from
the design. The layers, lowest first (a module takes the layer of its longest matching prefix):

    base       errors, atomic, jsonutil, validate, registry, allocator  (no diffrep imports but
               each other)
    core       data, distributions, nets, distributed, checkpoint (saves any nn.Module)
    diffusion  diffusion
    priors     priors
    methods    methods, frozen (a frozen pre-trained model that methods compose; "run:DIR"
               rebuilds a method, so the two share a layer)
    train      train
    eval       eval (functions of a method and data -> eval.json and figures)
    report     report, metric_info (reads run directories; imports eval.plots)
    config     config (the schema: data, methods, train and eval sections)
    runs       runs (run directories: train, load, evaluate, fit a prior)
    app        demo, cli

A new top-level module fails `test_every_module_has_a_layer`: add it to LAYERS below.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"

LAYERS: list[tuple[str, ...]] = [
    (
        "diffrep",  # the package __init__ (version only)
        "diffrep.errors",
        "diffrep.atomic",
        "diffrep.jsonutil",
        "diffrep.validate",
        "diffrep.registry",
        "diffrep.allocator",
    ),
    (
        "diffrep.data",
        "diffrep.distributions",
        "diffrep.nets",
        "diffrep.distributed",
        "diffrep.checkpoint",
    ),
    ("diffrep.diffusion",),
    ("diffrep.priors",),
    ("diffrep.methods", "diffrep.frozen"),
    ("diffrep.train",),
    ("diffrep.eval",),
    ("diffrep.report", "diffrep.metric_info"),
    ("diffrep.config",),
    ("diffrep.runs",),
    ("diffrep.demo", "diffrep.cli"),
]


def layer_of(module: str) -> int | None:
    """Index in LAYERS of the longest prefix of `module` (a dotted name), or None."""
    best, best_len = None, -1
    for i, prefixes in enumerate(LAYERS):
        for p in prefixes:
            if (module == p or module.startswith(p + ".")) and len(p) > best_len:
                best, best_len = i, len(p)
    return best


def module_name(path: Path, src: Path = SRC) -> str:
    parts = list(path.relative_to(src).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports(path: Path, src: Path = SRC) -> list[tuple[str, int]]:
    """(imported diffrep module, line) for every import in the file, at any depth."""
    tree = ast.parse(path.read_text(), filename=str(path))
    name = module_name(path, src)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against the package
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            out.append((mod, node.lineno))
            # `from diffrep.eval import plots` imports the submodule diffrep.eval.plots
            out += [(f"{mod}.{a.name}", node.lineno) for a in node.names]
    return [(m, line) for m, line in out if m == "diffrep" or m.startswith("diffrep.")]


def all_modules(src: Path = SRC) -> dict[str, Path]:
    return {module_name(p, src): p for p in sorted((src / "diffrep").rglob("*.py"))}


def test_every_module_has_a_layer():
    missing = [m for m in all_modules() if layer_of(m) is None]
    assert not missing, f"give these modules a layer in tests/test_layering.py LAYERS: {missing}"


def upward_imports(src: Path = SRC) -> list[str]:
    mods = all_modules(src)
    bad = []
    for name, path in mods.items():
        mine = layer_of(name)
        for target, line in imports(path, src):
            if target not in mods and target.rpartition(".")[0] in mods:
                continue  # `from pkg.mod import name`: the name is not a module; pkg.mod counted
            theirs = layer_of(target)
            if mine is not None and theirs is not None and theirs > mine:
                bad.append(
                    f"{path.relative_to(src)}:{line} {name} ({LAYERS[mine][0]}) imports "
                    f"{target} ({LAYERS[theirs][0]})"
                )
    return bad


def test_no_upward_imports():
    bad = upward_imports()
    assert not bad, "upward imports:\n" + "\n".join(bad)


def test_the_checker_sees_lazy_and_relative_imports(tmp_path):
    # A fixture package with an upward import hidden inside a function must be caught.
    pkg = tmp_path / "diffrep"
    (pkg / "data").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "config.py").write_text("X = 1\n")
    (pkg / "data" / "__init__.py").write_text("")
    (pkg / "data" / "core.py").write_text("def f():\n    from ..config import X\n    return X\n")
    bad = upward_imports(tmp_path)
    assert len(bad) == 1 and "diffrep.data.core" in bad[0] and "diffrep.config" in bad[0]


def import_cycles(src: Path = SRC) -> list[list[str]]:
    """Cycles among modules (package __init__ files left out: importing a package's submodule
    runs its __init__, which is no design dependency), lazy imports included."""
    mods = all_modules(src)
    packages = {m for m, p in mods.items() if p.name == "__init__.py"}
    graph = {
        m: sorted({t for t, _ in imports(p, src) if t in mods and t not in packages and t != m})
        for m, p in mods.items()
        if m not in packages
    }
    cycles, state = [], {}

    def visit(m: str, stack: list[str]) -> None:
        state[m] = "open"
        for n in graph.get(m, ()):
            if state.get(n) == "open":
                cycles.append(stack[stack.index(n) :] + [n])
            elif n not in state:
                visit(n, stack + [n])
        state[m] = "done"

    for m in graph:
        if m not in state:
            visit(m, [m])
    return cycles


def test_no_import_cycles():
    # e.g. a family module that imports EVALS from eval.suite while suite imports the family:
    # import EVALS and EvalContext from diffrep.eval.context instead.
    cycles = import_cycles()
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)
