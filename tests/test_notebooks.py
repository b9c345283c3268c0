"""The notebooks in notebooks/ run top to bottom in their small mode and draw figures.

Each notebook is executed with nbclient on a copy (the committed file, with its outputs, is
never rewritten), with ``PYRO_MMVAE_NOTEBOOK_SMALL=1`` (fewer epochs, less data, smaller K),
one thread, and the classifier cache in the session's temporary folder (the first notebook
trains the classifiers, the others load them). A failing assertion in a notebook's final
check cell fails the test.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

NOTEBOOKS_DIR = Path(__file__).resolve().parents[1] / "notebooks"
NOTEBOOKS = (
    "01_quickstart.ipynb",
    "02_custom_model.ipynb",
    "03_likelihoods.ipynb",
    "04_model_zoo.ipynb",
)
CELL_TIMEOUT_S = 300


@pytest.fixture
def classifier_cache(tmp_path_factory) -> Path:
    """The session's classifier cache (the folder conftest points the library at), so that
    classifiers trained by one notebook, or by another test, are loaded by the next."""
    return tmp_path_factory.getbasetemp() / "pyro_mmvae_cache"


def _outputs(notebook, output_type: str | None = None) -> list:
    return [output for cell in notebook.cells if cell.cell_type == "code"
            for output in cell.get("outputs", [])
            if output_type is None or output.get("output_type") == output_type]


def _images(notebook) -> list:
    return [output for output in _outputs(notebook)
            if output.get("output_type") in ("display_data", "execute_result")
            and "image/png" in output.get("data", {})]


def _stdout(notebook) -> str:
    return "".join(output.get("text", "") for output in _outputs(notebook, "stream")
                   if output.get("name") == "stdout")


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_committed_notebook_is_valid_and_keeps_its_figures(name):
    """The committed file is a valid notebook with the outputs of a full (not small) run."""
    notebook = nbformat.read(NOTEBOOKS_DIR / name, as_version=4)
    nbformat.validate(notebook)
    assert notebook.cells[0].cell_type == "markdown"
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert "PYRO_MMVAE_NOTEBOOK_SMALL" in code[0].source
    assert all(cell.get("execution_count") for cell in code), "run every cell before committing"
    assert not _outputs(notebook, "error")
    assert _images(notebook), "commit the notebook with its outputs (figures)"
    assert "small mode: False" in _stdout(notebook), "commit the outputs of a full run"


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs_in_small_mode(name, classifier_cache, monkeypatch):
    source = NOTEBOOKS_DIR / name
    committed = source.read_bytes()
    notebook = copy.deepcopy(nbformat.read(source, as_version=4))
    for cell in notebook.cells:  # start from a clean copy: no output can come from the file
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    # The kernel inherits the environment of this process when it starts.
    monkeypatch.setenv("PYRO_MMVAE_NOTEBOOK_SMALL", "1")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("MKL_NUM_THREADS", "1")
    monkeypatch.setenv("PYRO_MMVAE_CACHE", str(classifier_cache))
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    client = nbclient.NotebookClient(
        notebook, timeout=CELL_TIMEOUT_S, kernel_name="python3",
        resources={"metadata": {"path": str(NOTEBOOKS_DIR)}})
    start = time.perf_counter()
    client.execute()  # raises CellExecutionError if any cell (or final check) fails
    seconds = time.perf_counter() - start

    assert not _outputs(notebook, "error")
    assert _images(notebook), f"{name} drew no figure"
    assert "small mode: True" in _stdout(notebook), "the notebook did not see its small mode"
    assert source.read_bytes() == committed, "the committed notebook was modified"
    print(f"{name}: {seconds:.1f} s")
