"""Users' own data: the files format, presence masks, --missing-ratio, per-modality settings,
the captions benchmark."""

import json

import numpy as np
import pyro
import pytest
import torch

from pyro_mmvae import cli
from pyro_mmvae.data import (
    FileDataset,
    MaskedBatch,
    MultimodalTensorDataset,
    captions_mini,
    load_dataset,
    missing_masks,
    write_files,
)
from pyro_mmvae.data.captions import VOCABULARY, decode_caption
from pyro_mmvae.likelihoods import CategoricalLikelihood, LaplaceLikelihood, NormalLikelihood
from pyro_mmvae.settings import make_settings
from pyro_mmvae.zoo import build_model

torch.set_num_threads(1)


def _write(root, n=40, seed=0, **extra):
    """A small two-split files dataset: a 1x6x6 float image, an 5-d vector, tokens."""
    rng = np.random.default_rng(seed)
    for split in ("train", "test"):
        labels = rng.integers(0, 3, n)
        data = {"img": rng.random((n, 1, 6, 6)).astype(np.float32),
                "vec": rng.normal(size=(n, 5)).astype(np.float32),
                "tok": rng.integers(0, 7, size=(n, 4))}
        data.update(extra)
        write_files(root / split, data, labels=labels)
    return root


# ------------------------------------------------------------------------- the files format
def test_files_dataset_memory_maps_and_batches_read_the_right_rows(tmp_path):
    _write(tmp_path)
    ds = load_dataset(f"files:{tmp_path}", split="train")
    assert isinstance(ds, FileDataset)
    assert all(isinstance(a, np.memmap) for a in ds.arrays.values())
    assert ds.kinds == {"img": "image", "tok": "tokens", "vec": "vector"}
    assert ds.event_shapes["img"] == (1, 6, 6) and ds.vocab_sizes["tok"] == 7
    raw = {m: np.load(tmp_path / "train" / f"{m}.npy") for m in ("img", "vec", "tok")}
    labels = np.load(tmp_path / "train" / "labels.npy")
    order = torch.Generator().manual_seed(3)
    seen = []
    for batch, y in ds.batches(16, shuffle=True, generator=order):
        assert not isinstance(batch, MaskedBatch)  # no masks in the folder
        assert batch["tok"].dtype == torch.int64 and batch["img"].dtype == torch.float32
        for i in range(len(y)):  # find each row by its vector; everything else must agree
            row = int(np.flatnonzero((raw["vec"] == batch["vec"][i].numpy()).all(1))[0])
            seen.append(row)
            assert np.array_equal(raw["img"][row], batch["img"][i].numpy())
            assert np.array_equal(raw["tok"][row], batch["tok"][i].numpy())
            assert labels[row] == int(y[i])
    assert sorted(seen) == list(range(40)) and seen != list(range(40))
    part = ds.subset([5, 2]).head(1)
    assert len(part) == 1 and int(part.labels[0]) == labels[5]


def test_files_uint8_images_are_scaled_and_masks_become_masked_batches(tmp_path):
    n = 6
    images = np.arange(n * 4, dtype=np.uint8).reshape(n, 1, 2, 2) * 10
    mask = np.array([True, False, True, True, False, True])
    write_files(tmp_path / "train", {"a": images, "b": np.ones((n, 3), np.float32)},
                masks={"b": mask}, labels=np.arange(n) % 2)
    write_files(tmp_path / "test", {"a": images, "b": np.ones((n, 3), np.float32)})
    ds = load_dataset(f"files:{tmp_path}")
    batch, _ = next(iter(ds.batches(n)))
    assert isinstance(batch, MaskedBatch)
    assert torch.equal(batch.mask["b"], torch.from_numpy(mask))
    assert batch.mask["a"].all()
    assert torch.allclose(batch["a"], torch.from_numpy(images).float() / 255)
    assert torch.equal(batch["b"][~torch.from_numpy(mask)], torch.zeros(2, 3))  # zeroed
    assert not load_dataset(f"files:{tmp_path}", split="test").has_labels


