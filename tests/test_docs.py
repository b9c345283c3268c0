"""The documentation site builds with no warning, documents every public name, and its code runs.

* The site is built once per session (``python -m sphinx -W --keep-going -b html docs OUT``),
  into a temporary folder, with no network access needed; any warning fails (broken
  references, bad reStructuredText or maths in a docstring, a notebook that does not render).
  Its pages load no script or stylesheet from the network (MathJax is bundled), the
  command-line reference lists every option of the parser, and the API index is grouped by
  task without the internal modules.
* Every module of ``pyro_mmvae`` (walked with :mod:`pkgutil`, so new modules are covered) and
  every public name — a module's ``__all__``, or the public classes and functions defined in a
  module without one, and the public methods and properties of those classes — must have been
  documented by autodoc with a non-empty docstring. ``docs/conf.py`` records what autodoc
  documented in ``OUT/documented.json``.
* The guide pages' code is executed: their ``python`` blocks in order (one fresh namespace per
  page), and ``bash`` blocks marked with a ``% test: run`` line, in one subprocess in an empty
  folder. Every ``pyro-mmvae ...`` command in any ``bash`` block of the pages (and of the
  README sections they include) must parse with the command line's own parser.

Skipped, with the reason, when the ``docs`` extra (sphinx, myst-nb) is not installed.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shlex
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

pytest.importorskip("sphinx", reason="the docs extra is not installed: pip install -e '.[docs]'")
pytest.importorskip("myst_nb", reason="the docs extra is not installed: pip install -e '.[docs]'")

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
GUIDES = ("getting_started", "models", "models_mixture", "models_products",
          "models_coordination", "data", "custom_model", "evaluation", "performance",
          "reproducing", "reliability", "cli", "settings")
NOTEBOOKS = sorted(path.stem for path in (ROOT / "notebooks").glob("*.ipynb"))

sys.path.insert(0, str(DOCS / "_ext"))
import apigen  # noqa: E402


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """Build the site once into a temporary folder; return the folder (and its warnings)."""
    out = tmp_path_factory.mktemp("docs_html")
    warnings = out / "warnings.txt"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    env.pop("PYRO_MMVAE_DOCS_INTERSPHINX", None)  # the test build must not use the network
    start = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-b", "html", "-q",
         "-w", str(warnings), str(DOCS), str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    print(f"docs build: {time.perf_counter() - start:.1f} s")
    (out / "build.log").write_text(result.stdout + result.stderr)
    (out / "returncode").write_text(str(result.returncode))
    return out


def test_site_builds_without_warnings(site):
    log = (site / "build.log").read_text()
    warnings = (site / "warnings.txt").read_text() if (site / "warnings.txt").exists() else ""
    assert (site / "returncode").read_text() == "0" and not warnings.strip(), (
        "the documentation build failed or warned:\n" + (warnings or log)[-20000:])
    for page in ("index", *GUIDES, "api/index"):
        assert (site / f"{page}.html").is_file(), f"page {page} was not built"


def test_pages_load_nothing_from_the_network(site):
    """Maths renders offline: MathJax is bundled, and no page loads a remote script or style."""
    assert (site / "_static" / "mathjax" / "tex-chtml.js").is_file(), "MathJax is not bundled"
    remote = re.compile(r"<(?:script|link)[^>]+(?:src|href)=\"(?:https?:)?//", re.I)
    pages = sorted(site.rglob("*.html"))
    assert len(pages) > 20
    offenders = [str(page.relative_to(site)) for page in pages if remote.search(page.read_text())]
    assert not offenders, "pages that load scripts or styles from the network: " + ", ".join(
        offenders[:10])
    html = (site / "models_mixture.html").read_text()
    assert "_static/mathjax/tex-chtml.js" in html and "\\mathcal L" in html


def test_cli_reference_lists_every_option(site):
    from pyro_mmvae.cli import build_parser

    html = (site / "cli.html").read_text()
    parser = build_parser()
    subparsers = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    missing = [f"{name} {option}" for name, sub in subparsers.choices.items()
               for action in sub._actions for option in action.option_strings
               if option.startswith("--") and option not in html]
    assert not missing, "options missing from the command-line reference: " + ", ".join(missing)
    settings_html = (site / "settings.html").read_text()
    from pyro_mmvae.settings import GROUP_OF
    assert not [key for key in GROUP_OF if f">{key}<" not in settings_html]


def test_api_index_is_grouped_by_task_without_internals(site):
    html = (site / "api" / "index.html").read_text()
    body = html.split('<article', 1)[1].split('</article>', 1)[0]
    for title in ("Models", "Objectives", "Data", "Training", "Evaluation"):
        assert f">{title}<" in body, f"no {title} group in the API index"
    for internal in apigen.INTERNAL:
        assert internal not in body, f"{internal} is listed in the public API index"
        assert (site / "api" / f"{internal}.html").is_file()


def test_notebooks_are_rendered_with_their_outputs(site):
    assert NOTEBOOKS, "no notebooks found"
    for name in NOTEBOOKS:
        html = (site / "notebooks" / f"{name}.html").read_text()
        assert "<img" in html, f"{name}: the committed figures are not on the page"
        assert "small mode: False" in html, f"{name}: the committed outputs are not on the page"


def test_every_public_name_is_documented_with_a_docstring(site):
    documented = json.loads((site / "documented.json").read_text())
    modules, objects = apigen.public_objects()
    missing = set()
    for module in modules:
        if not documented.get(module):
            missing.add(f"{module} (module)")
        if not (site / "api" / f"{module}.html").is_file():
            missing.add(f"{module} (no API page)")
    for obj in objects:
        if not documented.get(obj.home):
            missing.add(f"{obj.home} ({obj.kind}, public as {obj.public_name})")
        for member in obj.members:
            if not documented.get(f"{obj.home}.{member}"):
                missing.add(f"{obj.home}.{member} (member)")
    assert not missing, ("public names missing from the API reference or without a docstring:\n"
                         + "\n".join(sorted(missing)))


# --- the pages' code -------------------------------------------------------------------------

FENCE = re.compile(r"^(?P<marker>% test: run\n)?```(?P<lang>[\w-]*)[^\n]*\n(?P<code>.*?)^```\s*$",
                   re.M | re.S)
INCLUDE = re.compile(r"^```\{include\}\s+(?P<path>\S+)\n(?P<options>(?::[^\n]*\n)*)```", re.M)


def _resolve_includes(text: str, base: Path) -> str:
    """Replace MyST ``{include}`` blocks by the text they include (start-after/end-before)."""
    def include(match: re.Match) -> str:
        included = (base / match["path"]).read_text()
        options = dict(re.findall(r"^:([\w-]+):\s*(.*)$", match["options"], flags=re.M))
        if "start-after" in options:
            included = included.split(options["start-after"], 1)[1]
        if "end-before" in options:
            included = included.split(options["end-before"], 1)[0]
        return included
    return INCLUDE.sub(include, text)


def _blocks(page: str, resolve: bool) -> list[tuple[str, str, bool]]:
    """(language, code, marked to run) of every fenced block of a page, in order."""
    text = (DOCS / f"{page}.md").read_text()
    if resolve:
        text = _resolve_includes(text, DOCS)
    # Blank lines before each block's code keep the page's line numbers in tracebacks.
    return [(m["lang"], "\n" * text.count("\n", 0, m.start("code")) + m["code"],
             bool(m["marker"])) for m in FENCE.finditer(text)]


def _commands(code: str) -> list[list[str]]:
    """The ``pyro-mmvae`` command lines of a shell block, as argument lists (after the name)."""
    commands = []
    for line in code.replace("\\\n", " ").splitlines():
        for part in re.split(r"&&|;", line):
            words = shlex.split(part, comments=True)
            if words[:1] == ["pyro-mmvae"]:
                commands.append(words[1:])
            elif words[:1] == ["torchrun"] and "pyro_mmvae" in words:
                commands.append(words[words.index("pyro_mmvae") + 1:])
    return commands


def test_every_cli_command_on_the_pages_parses():
    from pyro_mmvae.cli import build_parser

    found, errors = 0, []
    for page in GUIDES:
        for lang, code, _ in _blocks(page, resolve=True):
            if lang not in ("bash", "sh", "console", "shell"):
                continue
            for args in _commands(code):
                found += 1
                try:
                    with contextlib.redirect_stderr(io.StringIO()):
                        build_parser().parse_args(args)
                except SystemExit:
                    errors.append(f"{page}: pyro-mmvae {shlex.join(args)}")
    assert found > 5, "no command found on the pages: did the block syntax change?"
    assert not errors, "commands on the pages that pyro-mmvae does not accept:\n" + "\n".join(
        errors)


RUNNER = textwrap.dedent('''
    """Run the pages' code in order; print one line per page; exit 1 on the first failure."""
    import json, sys, time, traceback

    import torch

    torch.set_num_threads(1)
    import pyro

    from pyro_mmvae.cli import main

    failures = 0
    for page, steps in json.load(open(sys.argv[1])):
        start = time.perf_counter()
        namespace = {"__name__": "__main__"}
        pyro.clear_param_store()
        try:
            for kind, payload in steps:
                if kind == "python":
                    exec(compile(payload, f"docs/{page}.md", "exec"), namespace)
                else:
                    code = main(payload)
                    assert code == 0, f"pyro-mmvae {' '.join(payload)} exited with {code}"
        except BaseException:
            failures += 1
            print(f"FAILED {page}:", flush=True)
            traceback.print_exc()
        print(f"{page}: {time.perf_counter() - start:.1f} s", flush=True)
    sys.exit(1 if failures else 0)
''')


def test_the_pages_code_runs(tmp_path):
    jobs = []
    for page in GUIDES:
        steps = []
        for lang, code, run in _blocks(page, resolve=False):
            if lang == "python":
                steps.append(("python", code))
            elif run:
                steps += [("cli", args) for args in _commands(code)]
        if steps:
            jobs.append((page, steps))
    assert len(jobs) >= 4, "the guide pages lost their code examples"
    (tmp_path / "jobs.json").write_text(json.dumps(jobs))
    (tmp_path / "runner.py").write_text(RUNNER)
    work = tmp_path / "work"
    work.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg", "TQDM_DISABLE": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run([sys.executable, str(tmp_path / "runner.py"),
                             str(tmp_path / "jobs.json")],
                            cwd=work, env=env, capture_output=True, text=True, timeout=900)
    print(result.stdout)
    assert result.returncode == 0, (
        "a code example of the docs failed:\n" + (result.stdout + result.stderr)[-8000:])
