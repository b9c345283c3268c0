"""Fault injection (issue 14): every failure the library must turn into a clear error, never
into silent corruption, a clobbered run or a raw traceback.

One test (or a parametrised group) per case of the issue's table, plus concurrency, a kill
during a checkpoint write, a corrupt cache and a real full / read-only disk (a small tmpfs,
only where the tests run as root and may mount). Cases wired into the CLI by the training
engine are marked ``xfail`` until then.
"""

from __future__ import annotations

import contextlib
import errno
import json
import multiprocessing
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pyro
import pytest
import torch
from PIL import Image

from pyro_mmvae import checkpoint as ckpt
from pyro_mmvae.checkpoint import (
    CheckpointError,
    CheckpointWriteError,
    check_resume_settings,
    load_checkpoint,
    remove_stale_temps,
    save_checkpoint,
    save_json,
)
from pyro_mmvae.data.base import MultimodalTensorDataset
from pyro_mmvae.data.polymnist import PolyMNIST
from pyro_mmvae.lock import LOCK_NAME, RunLock, RunLockedError, StaleRunLockError

torch.set_num_threads(1)
REPO = Path(__file__).resolve().parents[1]


def _child_env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    return env


def _dead_pid() -> int:
    """The PID of a process that has exited (and been reaped)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


# =============================================================================== run lock
HOLD_LOCK = textwrap.dedent("""
    import sys
    from pyro_mmvae.lock import RunLock
    lock = RunLock(sys.argv[1], command="holder").acquire()
    print("locked", flush=True)
    sys.stdin.readline()  # hold until the parent closes stdin (or kills us)
    lock.release()