@pytest.mark.parametrize("case, pattern", [
    ("ragged_n", r"b\.npy has 9 rows but .*a\.npy has 10: row 9 onwards has no 'b'"),
    ("object", r"c\.npy: object arrays are not supported \(dtype object"),
    ("bool", r"c\.npy: dtype bool is not supported"),
    ("complex", r"c\.npy: dtype complex64 is not supported"),
    ("tokens_3d", r"c\.npy: integer arrays are token sequences and must be \(N, L\)"),
    ("all_missing", r"1 row\(s\) of .*train observe no modality at all \(every mask is "
                    r"False at row 4\).*a\.mask\.npy"),
    ("mask_dtype", r"a\.mask\.npy: a mask must be bool of shape \(10,\)"),
    ("labels", r"labels\.npy: labels must be integers of shape \(10,\)"),
])
def test_files_format_errors_name_the_file_and_the_row(tmp_path, case, pattern):
    n = 10
    folder = tmp_path / "train"
    data = {"a": np.zeros((n, 3), np.float32), "b": np.zeros((n, 2), np.float32)}
    masks, labels = {}, None
    if case == "ragged_n":
        data["b"] = np.zeros((n - 1, 2), np.float32)
    elif case == "object":
        rows = [np.zeros(2), np.zeros(2), np.zeros(3)] + [np.zeros(2)] * (n - 3)
        ragged = np.empty(n, dtype=object)
        ragged[:] = rows
        data["c"] = ragged
    elif case == "bool":
        data["c"] = np.zeros((n, 2), bool)
    elif case == "complex":
        data["c"] = np.zeros((n, 2), np.complex64)
    elif case == "tokens_3d":
        data["c"] = np.zeros((n, 2, 2), np.int64)
    elif case == "all_missing":
        masks = {"a": np.arange(n) != 4, "b": np.arange(n) > 5}
    elif case == "mask_dtype":
        masks = {"a": np.ones(n, np.int64)}
    elif case == "labels":
        labels = np.zeros(n, np.float32)
    folder.mkdir(parents=True)
    for m, x in data.items():
        np.save(folder / f"{m}.npy", x, allow_pickle=True)
    for m, x in masks.items():
        np.save(folder / f"{m}.mask.npy", x)
    if labels is not None:
        np.save(folder / "labels.npy", labels)
    with pytest.raises(ValueError, match=pattern):
        FileDataset(folder)


@pytest.mark.parametrize("case, pattern", [
    ("nan", r"v\.npy: row 7 holds NaN"),
    ("image", r"im\.npy: row 3 has values outside \[0, 1\]"),
    ("token", r"t\.npy: row 5 has token ids outside \[0, 4\)"),
])
def test_files_value_errors_name_the_row(tmp_path, case, pattern):
    n = 9
    data = {"v": np.zeros((n, 2), np.float32), "im": np.zeros((n, 1, 2, 2), np.float32),
            "t": np.zeros((n, 3), np.int64)}
    if case == "nan":
        data["v"][7, 1] = np.nan
    elif case == "image":
        data["im"][3, 0, 1, 1] = 1.5
    else:
        data["t"][5, 2] = 4
    write_files(tmp_path / "train", data, vocab_sizes={"t": 4})
    with pytest.raises(ValueError, match=pattern):
        FileDataset(tmp_path / "train").validate()


def _record_scans(monkeypatch, scan_bytes):
    """Set SCAN_BYTES; return the list of (dtype, first row, bytes) of every chunk read."""
    from pyro_mmvae.data import files

    monkeypatch.setattr(files, "SCAN_BYTES", scan_bytes)
    read, original = [], files.scan_chunks

    def recording(array):
        for start, chunk in original(array):
            read.append((array.dtype, start, chunk.nbytes))
            yield start, chunk

    monkeypatch.setattr(files, "scan_chunks", recording)
    return read


