"""The package's layers import only to their left (README, "Architecture"), with no cycle.

    data -> nets -> distributions -> models -> infer -> runs -> train -> metrics -> cli

Read from the source with :mod:`ast` (module-level and function-level imports alike).
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "pyro_mmvae"

#: Layer of each top-level part; a module may import its own layer and those below it.
LAYERS = {
    "__init__": 0, "checkpoint": 0, "lock": 0, "jsonutil": 0,
    "data": 1, "nets": 1, "engine": 1,
    "likelihoods": 2, "distributions": 2, "modality": 3,
    "models": 4, "infer": 5, "settings": 6, "presets": 6, "zoo": 7, "stages": 7,
    "runs": 8, "run_config": 8, "train": 9, "metrics": 10, "cli": 11, "__main__": 12,
}


def part(module: str) -> str:
    return module.split(".")[1] if "." in module else "__init__"


def imports() -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        name = ".".join(rel.parts).removesuffix(".__init__")
        targets = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets.add(node.module)
            elif isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
        found[name] = {t for t in targets if t.startswith("pyro_mmvae")}
    return found


def test_every_part_has_a_layer():
    parts = {part(m) for m in imports()}
    assert parts <= set(LAYERS), sorted(parts - set(LAYERS))


def test_layers_import_only_to_their_left():
    wrong = []
    for module, targets in imports().items():
        for target in targets:
            if target == "pyro_mmvae":
                continue
            if LAYERS[part(target)] > LAYERS[part(module)]:
                wrong.append(f"{module} imports {target}")
    assert not wrong, "\n".join(sorted(wrong))


def test_metrics_do_not_import_the_trainer_and_objectives_not_the_models():
    graph = imports()
    for module, targets in graph.items():
        if module.startswith("pyro_mmvae.metrics"):
            assert not any(t.startswith("pyro_mmvae.train") for t in targets), module
        if module.startswith("pyro_mmvae.infer"):
            assert not any(t.startswith("pyro_mmvae.models") for t in targets), module


def test_no_import_cycle_between_parts():
    graph: dict[str, set[str]] = {}
    for module, targets in imports().items():
        graph.setdefault(part(module), set()).update(
            part(t) for t in targets if t != "pyro_mmvae" and part(t) != part(module))
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in graph.get(node, ()):
            assert state.get(nxt) != 1, " -> ".join([*path, node, nxt])
            if nxt not in state:
                visit(nxt, [*path, node])
        state[node] = 2

    for node in graph:
        if node not in state:
            visit(node, [])
