"""Coherence metrics, modality classifiers and their cache, and the image grids.

The data are a tiny PolyMNIST-like set: three modalities of 3x28x28 images where the class
(0..9) is the position of a coloured bar over a noisy background (horizontal red bar in m0,
vertical green bar in m1, reversed horizontal blue bar in m2). Some test images have their
bar removed, so the classifiers' test accuracy is below 1 and differs between modalities.
"""

import math

import pytest
import torch
from PIL import Image
from torch import nn

import pyro_mmvae.metrics.classifiers as clf_module
from pyro_mmvae.data.base import MultimodalTensorDataset
from pyro_mmvae.metrics import (
    ModalityClassifiers,
    conditional_coherence,
    dataset_fingerprint,
    default_cache_dir,
    get_classifiers,
    save_cross_generation_grid,
    save_unconditional_grid,
    train_modality_classifiers,
    unconditional_coherence,
)

torch.set_num_threads(1)

NAMES = ("m0", "m1", "m2")
NUM_CLASSES = 10


def bar_images(labels: torch.Tensor, modality: int, generator: torch.Generator) -> torch.Tensor:
    """Images (N, 3, 28, 28) in [0, 1]: noise in [0, 0.3] plus the class's coloured bar."""
    n = len(labels)
    x = 0.3 * torch.rand(n, 3, 28, 28, generator=generator)
    for c in range(NUM_CLASSES):
        rows = labels == c
        pos = 4 + 2 * c if modality != 2 else 23 - 2 * c
        if modality == 1:
            x[rows, 1, 2:26, pos : pos + 2] = 1.0
        else:
            x[rows, modality, pos : pos + 2, 2:26] = 1.0
    return x


