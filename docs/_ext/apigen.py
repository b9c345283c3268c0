"""Walk the ``pyro_mmvae`` package and write one API page per module.

Shared by ``docs/conf.py`` (which writes the pages before every build, so a module added to
the package appears in the reference without editing the docs) and ``tests/test_docs.py``
(which checks that every public name was documented with a docstring).

Public names of a module: its ``__all__`` if it has one, otherwise the classes and functions
defined in it whose names do not start with ``_``. Modules whose name starts with ``_`` (and
``__main__``, which runs the command line on import) are not walked. Each public object is
documented once, on the page of the module that defines it (its *home*); a package that
re-exports it lists it with a link.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import pkgutil
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

PACKAGE = "pyro_mmvae"


@dataclass
class PublicObject:
    """One public name: where users import it from and where it is documented."""

    public_name: str  # e.g. pyro_mmvae.infer.MixtureELBO
    home: str  # the documented (canonical) name, e.g. pyro_mmvae.infer.mixture.MixtureELBO
    kind: str  # "class", "function" or "data"
    members: list[str] = field(default_factory=list)  # public methods/properties of a class


def module_names(package: str = PACKAGE) -> list[str]:
    """The package and every module below it, without private modules and ``__main__``."""
    root = importlib.import_module(package)
    names = [package]
    def onerror(name: str) -> None:
        raise  # a subpackage that does not import must fail the build, not vanish from it

    for info in pkgutil.walk_packages(root.__path__, package + ".", onerror=onerror):
        if any(part.startswith("_") for part in info.name.split(".")):
            continue
        names.append(info.name)
    return sorted(names)


def _assigned_names(module: ModuleType) -> set[str]:
    """Names bound by a module-level assignment in the module's own source."""
    try:
        tree = ast.parse(inspect.getsource(module))
    except (OSError, TypeError):
        return set()
    names: set[str] = set()
    for node in tree.body:
        targets = node.targets if isinstance(node, ast.Assign) else (
            [node.target] if isinstance(node, ast.AnnAssign) else [])
        for target in targets:
            for sub in ast.walk(target):
                if isinstance(sub, ast.Name):
                    names.add(sub.id)
    return names


def _kind(obj: object) -> str:
    if inspect.isclass(obj):
        return "class"
    if callable(obj) and hasattr(obj, "__qualname__") and hasattr(obj, "__module__"):
        return "function"  # functions, and wrappers such as functools.lru_cache
    return "data"


def public_names(module: ModuleType) -> list[str]:
    """A module's public names: ``__all__``, or its own public classes and functions."""
    if hasattr(module, "__all__"):
        return list(module.__all__)
    return [name for name, obj in vars(module).items()
            if not name.startswith("_") and _kind(obj) != "data"
            and getattr(obj, "__module__", None) == module.__name__]


def _class_members(cls: type) -> list[str]:
    """Public methods and properties defined in the class body itself."""
    members = []
    for name, value in vars(cls).items():
        if name.startswith("_"):
            continue
        if isinstance(value, (staticmethod, classmethod, property)) or inspect.isfunction(value):
            members.append(name)
    return members


def public_objects(package: str = PACKAGE) -> tuple[list[str], list[PublicObject]]:
    """Every module of the package and every public object with its home."""
    modules = module_names(package)
    loaded = {name: importlib.import_module(name) for name in modules}
    assigned = {name: _assigned_names(module) for name, module in loaded.items()}
    objects = []
    for mod_name, module in loaded.items():
        for name in public_names(module):
            obj = getattr(module, name)
            kind = _kind(obj)
            if kind == "data":
                # Data has no __module__: its home is the module that assigns it.
                homes = [m for m in modules if name in assigned[m]
                         and getattr(loaded[m], name, None) is obj]
                home_mod = mod_name if mod_name in homes else (homes[0] if homes else mod_name)
                home = f"{home_mod}.{name}"
            else:
                owner = getattr(obj, "__module__", "") or ""
                qualname = getattr(obj, "__qualname__", name)
                home = f"{owner}.{qualname}" if owner in loaded else f"{mod_name}.{name}"
            members = _class_members(obj) if kind == "class" else []
            objects.append(PublicObject(f"{mod_name}.{name}", home, kind, members))
    return modules, objects


def _page(module: str, own: list[PublicObject], reexported: list[PublicObject],
          submodules: list[str]) -> str:
    title = f"``{module}``"
    lines = [title, "=" * len(title), "", f".. automodule:: {module}", "   :no-members:", ""]
    if submodules:
        lines += [".. rubric:: Modules", "", ".. autosummary::", ""]
        lines += [f"   {name.rsplit('.', 1)[1]}" for name in submodules] + [""]
    if reexported:
        lines += [".. rubric:: Re-exported here", "",
                  f"Importable from ``{module}``; documented in the module that defines it.", ""]
        for obj in reexported:
            role = {"class": "class", "function": "func", "data": "data"}[obj.kind]
            lines.append(f"* :py:{role}:`{obj.public_name.rsplit('.', 1)[1]} <{obj.home}>`")
        lines.append("")
    directive = {"class": "autoclass", "function": "autofunction", "data": "autodata"}
    for obj in own:
        lines.append(f".. {directive[obj.kind]}:: {obj.home}")
        if obj.kind == "class":
            lines += ["   :members:", "   :show-inheritance:"]
        lines.append("")
    return "\n".join(lines)