@pytest.mark.parametrize("case, pattern", [
    ("nan", r"im\.npy: row 7 holds NaN"),
    ("image", r"im\.npy: row 4 has values outside \[0, 1\]"),
    ("token", r"t\.npy: row 5 has token ids outside \[0, 4\)"),
    ("negative", r"u\.npy: row 6 has token ids outside \[0, 3\)"),
])
def test_files_validation_in_small_chunks_names_the_first_bad_row(tmp_path, monkeypatch,
                                                                  case, pattern):
    """Chunks of 24 bytes (3 rows of v, 1 of im): bad rows in later chunks, after good ones,
    and a NaN is reported before an out-of-range image row of the same file."""
    n = 9
    data = {"v": np.zeros((n, 2), np.float32), "im": np.zeros((n, 1, 2, 2), np.float32),
            "t": np.zeros((n, 3), np.int64), "u": np.full((n, 2), 2, np.int64)}
    if case == "nan":
        data["im"][[7, 8], 0, 1, 0] = np.nan
        data["im"][2, 0, 0, 0] = 2.0  # a NaN anywhere is reported first
    elif case == "image":
        data["im"][[4, 8], 0, 1, 1] = 1.5
    elif case == "token":
        data["t"][[5, 7], 2] = 4
    else:
        data["u"][6, 0] = -1
    write_files(tmp_path / "train", data, vocab_sizes={"t": 4})
    read = _record_scans(monkeypatch, 24)
    with pytest.raises(ValueError, match=pattern):
        FileDataset(tmp_path / "train").validate()
    assert read and max(nbytes for *_, nbytes in read) <= 24


def test_files_validation_holds_one_chunk_and_scans_each_array_once(tmp_path, monkeypatch):
    n = 10
    data = {"big": np.zeros((n, 40), np.float64),  # 320 bytes a row: one row per chunk
            "im": np.full((n, 1, 2, 2), 0.5, np.float32), "tok": np.arange(3 * n).reshape(n, 3),
            "px": np.zeros((n, 1, 2, 2), np.uint8)}
    write_files(tmp_path / "train", data)
    read = _record_scans(monkeypatch, 100)
    ds = FileDataset(tmp_path / "train")
    assert ds.vocab_sizes == {"tok": 3 * n}
    assert sum(nbytes for dtype, _, nbytes in read if dtype == np.int64) == data["tok"].nbytes
    read.clear()
    ds.validate()
    by_dtype = {}
    for dtype, start, nbytes in read:
        by_dtype.setdefault(np.dtype(dtype).name, []).append((start, nbytes))
    # every row of each float array read exactly once, never more than one chunk at a time;
    # the token ids were range-checked by the vocabulary scan and uint8 needs no check
    assert by_dtype["float64"] == [(i, 320) for i in range(n)]
    assert by_dtype["float32"] == [(0, 96), (6, 64)]
    assert set(by_dtype) == {"float64", "float32"}


def test_files_cli_errors_are_user_errors(tmp_path, capsys):
    code = cli.main(["train", "--dataset", f"files:{tmp_path}/nowhere", "--epochs", "1",
                     "--out", str(tmp_path / "run"), "--no-progress", "--no-evaluate"])
    assert code == 2 and "nowhere" in capsys.readouterr().err


# ------------------------------------------------------------------------- missing entries
def test_missing_masks_are_reproducible_and_never_empty():
    present = torch.ones(3, 5000, dtype=torch.bool)
    present[1, :100] = False  # already missing stays missing
    a, b = missing_masks(present, 0.5, 7), missing_masks(present, 0.5, 7)
    assert torch.equal(a, b)
    assert not torch.equal(a, missing_masks(present, 0.5, 8))
    assert a.any(0).all()  # never a row without a modality
    assert not (a & ~present).any()  # never invents an entry
    # P(kept) = 1/2 + P(all three dropped) * 1/3 = 1/2 + 1/24 for fully observed rows
    assert abs(a[:, 100:].float().mean().item() - (0.5 + 1 / 24)) < 0.015
    assert torch.equal(missing_masks(present, 0.0, 1), present)
    with pytest.raises(ValueError, match="missing ratio"):
        missing_masks(present, 1.0, 0)