def bar_dataset(n: int, seed: int, blank_every: int | None = None) -> MultimodalTensorDataset:
    """Balanced labels (i mod 10); with ``blank_every`` about 1/(blank_every + 2m) of
    modality m's images lose their bar (different rows and fractions per modality)."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % NUM_CLASSES
    data = {}
    for m, name in enumerate(NAMES):
        x = bar_images(labels, m, g)
        if blank_every:
            blank = (torch.arange(n) * 7 + 3 * m) % (blank_every + 2 * m) == 0
            x[blank] = 0.3 * torch.rand(int(blank.sum()), 3, 28, 28, generator=g)
        data[name] = (x * 255).round().to(torch.uint8)
    return MultimodalTensorDataset(data, labels, name="bars")


@pytest.fixture(scope="module")
def train_ds():
    return bar_dataset(400, seed=0)


@pytest.fixture(scope="module")
def test_ds():
    return bar_dataset(200, seed=1, blank_every=8)


@pytest.fixture(scope="module")
def classifiers(train_ds, test_ds):
    return train_modality_classifiers(train_ds, test_ds, epochs=3, batch_size=32, seed=0)


def direct_accuracy(classifiers, dataset, name):
    images = torch.cat([b[name] for b, _ in dataset.batches(1000)])
    return float((classifiers.predict(name, images) == dataset.labels).double().mean())


class OracleVAE(nn.Module):
    """generate() returns the true target images of the data points whose source images it
    was given (found by exact lookup of the first source's images in the stored data)."""

    def __init__(self, dataset):
        super().__init__()
        self.names = dataset.modalities
        self.images = {m: torch.cat([b[m] for b, _ in dataset.batches(10_000)]) for m in NAMES}
        self.layer = nn.Linear(1, 1)  # so that train()/eval() have something to switch
        self.calls = 0
        self.modes_seen = set()

    def generate(self, data, sources, targets=None):
        self.calls += 1
        self.modes_seen.add(self.training)
        assert set(data) == set(sources), "coherence must hand the model only the sources"
        stored = self.images[sources[0]].flatten(1)
        rows = torch.cdist(data[sources[0]].flatten(1), stored).argmin(dim=1)
        return {t: self.images[t][rows] for t in (targets or self.names)}

    def sample(self, num):
        return {m: self.images[m][:num] for m in self.names}


class ConstantVAE:
    """Generates the same grey image for every input, in every modality."""

    names = NAMES

    def generate(self, data, sources, targets=None):
        n = len(data[sources[0]])
        return {t: torch.full((n, 3, 28, 28), 0.5) for t in (targets or self.names)}


class NoiseVAE(ConstantVAE):
    def __init__(self):
        self.g = torch.Generator().manual_seed(0)

    def generate(self, data, sources, targets=None):
        n = len(data[sources[0]])
        return {t: torch.rand(n, 3, 28, 28, generator=self.g) for t in (targets or self.names)}


class ClassSampler:
    """sample(n): bar images whose classes come from ``classes(n)`` (per modality)."""

    names = NAMES

    def __init__(self, classes, noisy=True):
        self.classes, self.noisy = classes, noisy
        self.g = torch.Generator().manual_seed(0)

    def sample(self, num):
        out = {}
        for m, name in enumerate(self.names):
            if self.noisy:
                out[name] = bar_images(self.classes(num, m), m, self.g)
            else:  # the same image for every z, across calls
                x = bar_images(self.classes(1, m), m, torch.Generator().manual_seed(m))
                out[name] = x.expand(num, -1, -1, -1).clone()
        return out


# ---------------------------------------------------------------------- classifiers
def test_classifiers_learn_the_bars(classifiers, test_ds):
    clean = bar_dataset(200, seed=2)
    assert min(classifiers.accuracy(clean).values()) > 0.97
    # the blanked test images pull the test accuracy below 1 by different amounts
    for name in NAMES:
        acc = classifiers.test_accuracy[name]
        assert acc == pytest.approx(direct_accuracy(classifiers, test_ds, name))
        assert 0.8 < acc < 0.99


def test_predict_returns_long_labels_and_rejects_unknown_modality(classifiers):
    pred = classifiers.predict("m0", torch.rand(4, 3, 28, 28))
    assert pred.dtype == torch.int64 and pred.shape == (4,)
    with pytest.raises(ValueError, match="no classifier for modality 'm9'"):
        classifiers.predict("m9", torch.rand(4, 3, 28, 28))


# ---------------------------------------------------------------------- conditional
def test_oracle_coherence_equals_classifier_accuracy(classifiers, test_ds):
    vae = OracleVAE(test_ds).train()
    result = conditional_coherence(vae, test_ds, classifiers, subset_sizes=None, batch_size=64)
    expected = {t: direct_accuracy(classifiers, test_ds, t) for t in NAMES}
    assert len(set(expected.values())) == 3  # a mixed-up target would show
    for key, row in result["by_subset"].items():
        for target, acc in row.items():
            assert target not in key.split("+")
            assert acc == pytest.approx(expected[target], abs=1e-12)
    for src, row in result["single_source_matrix"].items():
        assert set(row) == set(NAMES) - {src}
    assert result["leave_one_out"] == pytest.approx(expected)
    assert result["by_subset_size"][1] == pytest.approx(sum(expected.values()) / 3)
    assert result["mean_single_source"] == pytest.approx(sum(expected.values()) / 3)
    assert result["classifier_accuracy"] == pytest.approx(expected)
    assert result["posterior"] == "mean" and result["num_datapoints"] == len(test_ds)
    # eval mode during generation, previous mode restored, one call per batch and subset
    assert vae.modes_seen == {False} and vae.training
    assert vae.calls == math.ceil(len(test_ds) / 64) * 6


def test_subset_size_selection_and_limits(classifiers, test_ds):
    vae = OracleVAE(test_ds)
    result = conditional_coherence(vae, test_ds, classifiers, subset_sizes=(2,))
    assert list(result["by_subset_size"]) == [2] and "single_source_matrix" not in result
    assert result["mean_single_source"] is None
    limited = conditional_coherence(vae, test_ds, classifiers, max_subsets_per_size=2)
    assert len(limited["by_subset"]) == 2
    with pytest.raises(ValueError, match="subset_sizes must lie in 1..2"):
        conditional_coherence(vae, test_ds, classifiers, subset_sizes=(3,))


def test_constant_generator_scores_chance(classifiers, test_ds):
    result = conditional_coherence(ConstantVAE(), test_ds, classifiers, subset_sizes=None)
    # one predicted class for every image and balanced labels: exactly 1 / 10 everywhere
    for row in result["by_subset"].values():
        assert all(acc == pytest.approx(0.1) for acc in row.values())


def imbalanced(test_ds):
    """Class 0 eight times as often as in ``test_ds``, classes 1..9 once (200 -> 340 rows)."""
    zeros = torch.nonzero(test_ds.labels == 0).flatten()
    return test_ds.subset(torch.cat([torch.arange(len(test_ds)), zeros.repeat(7)]))


def test_per_class_average_of_a_constant_generator(classifiers, test_ds):
    """One predicted class c for every image: plain accuracy = the share of rows of class c,
    the per-class average = 1/10 (class c right, the nine others wrong) exactly."""
    data = imbalanced(test_ds)
    grey = torch.full((1, 3, 28, 28), 0.5)
    result = conditional_coherence(ConstantVAE(), data, classifiers, subset_sizes=None)
    for k in (1, 2):
        c = {m: int(classifiers.predict(m, grey)[0]) for m in NAMES}
        shares = [float((data.labels == c[t]).double().mean()) for t in NAMES]
        assert result["by_subset_size"][k] == pytest.approx(sum(shares) / 3)
        assert result["by_subset_size_class_average"][k] == pytest.approx(0.1)


def test_per_class_average_of_the_oracle_is_the_classifiers_per_class_accuracy(
        classifiers, test_ds):
    data = imbalanced(test_ds)
    result = conditional_coherence(OracleVAE(data), data, classifiers, subset_sizes=(1,))
    expected = []
    for t in NAMES:
        images = torch.cat([b[t] for b, _ in data.batches(1000)])
        right = (classifiers.predict(t, images) == data.labels).double()
        expected.append(sum(float(right[data.labels == c].mean()) for c in range(10)) / 10)
    # every single source -> t pair decodes the true image of t: two sources per target
    assert result["by_subset_size_class_average"][1] == pytest.approx(sum(expected) / 3)


def test_noise_generator_scores_near_chance(classifiers, test_ds):
    result = conditional_coherence(NoiseVAE(), test_ds, classifiers)
    assert result["mean_single_source"] < 0.25


def test_missing_classifier_is_a_clear_error(classifiers, test_ds):
    vae = OracleVAE(test_ds)
    vae.names = (*NAMES, "m3")
    with pytest.raises(ValueError, match="lacks the model's modalities"):
        conditional_coherence(vae, test_ds, classifiers)


# ---------------------------------------------------------------------- unconditional
def test_collapsed_generator_is_coherent_but_not_diverse(classifiers):
    vae = ClassSampler(lambda n, m: torch.full((n,), 3), noisy=False)
    result = unconditional_coherence(vae, classifiers, num_samples=300, batch_size=128)
    assert result["coherence"] == 1.0 and result["num_samples"] == 300
    assert result["diversity"] == pytest.approx(0.0, abs=1e-9)
    assert result["class_histogram"] == [0.0, 0.0, 0.0, 1.0] + [0.0] * 6
    assert result["class_entropy"] == pytest.approx(0.0)


def test_diverse_coherent_and_incoherent_generators(classifiers):
    g = torch.Generator().manual_seed(1)
    shared = torch.randint(0, 10, (400,), generator=g)
    coherent = ClassSampler(lambda n, m: shared[:n])
    result = unconditional_coherence(coherent, classifiers, num_samples=400, batch_size=400)
    assert result["coherence"] > 0.97
    assert result["class_entropy_normalised"] > 0.9 and result["diversity"] > 1.0
    independent = ClassSampler(lambda n, m: torch.randint(0, 10, (n,), generator=g))
    result = unconditional_coherence(independent, classifiers, num_samples=400)
    assert result["coherence"] < 0.1  # chance: 1 / 100 for three modalities
    assert sum(result["class_histogram"]) == pytest.approx(1.0)


# ---------------------------------------------------------------------- cache
def test_cache_roundtrip_and_corrupt_file(train_ds, test_ds, tmp_path, monkeypatch):
    first = get_classifiers(train_ds, test_ds, cache_dir=tmp_path, epochs=1, batch_size=64)
    files = list(tmp_path.glob("classifiers-bars-*.pt"))
    assert len(files) == 1 and not list(tmp_path.glob(".*tmp"))

    def must_not_train(*args, **kwargs):
        raise AssertionError("trained although a cache file exists")

    monkeypatch.setattr(clf_module, "train_modality_classifiers", must_not_train)
    second = get_classifiers(train_ds, test_ds, cache_dir=tmp_path, epochs=1, batch_size=64)
    x = torch.cat([b["m1"] for b, _ in test_ds.batches(1000)])
    assert torch.equal(first.predict("m1", x), second.predict("m1", x))
    assert second.test_accuracy == first.test_accuracy

    # corrupt file: load() says so clearly; get_classifiers warns and retrains
    files[0].write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match="corrupt"):
        ModalityClassifiers.load(files[0])
    monkeypatch.undo()
    with pytest.warns(UserWarning, match="Retraining"):
        third = get_classifiers(train_ds, test_ds, cache_dir=tmp_path, epochs=1, batch_size=64)
    assert torch.equal(first.predict("m1", x), third.predict("m1", x))
    assert isinstance(ModalityClassifiers.load(files[0]), ModalityClassifiers)


