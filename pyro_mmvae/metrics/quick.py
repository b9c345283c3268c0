"""The short evaluation ``pyro-mmvae train`` runs after training, added to ``summary.json``.

Single-source cross-modal coherence on the test set (generate modality t from modality s with
the posterior mean, classify with the library's cached digit classifier for t, compare with
the label) and the cross-generation grid of the first test points.
"""

from __future__ import annotations

from typing import Any

import torch

from pyro_mmvae.jsonutil import jsonable
from pyro_mmvae.runs import LoadedRun

GRID_NAME = "cross_generation.png"
GRID_ROWS = 8


def training_report(run: LoadedRun, device: torch.device | str = "cpu") -> dict[str, Any]:
    """``conditional_coherence`` (mean single source), the coherence matrix and the
    classifiers' own accuracies; writes ``cross_generation.png`` into the run folder.

    A figure that is not measurable (a modality absent in every test row) is ``None``, and
    ``conditional_coherence_note`` says why (see
    :func:`~pyro_mmvae.metrics.coherence.conditional_coherence`).

    Args:
        run: the trained run (model, data and folder) from :func:`pyro_mmvae.runs.load_run`;
            the grid is written into ``run.folder.path``.
        device: where to run the model and the classifiers (default ``"cpu"``).

    Returns:
        A JSON-ready dict: ``conditional_coherence`` (float in [0, 1] or ``None``),
        ``coherence_matrix``, ``classifier_accuracy`` and an optional note; only
        ``coherence_skipped`` when the test set has no labels.
    """
    from pyro_mmvae.metrics import (
        conditional_coherence,
        get_classifiers,
        save_cross_generation_grid,
    )

    device = torch.device(device)
    if not getattr(run.test_ds, "has_labels", True):
        return {"conditional_coherence": None,
                "coherence_skipped": "the dataset has no labels (labels.npy)"}
    classifiers = get_classifiers(run.train_ds, run.test_ds, device=device)
    coherence = conditional_coherence(run.vae, run.test_ds, classifiers, subset_sizes=(1,),
                                      device=device)
    with torch.no_grad():
        batch, labels = next(iter(run.test_ds.batches(GRID_ROWS, device=device)))
        try:
            save_cross_generation_grid(run.vae, batch, run.folder.path / GRID_NAME,
                                       num_examples=GRID_ROWS, labels=labels)
        except ValueError:  # a modality that is not an image (token sequences, vectors)
            pass
    note = {"conditional_coherence_note": coherence["note"]} if coherence.get("note") else {}
    return {
        "conditional_coherence": coherence.get("mean_single_source"),
        **note,
        "coherence_matrix": jsonable(coherence.get("single_source_matrix")),
        "classifier_accuracy": jsonable(coherence.get("classifier_accuracy")),
    }