#: The API index, grouped by task: (title, one sentence, module prefixes). A module belongs to
#: the first group with a matching prefix (the module itself or a package above it); modules
#: of no group are listed under "Other modules", so a new module is never left out.
GROUPS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("Models", "The model/guide pairs, built by name with their settings and presets.",
     ("pyro_mmvae.models", "pyro_mmvae.zoo", "pyro_mmvae.presets", "pyro_mmvae.settings")),
    ("Objectives", "The ``pyro.infer.ELBO`` subclasses and their estimators.",
     ("pyro_mmvae.infer",)),
    ("Building blocks", "Modalities, likelihoods, networks and the posterior distributions "
     "(products and mixtures of experts).",
     ("pyro_mmvae.modality", "pyro_mmvae.likelihoods", "pyro_mmvae.nets",
      "pyro_mmvae.distributions")),
    ("Data", "Datasets, your own files, the PolyMNIST generator and registration.",
     ("pyro_mmvae.data",)),
    ("Training", "The training loop and engine, run folders and the command line.",
     ("pyro_mmvae.train", "pyro_mmvae.stages", "pyro_mmvae.engine", "pyro_mmvae.runs",
      "pyro_mmvae.run_config", "pyro_mmvae.checkpoint", "pyro_mmvae.cli")),
    ("Evaluation", "Coherence, Fréchet distances, likelihoods, probes and figures.",
     ("pyro_mmvae.metrics",)),
)
#: Implementation details: documented on their own pages (``:orphan:``) but not in the index.
INTERNAL: tuple[str, ...] = ("pyro_mmvae.jsonutil", "pyro_mmvae.lock", "pyro_mmvae.engine.rng")


def _matches(module: str, prefixes: tuple[str, ...]) -> bool:
    return any(module == prefix or module.startswith(prefix + ".") for prefix in prefixes)


def _index(modules: list[str], texts: dict[str, str]) -> dict[str, str]:
    """The grouped ``index.rst``; internal modules' pages are marked ``:orphan:``."""
    lines = ["API reference", "=============", "",
             "Generated from the docstrings: one page per module of ``pyro_mmvae``, grouped by "
             "task. Names are importable from the package that lists them (for example "
             "``from pyro_mmvae.models import MMVAE``).", "",
             ".. autosummary::", "", "   pyro_mmvae", "",
             ".. toctree::", "   :hidden:", "", "   pyro_mmvae", ""]
    placed = {PACKAGE} | {m for m in modules if _matches(m, INTERNAL)}
    groups = [(title, text, [m for m in modules if m not in placed and _matches(m, prefixes)])
              for title, text, prefixes in GROUPS]
    for _, _, members in groups:
        placed.update(members)
    groups.append(("Other modules", "Modules of no group above.",
                   [m for m in modules if m not in placed]))
    for title, text, members in groups:
        if not members:
            continue
        placed.update(members)
        lines += [title, "-" * len(title), "", text, "", ".. autosummary::", ""]
        lines += [f"   {m}" for m in members] + ["", ".. toctree::", "   :hidden:", ""]
        lines += [f"   {m}" for m in members] + [""]
    updated = {"index.rst": "\n".join(lines)}
    for module in modules:
        if _matches(module, INTERNAL):
            updated[f"{module}.rst"] = ":orphan:\n\n" + texts[f"{module}.rst"]
    return updated


def write_api_pages(outdir: Path, package: str = PACKAGE) -> list[str]:
    """Write ``outdir/<module>.rst`` for every module and ``outdir/index.rst``.

    Files are rewritten only when their text changes (so incremental builds stay
    incremental), and pages of modules that no longer exist are removed.
    """
    modules, objects = public_objects(package)
    outdir.mkdir(parents=True, exist_ok=True)
    homes: dict[str, PublicObject] = {}
    for obj in objects:
        homes.setdefault(obj.home, obj)
    texts = {}
    for module in modules:
        own = [obj for home, obj in homes.items() if home.rsplit(".", 1)[0] == module]
        reexported = [obj for obj in objects if obj.public_name.rsplit(".", 1)[0] == module
                      and obj.home.rsplit(".", 1)[0] != module]
        submodules = [m for m in modules if m != module and m.rsplit(".", 1)[0] == module]
        texts[f"{module}.rst"] = _page(module, own, reexported, submodules)
    texts.update(_index(modules, texts))
    for name, text in texts.items():
        path = outdir / name
        if not path.exists() or path.read_text() != text:
            path.write_text(text)
    for path in outdir.glob("*.rst"):
        if path.name not in texts:
            path.unlink()
    return modules