def test_with_missing_on_tensor_and_file_datasets(tmp_path):
    ds = captions_mini("test")
    dropped = ds.with_missing(0.5, seed=1)
    assert dropped.missing_ratio == 0.5 and ds.masks is None
    assert torch.equal(dropped.presence(), ds.with_missing(0.5, seed=1).presence())
    assert dropped.presence().any(0).all()
    batch, _ = next(iter(dropped.batches(64)))
    assert isinstance(batch, MaskedBatch) and set(batch.mask) == {"image", "caption"}
    sub = dropped.subset(torch.arange(10, 20))  # masks follow the rows
    assert torch.equal(sub.presence(), dropped.presence()[:, 10:20])
    complete = dropped.complete()
    assert complete.presence().all() and len(complete) == int(dropped.presence().all(0).sum())
    _write(tmp_path, n=200)
    files = load_dataset(f"files:{tmp_path}").with_missing(0.4, seed=2)
    again = load_dataset(f"files:{tmp_path}").with_missing(0.4, seed=2)
    assert torch.equal(files.presence(), again.presence()) and files.presence().any(0).all()
    head = files.subset(torch.arange(50, 60))
    assert torch.equal(head.presence(), files.presence()[:, 50:60])


def test_a_masked_batch_gives_the_loss_of_an_explicit_mask():
    ds = captions_mini("test").with_missing(0.5, seed=0)
    spec = build_model("mmvae", ds, hidden=[16], latent_dim=4)
    batch, _ = next(iter(ds.batches(32)))
    pyro.set_rng_seed(0)
    implicit = spec.elbo.differentiable_loss(spec.vae.model, spec.vae.guide, batch)
    pyro.set_rng_seed(0)
    explicit = spec.elbo.differentiable_loss(spec.vae.model, spec.vae.guide, dict(batch),
                                             batch.mask)
    pyro.set_rng_seed(0)
    unmasked = spec.elbo.differentiable_loss(spec.vae.model, spec.vae.guide, dict(batch))
    assert torch.allclose(implicit, explicit)
    assert not torch.allclose(implicit, unmasked)  # the zeros would be scored otherwise


# ------------------------------------------------------------------------- model choices
def test_modalities_choose_networks_and_likelihoods_and_accept_overrides(tmp_path):
    _write(tmp_path)
    ds = load_dataset(f"files:{tmp_path}")
    mods = build_model("mmvae", ds, hidden=[8]).vae.mods
    assert isinstance(mods["img"].likelihood, LaplaceLikelihood)
    assert isinstance(mods["vec"].likelihood, NormalLikelihood)
    assert isinstance(mods["tok"].likelihood, CategoricalLikelihood)
    assert mods["tok"].likelihood.num_classes == 7
    assert mods["tok"].decode(torch.zeros(2, 20)).shape == (2, 4, 7)
    spec = build_model("mmvae", ds, hidden=[8], **{"modalities.vec.likelihood": "laplace",
                                                    "modalities.img.likelihood_scale": 0.2})
    assert isinstance(spec.vae.mods["vec"].likelihood, LaplaceLikelihood)
    assert spec.vae.mods["img"].likelihood.scale == 0.2
    assert spec.settings["modalities"] == {"vec": {"likelihood": "laplace"},
                                           "img": {"likelihood_scale": 0.2}}
    with pytest.raises(ValueError, match="unknown modalities"):
        build_model("mmvae", ds, modalities={"nope": {"likelihood": "normal"}})
    with pytest.raises(ValueError, match="modalities.vec.vocab_size=V"):
        build_model("mmvae", ds, **{"modalities.vec.likelihood": "categorical"})


def test_modality_settings_are_checked_once():
    assert make_settings({"modalities.c.likelihood": "categorical", "modalities.c.vocab_size": 5}
                         )["modalities"] == {"c": {"likelihood": "categorical", "vocab_size": 5}}
    for values, pattern in [({"modalities.c.colour": 1}, "unknown setting 'modalities.c.colour'"),
                            ({"modalities.c.likelihood": "poisson"},
                             "setting modalities.c.likelihood must be one of"),
                            ({"modalities.c.vocab_size": 1}, "an integer >= 2"),
                            ({"modalities.c": 1}, "modalities.<name>.<key>"),
                            ({"modalities": [1]}, "setting modalities must be a mapping")]:
        with pytest.raises(ValueError, match=pattern):
            make_settings(values)