def test_load_rejects_other_files(tmp_path):
    path = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(3)}, path)
    with pytest.raises(ValueError, match="not a pyro_mmvae classifier file"):
        ModalityClassifiers.load(path)
    with pytest.raises(FileNotFoundError, match="no classifier file"):
        ModalityClassifiers.load(tmp_path / "missing.pt")


def test_fingerprint_tracks_data_and_settings(train_ds, test_ds):
    settings = {"epochs": 1}
    base = dataset_fingerprint(train_ds, test_ds, settings)
    assert base == dataset_fingerprint(train_ds, test_ds, {"epochs": 1})
    assert base != dataset_fingerprint(train_ds, test_ds, {"epochs": 2})
    assert base != dataset_fingerprint(bar_dataset(400, seed=5), test_ds, settings)
    with pytest.raises(TypeError, match="unknown classifier training option"):
        get_classifiers(train_ds, test_ds, epoch=1)


def test_cache_dir_from_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("PYRO_MMVAE_CACHE", str(tmp_path / "c"))
    assert default_cache_dir() == tmp_path / "c"


# ---------------------------------------------------------------------- plots
def test_grids_are_labelled_enlarged_and_keep_every_tile(test_ds, tmp_path):
    import numpy as np

    from pyro_mmvae.metrics.plots import FONT_SIZE, LABEL_GAP, grid_layout

    vae = OracleVAE(test_ds)
    batch, labels = next(test_ds.batches(10))
    layout = grid_layout(list(NAMES), 28)
    f, title = layout["scale"], FONT_SIZE + 2 * LABEL_GAP
    assert f * 28 >= 56  # tiles are enlarged to a readable size
    path = save_unconditional_grid(vae, tmp_path / "uncond.png", num_samples=5)
    with Image.open(path) as image:
        assert image.size == (layout["left"] + (5 * 30 + 2) * f + LABEL_GAP,
                              title + layout["top"] + (3 * 30 + 2) * f + LABEL_GAP)
        pixels = np.asarray(image.convert("RGB")).astype(float)
    x0, y0 = layout["left"] + 2 * f, title + layout["top"] + 2 * f
    # the first tile of the first row is the first stored m0 image (clamped, 8-bit), f times
    tile = torch.tensor(pixels[y0:y0 + 28 * f:f, x0:x0 + 28 * f:f])
    expected = (vae.images["m0"][0].permute(1, 2, 0) * 255).round()
    assert (tile - expected).abs().max() <= 1
    # row labels are written left of each row, column labels above the grid
    for row in range(3):
        centre = y0 + row * 30 * f + 14 * f
        assert pixels[centre - 8:centre + 8, :layout["left"] - 2].min() < 128
    assert pixels[title:title + layout["top"], x0:x0 + 28 * f].min() < 128
    path = save_cross_generation_grid(vae, batch, tmp_path / "grids" / "cross.png", 4,
                                      labels=labels)
    rows = len(NAMES) * (len(NAMES) + 1)
    with Image.open(path) as image:
        assert image.size[1] == title + layout["top"] + (rows * 30 + 2) * f + LABEL_GAP
        assert image.size[0] > (4 * 30 + 2) * f


def test_grid_rejects_incomplete_batch(test_ds, tmp_path):
    batch, _ = next(test_ds.batches(4))
    del batch["m2"]
    with pytest.raises(ValueError, match="lacks modalities"):
        save_cross_generation_grid(OracleVAE(test_ds), batch, tmp_path / "x.png")
