"""Every parameter of every public callable is described in its docstring.

Public callables are those of the API reference (``docs/_ext/apigen.py``: each module's
``__all__``, or its own public classes and functions, with the public methods defined in a
class body). A parameter counts as described when the docstring has a Google-style section
(``Args:``, ``Arguments:``, ``Parameters:``, ``Keyword Args:`` or ``Attributes:``) with an
entry for it; a class's constructor parameters may be described in the class docstring or in
``__init__``'s, and a dataclass field also by a ``#:`` comment above it (what autodoc renders).
``self``, ``cls``, ``*args`` and ``**kwargs`` are exempt.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import re
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SECTION = re.compile(r"^\s*(Args|Arguments|Parameters|Keyword Args|Attributes)\s*:\s*$", re.M)


def described(doc: str, name: str) -> bool:
    """Whether ``doc`` has an ``Args:``-style section with an entry for ``name``."""
    for match in SECTION.finditer(doc):
        if re.search(rf"^\s*\**{re.escape(name)}\b", doc[match.end():], re.M):
            return True
    return False


def _parameters(function) -> list[str]:
    try:
        signature = inspect.signature(function)
    except (TypeError, ValueError):
        return []
    return [p.name for p in signature.parameters.values()
            if p.name not in ("self", "cls")
            and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]


def _commented_fields(cls: type) -> set[str]:
    """Fields of a class body preceded by a ``#:`` comment (autodoc's attribute docs)."""
    try:
        source = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):
        return set()
    lines = source.splitlines()
    fields = set()
    for node in ast.parse(source).body[0].body:
        if isinstance(node, ast.AnnAssign | ast.Assign):
            target = node.target if isinstance(node, ast.AnnAssign) else node.targets[0]
            above = lines[node.lineno - 2].strip() if node.lineno >= 2 else ""
            if isinstance(target, ast.Name) and above.startswith("#:"):
                fields.add(target.id)
    return fields


def _resolve(home: str):
    module, _, name = home.rpartition(".")
    return getattr(importlib.import_module(module), name)


def undocumented_parameters() -> dict[str, list[str]]:
    """``{callable: [parameters without a description]}`` over the public API."""
    sys.path.insert(0, str(REPO / "docs" / "_ext"))
    try:
        import apigen
    finally:
        sys.path.pop(0)
    _, objects = apigen.public_objects()
    missing: dict[str, list[str]] = {}
    seen = set()
    for entry in objects:
        if entry.home in seen or entry.kind not in ("class", "function"):
            continue
        seen.add(entry.home)
        obj = _resolve(entry.home)
        if entry.kind == "function":
            checks = [(entry.home, _parameters(obj), inspect.getdoc(obj) or "", set())]
        else:
            init_doc = inspect.getdoc(vars(obj)["__init__"]) if "__init__" in vars(obj) else ""
            checks = [(entry.home, _parameters(obj),
                       (inspect.getdoc(obj) or "") + "\n" + (init_doc or ""),
                       _commented_fields(obj))]
            for member in entry.members:
                raw = vars(obj).get(member)
                if isinstance(raw, property) or not (callable(raw) or isinstance(
                        raw, staticmethod | classmethod)):
                    continue
                method = getattr(obj, member)
                checks.append((f"{entry.home}.{member}", _parameters(method),
                               inspect.getdoc(method) or "", set()))
        for name, parameters, doc, commented in checks:
            lacking = [p for p in parameters if p not in commented and not described(doc, p)]
            if lacking:
                missing[name] = lacking
    return missing


def test_the_checker_sees_a_missing_and_a_described_parameter():
    doc = "Sum.\n\nArgs:\n    x: the first.\n    y (int): the second.\n"
    assert described(doc, "x") and described(doc, "y") and not described(doc, "z")
    assert not described("Sum of x and y.", "x")  # prose is not a description


def test_every_public_parameter_is_described():
    missing = undocumented_parameters()
    listing = "\n".join(f"{name}: {', '.join(params)}" for name, params in sorted(missing.items()))
    assert not missing, f"{len(missing)} public callables with undescribed parameters:\n{listing}"