# ------------------------------------------------------------------------- command line
def test_train_and_evaluate_files_with_missing_ratio(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _write(tmp_path / "data", n=96)
    run = tmp_path / "run"
    assert cli.main(["train", "--dataset", "files:data", "--epochs", "1", "--batch-size", "32",
                     "--missing-ratio", "0.5", "--seed", "3", "--set", "hidden=[16]",
                     "--out", str(run), "--no-progress"]) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["dataset"] == f"files:{(tmp_path / 'data').resolve()}"
    assert summary["missing_ratio"] == 0.5 and summary["conditional_coherence"] is not None
    state = torch.load(run / "checkpoint.pt", weights_only=False)
    assert state["hyper"]["missing_ratio"] == 0.5
    from pyro_mmvae.runs import load_run

    loaded = load_run(run)  # the same entries are dropped again (seed 3, test: seed 4)
    fresh = load_dataset(f"files:{tmp_path / 'data'}", split="test").with_missing(0.5, 4)
    assert torch.equal(loaded.test_ds.presence(), fresh.presence())
    given = load_run(run, datasets=(loaded.train_ds, fresh))  # already loaded: used as given
    assert given.test_ds is fresh and given.train_ds is loaded.train_ds
    restored = given.vae.state_dict()
    assert all(torch.equal(v, restored[k]) for k, v in loaded.vae.state_dict().items())
    monkeypatch.chdir(tmp_path / "data")  # evaluate does not need the original cwd
    assert cli.main(["evaluate", str(run), "--metrics", "coherence,likelihood,probe",
                     "--num-samples", "8", "--max-points", "16"]) == 0
    results = json.loads((run / "eval.json").read_text())
    assert results["likelihood"]["rows"] == "test rows that observe every modality"
    observed = results["coherence"]["conditional"]["observed_rows"]
    assert 0 < observed["img"] < 96 and observed["img+tok"] < observed["img"]
    resume = ["train", "--dataset", str(summary["dataset"]), "--epochs", "2", "--out", str(run),
              "--resume", "--no-progress", "--no-evaluate"]
    assert cli.main([*resume, "--missing-ratio", "0.2"]) == 2  # not the run's ratio
    assert cli.main(resume) == 0  # the checkpoint's ratio and seed
    assert torch.load(run / "checkpoint.pt", weights_only=False)["hyper"]["missing_ratio"] == 0.5
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["train", "--missing-ratio", "1"])


def test_resume_refuses_other_modality_settings(tmp_path, capsys):
    _write(tmp_path / "data", n=32)
    run = str(tmp_path / "run")
    base = ["train", "--dataset", f"files:{tmp_path / 'data'}", "--batch-size", "32",
            "--set", "hidden=[8]", "--out", run, "--no-progress", "--no-evaluate"]
    assert cli.main([*base, "--epochs", "1", "--set", "modalities.img.likelihood_scale=0.5"]
                    ) == 0
    resume = [*base, "--epochs", "2", "--resume"]
    capsys.readouterr()
    for changed, message in [
        ("modalities.vec.likelihood=laplace", "modalities.vec.likelihood 'normal' -> 'laplace'"),
        ("modalities.img.likelihood_scale=0.2", "modalities.img.likelihood_scale 0.5 -> 0.2"),
        ("modalities.tok.nets=mlp", "modalities.tok.nets 'text' -> 'mlp'"),
        ("likelihood_scale=0.3", "likelihood_scale 0.75 -> 0.3"),  # the global setting
    ]:
        assert cli.main([*resume, "--set", changed]) == 2, changed
        err = capsys.readouterr().err
        assert message in err and "--out" in err, err
    state = torch.load(f"{run}/checkpoint.pt", weights_only=False)
    assert state["epoch"] == 1  # nothing was trained by the refused commands
    # the same choices, written out or not, resume
    assert cli.main([*resume, "--set", "modalities.img.likelihood_scale=0.5",
                     "--set", "modalities.vec.likelihood=normal"]) == 0