""")


@contextlib.contextmanager
def lock_held_by_child(run_dir: Path):
    """A child process holding the lock on ``run_dir``; yields the Popen."""
    child = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(run_dir)],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                             env=_child_env(), cwd=REPO)
    try:
        assert child.stdout.readline().strip() == "locked"
        yield child
    finally:
        if child.poll() is None:
            child.stdin.close()
            child.wait(timeout=30)


def test_lock_second_process_is_refused_with_the_owner(tmp_path):
    run = tmp_path / "run"
    with lock_held_by_child(run) as child:
        record = json.loads((run / LOCK_NAME).read_text())
        assert record["pid"] == child.pid and record["host"] == socket.gethostname()
        assert record["command"] == "holder" and record["started"]
        with pytest.raises(RunLockedError, match=rf"in use by another run \(PID {child.pid} on "
                                                 r"host .*holder.*choose another --out") as info:
            RunLock(run).acquire()
        assert not isinstance(info.value, StaleRunLockError)
        assert info.value.owner["pid"] == child.pid
        with pytest.raises(RunLockedError):  # break_stale never takes a live lock
            RunLock(run, break_stale=True).acquire()
    assert not (run / LOCK_NAME).exists()  # released by the holder
    with RunLock(run) as lock:
        assert lock.locked and json.loads((run / LOCK_NAME).read_text())["pid"] == os.getpid()
    assert not (run / LOCK_NAME).exists()


def test_lock_is_exclusive_within_one_process(tmp_path):
    first = RunLock(tmp_path).acquire()
    with pytest.raises(RunLockedError, match=f"PID {os.getpid()}"):
        RunLock(tmp_path).acquire()
    with pytest.raises(ValueError, match="already held"):
        first.acquire()
    first.release()
    first.release()  # idempotent
    RunLock(tmp_path).acquire().release()


def _contend(run_dir: str, break_stale: bool, start: float, results) -> None:
    while time.time() < start:  # everyone starts together
        pass
    try:
        lock = RunLock(run_dir, break_stale=break_stale).acquire()
    except RunLockedError:
        results.put("refused")
        return
    results.put("won")
    time.sleep(1.0)  # hold long enough for every contender to try
    lock.release()


@pytest.mark.parametrize("stale_first", [False, True], ids=["fresh", "breaking-a-stale-lock"])
def test_lock_contention_exactly_one_winner(tmp_path, stale_first):
    """Processes start acquiring at the same instant: one wins, the others are refused —
    also when all of them race to break the same stale lock."""
    if "fork" not in multiprocessing.get_all_start_methods():
        pytest.skip("needs fork")
    run = tmp_path / "run"
    run.mkdir()
    if stale_first:
        (run / LOCK_NAME).write_text(json.dumps({"pid": _dead_pid(),
                                                 "host": socket.gethostname()}))
    ctx = multiprocessing.get_context("fork")
    results = ctx.Queue()
    start = time.time() + 0.5
    procs = [ctx.Process(target=_contend, args=(str(run), stale_first, start, results))
             for _ in range(4)]
    for proc in procs:
        proc.start()
    outcomes = sorted(results.get(timeout=60) for _ in procs)
    for proc in procs:
        proc.join(timeout=30)
    assert outcomes == ["refused", "refused", "refused", "won"]
    assert not (run / LOCK_NAME).exists()


def test_lock_of_a_killed_run_is_stale_never_stolen(tmp_path):
    run = tmp_path / "run"
    with lock_held_by_child(run) as child:
        child.kill()
        child.wait()
        pid = child.pid
    assert (run / LOCK_NAME).exists()  # a kill -9 cannot remove it
    with pytest.raises(StaleRunLockError, match=rf"stale lock: PID {pid} on host .*no longer "
                                                rf"runs.*delete {run / LOCK_NAME} or pass "
                                                r"--break-lock"):
        RunLock(run).acquire()
    assert json.loads((run / LOCK_NAME).read_text())["pid"] == pid  # left as it was
    lock = RunLock(run, break_stale=True).acquire()
    assert lock.broken["pid"] == pid
    assert json.loads((run / LOCK_NAME).read_text())["pid"] == os.getpid()
    lock.release()


FORK_THEN_DIE = textwrap.dedent("""
    import os, signal, sys, time
    from pyro_mmvae.lock import RunLock
    lock = RunLock(sys.argv[1]).acquire()
    ready, started = os.pipe()
    worker = os.fork()
    if worker == 0:  # a data-loader-like worker outlives the run for a while
        os.write(started, b"1")  # (the fork hooks have run)
        time.sleep(60)
        os._exit(0)
    os.read(ready, 1)
    print(worker, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
""")


def test_lock_does_not_live_on_in_forked_workers(tmp_path):
    """Workers forked by the run close their copy of the lock file: when the run is killed
    its lock is stale at once, even while a worker still runs."""
    run = tmp_path / "run"
    child = subprocess.Popen([sys.executable, "-c", FORK_THEN_DIE, str(run)],
                             stdout=subprocess.PIPE, text=True, env=_child_env(), cwd=REPO)
    worker = int(child.stdout.readline())
    child.wait()
    try:
        os.kill(worker, 0)  # the worker is alive
        with pytest.raises(StaleRunLockError, match=f"PID {child.pid}"):
            RunLock(run).acquire()
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(worker, signal.SIGKILL)


def test_lock_of_another_host_is_never_judged_stale(tmp_path):
    (tmp_path / LOCK_NAME).write_text(json.dumps({"pid": _dead_pid(), "host": "elsewhere"}))
    for break_stale in (False, True):
        with pytest.raises(RunLockedError, match="host 'elsewhere'.*never judged stale") as info:
            RunLock(tmp_path, break_stale=break_stale).acquire()
        assert not isinstance(info.value, StaleRunLockError)
    assert (tmp_path / LOCK_NAME).exists()


def test_lock_file_that_is_not_ours_is_reported(tmp_path):
    (tmp_path / LOCK_NAME).write_text("garbage")
    with pytest.raises(RunLockedError, match="without a readable owner"):
        RunLock(tmp_path, break_stale=True).acquire()


def test_lock_in_an_unwritable_folder_is_a_permission_error(tmp_path, monkeypatch):
    real_open = os.open

    def read_only_open(path, flags, *args, **kwargs):
        if str(path).endswith(LOCK_NAME) and flags & os.O_CREAT:
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", read_only_open)
    with pytest.raises(PermissionError, match=f"cannot lock run folder {tmp_path}: it is not "
                                              "writable.*choose a writable --out"):
        RunLock(tmp_path).acquire()


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root ignores modes")
def test_lock_in_a_read_only_folder(tmp_path):
    tmp_path.chmod(0o555)
    try:
        with pytest.raises(PermissionError, match="not writable"):
            RunLock(tmp_path).acquire()
    finally:
        tmp_path.chmod(0o755)


# ============================================================================ model inputs
def _tiny_dataset(n: int = 6) -> MultimodalTensorDataset:
    images = torch.randint(0, 256, (2, n, 1, 4, 4), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(0))
    return MultimodalTensorDataset({"m0": images[0], "m1": images[1]}, torch.arange(n) % 2,
                                   name="tiny")


def _tiny_model(name: str):
    from pyro_mmvae.zoo import build_model

    return build_model(name, _tiny_dataset(), hidden=(16,), latent_dim=2)


def _batch(n: int = 6) -> dict[str, torch.Tensor]:
    return next(_tiny_dataset(n).batches(n))[0]


@pytest.mark.parametrize("name", ["mmvae", "mmvae_plus"])
def test_row_without_modalities_is_an_error_with_validation_off(name):
    """Validation off (as the trainer runs after its first batch): a masked row with no
    modality used to give a finite loss and NaN in every parameter after the step."""
    spec = _tiny_model(name)
    mask = {"m0": torch.tensor([True, False, True, True, True, True]),
            "m1": torch.tensor([True, False, False, True, True, True])}
    pyro.enable_validation(False)
    with pytest.raises(ValueError, match=r"every row needs at least one present modality, but "
                                         r"1 row\(s\) of the batch have none \(rows 1\)"):
        spec.elbo.differentiable_loss(spec.vae.model, spec.vae.guide, _batch(), mask)
    # the same batch without the empty row trains to finite parameters
    keep = torch.tensor([True, False, True, True, True, True])
    data = {k: v[keep] for k, v in _batch().items()}
    rows = {k: v[keep] for k, v in mask.items()}
    loss = spec.elbo.differentiable_loss(spec.vae.model, spec.vae.guide, data, rows)
    loss.backward()
    assert torch.isfinite(loss)
    assert all(torch.isfinite(p.grad).all() for p in spec.vae.parameters() if p.grad is not None)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_row_without_modalities_on_cuda_fails_without_a_host_sync():
    """On an accelerator with validation off the check is torch._assert_async: the step is
    queued, and the error surfaces at the next synchronisation."""
    from pyro_mmvae.models.base import _check_rows_covered

    good = torch.tensor([[True, False], [False, True]], device="cuda")
    _check_rows_covered(good, sync=False)
    torch.cuda.synchronize()
    with pytest.raises(ValueError, match="rows 1"):
        _check_rows_covered(torch.tensor([[True, False]], device="cuda"), sync=True)


@pytest.mark.parametrize("validate", [False, True])
def test_uint8_images_are_refused(validate):
    spec = _tiny_model("mmvae")
    data = {"m0": torch.randint(0, 256, (3, 1, 4, 4), dtype=torch.uint8), "m1": None}
    pyro.enable_validation(validate)
    with pytest.raises(ValueError, match=r"modality 'm0' is uint8 .* convert with "
                                         r"x.float\(\) / 255"):
        spec.elbo.differentiable_loss(spec.vae.model, spec.vae.guide, data)


def test_images_in_0_255_are_refused_while_validating():
    """The trainer validates its first batch: 0..255 floats (loss ~1.6e7) stop there."""
    spec = _tiny_model("mmvae")
    data = {"m0": torch.randint(0, 256, (3, 1, 4, 4)).float(), "m1": None}
    with pytest.raises(ValueError, match=r"modality 'm0': image values lie in \[\d+, 2\d\d\] "
                                         r"\(0..255 pixel data\?\).*divide them by 255"):
        spec.elbo.differentiable_loss(spec.vae.model, spec.vae.guide, data)
    # images in [0, 1], or centred ones with negative values, pass
    for x in (data["m0"] / 255, data["m0"] / 127.5 - 1):
        spec.elbo.differentiable_loss(spec.vae.model, spec.vae.guide, {"m0": x})


@pytest.mark.parametrize("validate", [False, True])
def test_float64_input_is_refused_with_the_conversion(validate):
    spec = _tiny_model("mmvae")
    data = {k: v.double() for k, v in _batch().items()}
    pyro.enable_validation(validate)
    with pytest.raises(ValueError, match=r"modality 'm0' is float64 but the model computes in "
                                         r"float32: convert the data with "
                                         r"x.to\(torch.float32\)"):
        spec.elbo.differentiable_loss(spec.vae.model, spec.vae.guide, data)
    # a float64 model takes float64 data
    spec.vae.double()
    loss = spec.elbo.differentiable_loss(spec.vae.model, spec.vae.guide, data)
    assert loss.dtype == torch.float64 and torch.isfinite(loss)


def test_integer_data_for_a_continuous_likelihood_is_refused():
    spec = _tiny_model("mmvae")
    data = {"m0": torch.zeros(3, 1, 4, 4, dtype=torch.int64)}
    pyro.enable_validation(False)
    with pytest.raises(ValueError, match="'m0' has dtype int64.*x.to\\(torch.float32\\)"):
        spec.elbo.differentiable_loss(spec.vae.model, spec.vae.guide, data)


@pytest.mark.parametrize("validate", [False, True])
def test_batch_of_size_zero_is_refused(validate):
    spec = _tiny_model("mmvae")
    data = {k: v[:0] for k, v in _batch().items()}
    pyro.enable_validation(validate)
    with pytest.raises(ValueError, match="the batch is empty: modality 'm0' has 0 rows"):
        spec.elbo.differentiable_loss(spec.vae.model, spec.vae.guide, data)


# ============================================================================= PolyMNIST data
def _write_polymnist(root: Path, count: int = 4, modalities: int = 2, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    for m in range(modalities):
        folder = root / "PolyMNIST" / "train" / f"m{m}"
        folder.mkdir(parents=True)
        for i in range(count):
            pixels = rng.integers(0, 256, (28, 28, 3), dtype=np.uint8)
            Image.fromarray(pixels, "RGB").save(folder / f"{i}.{i % 10}.png")
    return root / "PolyMNIST" / "train"


def _pixels(path: Path) -> torch.Tensor:
    with Image.open(path) as image:
        return torch.from_numpy(np.asarray(image.convert("RGB")).copy()).permute(2, 0, 1)


def test_replaced_png_invalidates_the_cache(tmp_path):
    """Only the first file's size and mtime used to enter the fingerprint: a later file
    replaced after the cache was written kept its old pixels."""
    split = _write_polymnist(tmp_path)
    first = PolyMNIST(tmp_path, "train")
    assert (split.parent / "train.cache.pt").is_file()
    target = split / "m1" / "2.2.png"
    new = np.full((28, 28, 3), 7, dtype=np.uint8)
    Image.fromarray(new, "RGB").save(target)  # same name, other pixels
    second = PolyMNIST(tmp_path, "train")
    assert not torch.equal(first.data["m1"][2], second.data["m1"][2])
    assert torch.equal(second.data["m1"][2], _pixels(target))
    assert torch.equal(second.data["m0"], first.data["m0"])
    # a touched file (same bytes, new mtime) also rebuilds, and a fresh cache is reused
    os.utime(split / "m0" / "3.3.png", ns=(1, 1))
    third = PolyMNIST(tmp_path, "train")
    assert all(torch.equal(third.data[m], second.data[m]) for m in second.modalities)


def test_decoder_matches_pil_pixel_for_pixel(tmp_path):
    """torchvision's decode_png gives the pixels PIL's convert('RGB') gave, for every PNG
    colour type (RGB, grey, palette, alpha, 1-bit, 16-bit)."""
    from pyro_mmvae.data.polymnist import _decode_pngs

    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, (28, 28, 3), dtype=np.uint8)
    images = {
        "rgb": Image.fromarray(rgb, "RGB"),
        "grey": Image.fromarray(rgb[..., 0], "L"),
        "palette": Image.fromarray(rgb, "RGB").convert("P", palette=Image.ADAPTIVE, colors=40),
        "rgba": Image.fromarray(np.concatenate([rgb, rgb[..., :1]], -1), "RGBA"),
        "grey-alpha": Image.fromarray(np.concatenate([rgb, rgb[..., :1]], -1), "RGBA")
                           .convert("LA"),
        "bits": Image.fromarray(rgb[..., 0] > 128).convert("1"),
        "16bit": Image.fromarray(rgb[..., 0].astype(np.int32) * 257).convert("I;16"),
    }
    paths = []
    for name, image in images.items():
        paths.append(str(tmp_path / f"{name}.png"))
        image.save(paths[-1])
    decoded = _decode_pngs(paths)
    for path, ours in zip(paths, decoded, strict=True):
        assert torch.equal(torch.from_numpy(ours), _pixels(Path(path))), path


@pytest.mark.parametrize("damage", ["truncated", "empty", "random-bytes"])
@pytest.mark.parametrize("cache", [True, False])
def test_damaged_png_names_the_file(tmp_path, damage, cache):
    split = _write_polymnist(tmp_path)
    target = split / "m1" / "3.3.png"
    raw = target.read_bytes()
    broken = {"truncated": raw[: len(raw) // 2], "empty": b"",
              "random-bytes": np.random.default_rng(0).bytes(len(raw))}[damage]
    target.write_bytes(broken)
    with pytest.raises(ValueError, match=rf"cannot decode PolyMNIST image {target}: .*damaged"):
        PolyMNIST(tmp_path, "train", cache=cache)


def test_corrupt_cache_is_rebuilt(tmp_path):
    split = _write_polymnist(tmp_path)
    good = PolyMNIST(tmp_path, "train")
    cache = split.parent / "train.cache.pt"
    cache.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.warns(UserWarning, match="ignoring unreadable PolyMNIST cache"):
        again = PolyMNIST(tmp_path, "train")
    assert all(torch.equal(again.data[m], good.data[m]) for m in good.modalities)
    assert torch.load(cache, weights_only=True)["fingerprint"]  # rewritten


# ============================================================================== checkpoints
def _state(size: int = 10, epoch: int = 1) -> dict:
    return {"model": "mmvae", "dataset": "tiny", "epoch": epoch, "config": {"seed": 0},
            "vae_state": {"w": torch.arange(float(size))}, "optim_state": {},
            "rng_state": {}, "history": []}


def _temps(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


def test_disk_full_while_writing_a_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, _state(epoch=1))
    real_save = torch.save

    def full_disk(obj, handle, *args, **kwargs):
        handle.write(b"x" * 1000)  # part of the file is written, then the disk is full
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(CheckpointWriteError, match=rf"cannot write {path}: no space left on "
                                                   r"device; the previous checkpoint.pt is "
                                                   r"intact") as info:
        save_checkpoint(path, _state(epoch=2))
    assert isinstance(info.value, OSError) and isinstance(info.value, CheckpointError)
    assert info.value.errno == errno.ENOSPC and "\n" not in str(info.value)
    monkeypatch.setattr(torch, "save", real_save)
    assert load_checkpoint(path)["epoch"] == 1
    assert _temps(tmp_path) == []


@pytest.mark.parametrize("code", [errno.EACCES, errno.EROFS])
def test_unwritable_output_folder(tmp_path, monkeypatch, code):
    import tempfile

    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, _state(epoch=1))

    def refuse(*args, **kwargs):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    for write in (lambda: save_checkpoint(path, _state(epoch=2)),
                  lambda: save_json(tmp_path / "summary.json", {"a": 1})):
        with pytest.raises(CheckpointWriteError, match=rf"folder {tmp_path} is not writable "
                                                       r".*choose a writable --out"):
            write()
    monkeypatch.undo()
    assert load_checkpoint(path)["epoch"] == 1 and _temps(tmp_path) == []


def test_cli_reports_write_errors_as_user_errors():
    from pyro_mmvae import cli

    assert cli._exit_code(CheckpointWriteError("cannot write x: no space left on device")) == 2


@contextlib.contextmanager
def small_tmpfs(folder: Path, size: str = "256k"):
    """Mount a tmpfs of ``size`` on ``folder`` (root only), or skip."""
    if os.name != "posix" or os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root")
    folder.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                          capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {done.stderr.decode().strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def test_real_full_disk_and_read_only_mount(tmp_path):
    with small_tmpfs(tmp_path / "disk") as disk:
        path = disk / "checkpoint.pt"
        save_checkpoint(path, _state(size=1000, epoch=1))
        with pytest.raises(CheckpointWriteError, match="no space left on device; the previous "
                                                       "checkpoint.pt is intact"):
            save_checkpoint(path, _state(size=200_000, epoch=2))  # 800 kB > 256 kB
        assert load_checkpoint(path)["epoch"] == 1 and _temps(disk) == []
        subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
        with pytest.raises(CheckpointWriteError, match=f"folder {disk} is not writable"):
            save_checkpoint(path, _state(epoch=3))
        with pytest.raises(PermissionError, match="not writable"):
            RunLock(disk).acquire()
        assert load_checkpoint(path)["epoch"] == 1


SLOW_WRITER = textwrap.dedent("""
    import sys, time, torch
    from pyro_mmvae.checkpoint import save_checkpoint

    def slow_save(obj, handle, *args, **kwargs):
        handle.write(b"partial checkpoint")
        handle.flush()
        print("writing", flush=True)
        time.sleep(600)

    torch.save = slow_save
    save_checkpoint(sys.argv[1], {"epoch": 2})
""")


def test_kill_during_checkpoint_write_leaves_a_temp_file_the_next_start_removes(tmp_path):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, _state(epoch=1))
    child = subprocess.Popen([sys.executable, "-c", SLOW_WRITER, str(path)],
                             stdout=subprocess.PIPE, text=True, env=_child_env(), cwd=REPO)
    try:
        assert child.stdout.readline().strip() == "writing"
        leftovers = _temps(tmp_path)
        assert len(leftovers) == 1 and leftovers[0].startswith(f".checkpoint.pt.{child.pid}@")
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    assert _temps(tmp_path) == leftovers  # kill -9: nobody cleaned up
    assert load_checkpoint(path)["epoch"] == 1  # the next start (resume) reads the old one...
    assert _temps(tmp_path) == []  # ...and removes the dead writer's temporary file


def test_stale_temp_cleanup_spares_live_writers_and_other_files(tmp_path):
    path = tmp_path / "checkpoint.pt"
    host = ckpt._host_tag()
    dead = f".checkpoint.pt.{_dead_pid()}@{host}.abcd1234.tmp"
    mine = f".checkpoint.pt.{os.getpid()}@{host}.abcd1234.tmp"
    parent = f".checkpoint.pt.{os.getppid()}@{host}.abcd1234.tmp"
    elsewhere = f".checkpoint.pt.{_dead_pid()}@00000000.abcd1234.tmp"  # another host
    legacy_new, legacy_old = ".checkpoint.pt.k2j3h4g5.tmp", ".checkpoint.pt.q9w8e7r6.tmp"
    other = [".summary.json.abcd1234.tmp", "checkpoint.pt.tmp", "notes.tmp"]
    for name in [dead, mine, parent, elsewhere, legacy_new, legacy_old, *other]:
        (tmp_path / name).write_bytes(b"x")
    hours_ago = time.time() - 2 * 3600
    os.utime(tmp_path / legacy_old, (hours_ago, hours_ago))
    os.utime(tmp_path / ".summary.json.abcd1234.tmp", (hours_ago, hours_ago))
    removed = remove_stale_temps(path)
    assert sorted(p.name for p in removed) == sorted([dead, legacy_old])
    assert _temps(tmp_path) == sorted([mine, parent, elsewhere, legacy_new, *other])
    save_checkpoint(path, _state())  # a save cleans up as well
    assert _temps(tmp_path) == sorted([mine, parent, elsewhere, legacy_new, *other])


def test_random_bytes_checkpoint_is_a_clear_error(tmp_path):
    path = tmp_path / "checkpoint.pt"
    path.write_bytes(np.random.default_rng(0).bytes(5000))
    with pytest.raises(CheckpointError, match=f"checkpoint {path} cannot be read: the file is "
                                              "corrupt or truncated"):
        load_checkpoint(path)


# ============================================================================ resume settings
def test_resume_settings_list_every_difference():
    saved = {"seed": 0, "batch_size": 256, "hidden": [64, 64], "beta": 1.0, "lr": 1e-3}
    check_resume_settings(saved, {"seed": 0, "hidden": (64, 64), "beta": 1, "unknown": 3})
    with pytest.raises(CheckpointError, match=r"different ones: seed 0 -> 1, batch_size 256 -> "
                                              r"128, hidden \[64, 64\] -> \[32\]; drop these "
                                              r"flags .* or choose a new --out"):
        check_resume_settings(saved, {"seed": 1, "batch_size": 128, "hidden": (32,),
                                      "lr": 1e-3})


# ===================================================================== wired by the lead (CLI)
LEAD = pytest.mark.cli  # the rows wired into the CLI
TINY = ["--epochs", "1", "--set", "hidden=[16]", "--no-evaluate", "--no-progress",
        "--device", "cpu"]


@pytest.fixture
def small_mini(monkeypatch):
    """polymnist-mini cut to 64 training / 32 test tuples (fast CLI runs)."""
    from pyro_mmvae.data import registry

    real = registry.polymnist_mini

    def small(split="train", *args, **kwargs):
        dataset = real(split, *args, **kwargs)
        return dataset.subset(torch.arange(64 if split == "train" else 32))

    monkeypatch.setattr(registry, "polymnist_mini", small)


def _cli(argv, capsys) -> tuple[int, str]:
    from pyro_mmvae import cli

    code = cli.main(argv)
    return code, capsys.readouterr().err


def _error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if "error:" in line]
    assert lines, err
    assert "Traceback" not in err
    return lines[-1]


@LEAD
def test_cli_two_trains_in_one_folder(tmp_path, capsys, small_mini):
    run = tmp_path / "run"
    with lock_held_by_child(run) as child:  # a run in progress holds the folder
        code, err = _cli(["train", "--out", str(run), *TINY], capsys)
    assert code == 2
    line = _error_line(err)
    assert "in use by another run" in line and f"PID {child.pid}" in line
    assert not (run / "metrics.jsonl").exists()


@LEAD
@pytest.mark.parametrize("setting, named", [
    ("epochs=0", "epochs"), ("batch_size=0", "batch_size"), ("beta=abc", "beta"),
    ("hidden=[256,", "hidden"),
])
def test_cli_bad_settings(tmp_path, capsys, small_mini, setting, named):
    code, err = _cli(["train", "--out", str(tmp_path / "run"), *TINY, "--set", setting],
                     capsys)
    assert code == 2
    assert named in _error_line(err)


@LEAD
@pytest.mark.parametrize("flag, value", [("--seed", "1"), ("--batch-size", "16")])
def test_cli_resume_with_other_settings_is_refused(tmp_path, capsys, small_mini, flag, value):
    run = str(tmp_path / "run")
    code, _ = _cli(["train", "--out", run, "--batch-size", "32", *TINY], capsys)
    assert code == 0
    argv = ["train", "--out", run, "--batch-size", "32", *TINY, "--resume"]
    argv[argv.index("1")] = "2"  # --epochs 2
    if flag in argv:
        argv[argv.index(flag) + 1] = value
    else:
        argv += [flag, value]
    code, err = _cli(argv, capsys)
    assert code == 2
    line = _error_line(err)
    assert flag.lstrip("-").replace("-", "_") in line and "--out" in line
    assert len(Path(run, "metrics.jsonl").read_text().splitlines()) == 1  # nothing appended


@LEAD
def test_cli_non_finite_parameters_stop_training(tmp_path, capsys, small_mini, monkeypatch):
    """A step that leaves NaN in a parameter (the loss of that step was finite) stops the
    run naming the step and the parameter."""
    steps = {"n": 0}

    def poison(step):
        def poisoned(self, *args, **kwargs):
            out = step(self, *args, **kwargs)
            steps["n"] += 1
            if steps["n"] == 1:  # the first step leaves a NaN parameter behind
                with torch.no_grad():
                    self.param_groups[0]["params"][0].fill_(float("nan"))
            return out
        return poisoned

    for cls in (torch.optim.Adam, torch.optim.AdamW):
        monkeypatch.setattr(cls, "step", poison(cls.step))
    code, err = _cli(["train", "--out", str(tmp_path / "run"), *TINY], capsys)
    assert code in (1, 2)
    line = _error_line(err).lower()
    assert "parameter" in line and ("nan" in line or "non-finite" in line) and "step" in line
