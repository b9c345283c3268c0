"""Sphinx configuration of the pyro_mmvae documentation.

Build (from the repository root): ``python -m sphinx -W --keep-going -b html docs docs/_build``.

Two folders are generated here before every build and are not committed:

* ``docs/api/``: one page per module of ``pyro_mmvae`` (``_ext/apigen.py`` walks the
  package, so a new module appears without editing the docs);
* ``docs/notebooks/``: copies of ``notebooks/*.ipynb``, rendered from their committed outputs
  (myst-nb, execution off).

The site builds offline and fetches nothing:

* theme: furo (responsive) when installed, alabaster otherwise; copy buttons on code blocks
  with sphinx-copybutton when installed (both are in the ``docs`` extra);
* maths: MathJax 3 from the sphinx-mathjax-offline package, copied into ``_static/mathjax``
  of the built site, so formulas render with the network off; without the package, Sphinx's
  default (MathJax from a CDN);
* links to the Python, torch, Pyro and NumPy docs (intersphinx) need the internet to fetch
  the inventories, so they are on only when ``PYRO_MMVAE_DOCS_INTERSPHINX=1``.
"""

from __future__ import annotations

import importlib.util
import inspect
import json
import os
import shutil
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent
sys.path.insert(0, str(ROOT))  # document this checkout's package, not an installed copy
sys.path.insert(0, str(DOCS / "_ext"))

import apigen  # noqa: E402

import pyro_mmvae  # noqa: E402

project = "pyro_mmvae"
author = "the pyro_mmvae authors"
copyright = "the pyro_mmvae authors"
release = version = pyro_mmvae.__version__

def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    "myst_nb",
    "clidoc",  # _ext/clidoc.py: the command-line and settings references
]
if _installed("sphinx-mathjax-offline"):  # (the package's module name has dashes)
    extensions.append("sphinx-mathjax-offline")
    mathjax_path = "mathjax/tex-chtml.js"  # the copy the extension puts in _static/
if _installed("sphinx_copybutton"):
    extensions.append("sphinx_copybutton")
    copybutton_prompt_text = r"\$ |>>> "
    copybutton_prompt_is_regexp = True
if os.environ.get("PYRO_MMVAE_DOCS_INTERSPHINX") == "1":
    extensions.append("sphinx.ext.intersphinx")
    intersphinx_mapping = {
        "python": ("https://docs.python.org/3", None),
        "torch": ("https://pytorch.org/docs/stable", None),
        "pyro": ("https://docs.pyro.ai/en/stable", None),
        "numpy": ("https://numpy.org/doc/stable", None),
    }

source_suffix = {".rst": "restructuredtext", ".md": "myst-nb", ".ipynb": "myst-nb"}
root_doc = "index"
exclude_patterns = ["_build", "_ext", "_theme", "_static", "**.ipynb_checkpoints"]
templates_path: list[str] = []

# Autodoc: signatures with type hints, members in source order, maths in the docstrings.
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_inherit_docstrings = True
autodoc_mock_imports: list[str] = []
napoleon_google_docstring = True
napoleon_numpy_docstring = True
autosummary_generate = False

# Broken references to this package's public objects are errors; other projects' names (torch,
# Pyro, the standard library in type hints) resolve only with intersphinx, and private bases
# (``_Name``) are not documented, so those are not.
nitpicky = True
nitpick_ignore_regex = [(r"py:.*", r"(?!pyro_mmvae\.).*"), (r"py:.*", r".*\._.*"),
                        # type variables of generic signatures (``T``), not documented objects
                        (r"py:.*", r"pyro_mmvae\..*\.[A-Z]")]

# MyST: $...$ maths in the notebooks and pages, ::: fences, heading anchors for links.
myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence", "deflist"]
myst_heading_anchors = 3
nb_execution_mode = "off"  # the notebooks are rendered from their committed outputs
nb_merge_streams = True

html_title = f"pyro_mmvae {release}"
html_static_path: list[str] = []
if _installed("furo"):
    html_theme = "furo"
    html_theme_options = {"navigation_with_keys": True}
    html_static_path = ["_theme"]  # _theme/custom.css: a wider content column
    html_css_files = ["custom.css"]
else:
    html_theme = "alabaster"
    html_theme_options = {"description": "Multimodal VAEs as Pyro programs"}


def _copy_notebooks() -> None:
    target = DOCS / "notebooks"
    target.mkdir(exist_ok=True)
    sources = sorted((ROOT / "notebooks").glob("*.ipynb"))
    for source in sources:
        copy = target / source.name
        if not copy.exists() or copy.read_bytes() != source.read_bytes():
            shutil.copyfile(source, copy)
    for stale in set(target.glob("*.ipynb")) - {target / s.name for s in sources}:
        stale.unlink()


apigen.write_api_pages(DOCS / "api")
_copy_notebooks()


def _record_docstring(app, what, name, obj, options, lines):
    """Remember every object autodoc documented and whether its docstring is empty.

    Data without a ``#:`` comment would show the docstring of its type (``dict``, ``tuple``):
    that text is dropped, and the object counts as undocumented.
    """
    if what in ("data", "attribute") and obj is not None and not isinstance(obj, type):
        type_doc = inspect.getdoc(type(obj)) or ""
        if type_doc and "\n".join(lines).strip() == type_doc.strip():
            lines[:] = []
    documented = app.env.__dict__.setdefault("pyro_mmvae_documented", {})
    documented[name] = documented.get(name, False) or any(line.strip() for line in lines)


def _merge_records(app, env, docnames, other):
    mine = env.__dict__.setdefault("pyro_mmvae_documented", {})
    for name, has_doc in other.__dict__.get("pyro_mmvae_documented", {}).items():
        mine[name] = mine.get(name, False) or has_doc


def _write_records(app, exception):
    if exception is None:
        documented = app.env.__dict__.get("pyro_mmvae_documented", {})
        (Path(app.outdir) / "documented.json").write_text(
            json.dumps(documented, indent=0, sort_keys=True))


def _resolve_reexports(app, env, node, contnode):
    """Resolve ``pyro_mmvae.infer.MixtureELBO`` (a package's re-export) to the page of the
    module that defines it (``pyro_mmvae.infer.mixture.MixtureELBO``)."""
    if node.get("refdomain") != "py":
        return None
    target = node.get("reftarget", "")
    if not target.startswith(apigen.PACKAGE + "."):
        return None
    module_name, _, attr = target.rpartition(".")
    try:
        obj = getattr(sys.modules.get(module_name) or __import__(module_name, fromlist=["_"]),
                      attr)
    except (ImportError, AttributeError):
        return None
    owner, qualname = getattr(obj, "__module__", None), getattr(obj, "__qualname__", None)
    if not owner or not qualname or f"{owner}.{qualname}" == target:
        return None
    domain = env.get_domain("py")
    node = node.deepcopy()
    node["reftarget"] = f"{owner}.{qualname}"
    return domain.resolve_xref(env, node["refdoc"], app.builder, node["reftype"],
                               node["reftarget"], node, contnode)


def setup(app):
    app.connect("autodoc-process-docstring", _record_docstring)
    app.connect("env-merge-info", _merge_records)
    app.connect("build-finished", _write_records)
    app.connect("missing-reference", _resolve_reexports)