def test_make_captions_writes_the_files_format(tmp_path, shared_data_root):
    mnist = shared_data_root / "mnist"
    for out in ("a", "b"):
        assert cli.main(["make-captions", "--mnist-root", str(mnist), "--out",
                         str(tmp_path / out), "--seed", "5", "--limit", "50"]) == 0
    for split in ("train", "test"):
        for name in ("image.npy", "caption.npy", "labels.npy"):
            assert (tmp_path / "a" / split / name).read_bytes() == \
                (tmp_path / "b" / split / name).read_bytes()
    ds = load_dataset(f"files:{tmp_path / 'a'}")
    assert ds.kinds == {"caption": "tokens", "image": "image"}
    assert ds.vocab_sizes == {"caption": len(VOCABULARY)}
    assert ds.event_shapes["image"] == (1, 28, 28)
    batch, labels = next(iter(ds.batches(50)))
    for caption, label in zip(batch["caption"], labels, strict=True):
        words = decode_caption(caption).split()
        assert len(words) == 8 and [w for w in words if w in VOCABULARY[:10]] == \
            [VOCABULARY[int(label)]]


# ------------------------------------------------------------------------- captions-mini
def test_captions_mini_is_an_image_caption_dataset():
    ds = load_dataset("captions-mini", split="test")
    assert isinstance(ds, MultimodalTensorDataset) and len(ds) == 1000
    assert ds.vocab_sizes == {"caption": 30}
    digit_words = ds.data["caption"] < 10
    assert digit_words.sum(1).eq(1).all()  # exactly one digit word per caption
    assert torch.equal(ds.data["caption"][digit_words], ds.labels)


def test_captions_mini_mmvae_is_coherent_after_three_epochs(tmp_path):
    """Measured: image -> caption 0.79, caption -> image 0.83 (seed 0, about 20 s)."""
    run = tmp_path / "run"
    assert cli.main(["train", "--dataset", "captions-mini", "--epochs", "3", "--out", str(run),
                     "--no-progress"]) == 0
    summary = json.loads((run / "summary.json").read_text())
    matrix = summary["coherence_matrix"]
    assert summary["classifier_accuracy"]["caption"] > 0.95
    assert matrix["image"]["caption"] > 0.5 and matrix["caption"]["image"] > 0.5  # chance 0.1


# ------------------------------------------------------------------------- slow
@pytest.mark.slow
# Not mmvae_private: the private-latent baseline is at chance on polymnist-mini even with all
# modalities (0.101, the failure MMVAE+ fixes; README).
@pytest.mark.parametrize("model", [
    "mmvae", "mvae", "mopoe", "mmvae_plus", "jmvae", "mvtcae", "crmvae", "telbo"])
def test_every_model_trains_with_half_the_modalities_missing(tmp_path, model):
    """``--missing-ratio 0.5`` on polymnist-mini, the dataset's default epochs: mean
    single-source coherence above chance (0.1).

    Measured (seed 0, 2026-12-01): mmvae 0.714, mvae 0.509, mopoe 0.470, mmvae_plus 0.529,
    jmvae 0.370, mvtcae 0.440, crmvae 0.381, telbo 0.216 (mmvae and jmvae in an earlier run
    of the day, before the TELBO change, which leaves their code unchanged; the others after
    it, on a shared 2-core CPU, 12-45 min each). TELBO was at chance (0.107) while
    its incomplete rows used the product of its unimodal experts, which its first stage
    freezes; it now trains the joint encoder on every row (``incomplete_joint="encoder"``,
    see :mod:`pyro_mmvae.models.coordination`; the alternative recipe documented there,
    PoE rows with trainable unimodal encoders in the first stage, measured 0.444).
    """
    run = tmp_path / "run"
    assert cli.main(["train", "--model", model, "--dataset", "polymnist-mini",
                     "--missing-ratio", "0.5", "--out", str(run), "--no-progress"]) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["conditional_coherence"] > 0.12


def test_data_parallel_shards_keep_the_presence_masks():
    from pyro_mmvae.engine.distributed import LossModule, ProcessGroup, shard

    ds = captions_mini("test").with_missing(0.5, seed=0)
    batch, _ = next(iter(ds.batches(10)))
    local = shard(batch, ProcessGroup(rank=1, world_size=2))
    assert isinstance(local, MaskedBatch) and len(local["image"]) == 5
    assert torch.equal(local.mask["caption"], batch.mask["caption"][5:])
    spec = build_model("mmvae", ds, hidden=[16], latent_dim=4)
    module = LossModule(spec.vae, spec.elbo)
    pyro.set_rng_seed(0)
    explicit = module(dict(local), local.mask)
    pyro.set_rng_seed(0)
    assert torch.allclose(explicit, module(local))
