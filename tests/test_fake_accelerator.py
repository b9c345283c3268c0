"""A fake accelerator on the CPU: host syncs, host->device copies and device mismatches of
one training step of every model of the zoo, with a budget per model.

The harness is ``benchmarks/host_syncs.py`` (:class:`FakeAccelerator`, a
``torch.overrides.TorchFunctionMode``). It cannot run anything on a real accelerator, so it
*treats the batch's device as one*: tensors that exist before the step (batch, parameters,
buffers) and everything computed from them are device tensors; tensors a factory makes
without ``device=`` (``torch.tensor([...])``, ``torch.ones(3)``, ``torch.eye(m)``) and results
of ``.cpu()`` are host tensors, as they would be next to a GPU. On that model it counts

* syncs: ``item``/``tolist``/``bool``/``int``/``float``/``cpu``/``numpy``/``nonzero``/
  ``masked_select``/boolean indexing ... of a *device* tensor;
* host->device copies: ``torch.tensor(data, device=...)``, ``.to(device)`` of a host tensor,
  indexing a device tensor with a Python list or a host tensor;
* device mismatches: an operation that mixes a host tensor (one or more dimensions) with
  device tensors -- on a GPU, ``Expected all tensors to be on the same device``. This is an
  approximation: a tensor made with ``device=x.device`` counts as a device tensor even when
  ``x`` is a host tensor, and branches the library takes on ``device.type == "cpu"`` are sent
  down their accelerator path through ``distributions.experts.set_accelerator_check``.

The step is the engine's (:class:`pyro_mmvae.engine.TrainStep`, fp32 networks, fused Adam),
after one step with Pyro validation on, as ``train`` runs it; five modalities of 1x4x4
images, tiny MLPs, complete batches and batches with about half of the modalities missing.
Syncs of the engine itself (the synchronous step's one ``tolist()`` of loss and gradient
norm; none in the sync-free step an accelerator runs) are booked apart from those of the
model and objective, which the budget covers.
"""

import pytest
import torch
from _scripts import load_script

from pyro_mmvae.distributions.experts import constant_table, subset_matrix


@pytest.fixture(scope="module")
def host_syncs():
    return load_script("host_syncs", "host_syncs_script")


#: Syncs (+ host->device copies) per step of the model and objective, complete / masked
#: batches. Before the fix (benchmarks/results/host_syncs_cpu.json, "before"):
#:   mmvae, mmvae_plus, mmvae_private  0+0 / 2+0
#:   mopoe                             0+31 / 2+31   (subset_matrix, one list-index write per row)
#:   mopoe_stratified                  0+93 / 2+93
#:   mvae                              5+7 / 7+7
#:   jmvae                             6+0 / 10+0
#:   telbo                             12+5 / 13+5
#:   mvtcae                            6+0 / 8+0
#:   crmvae                            6+5 / 8+5
#:   crmvae_stopgrad                   11+5 / 13+5
#: (the masked "before" includes 2 syncs of the CPU branch of the row-coverage check, which
#: has no accelerator switch before the fix).
BUDGETS = {
    "mmvae": 0, "mmvae_plus": 0, "mmvae_private": 0, "mopoe": 0, "mopoe_stratified": 0,
    "mvae": 0, "jmvae": 0, "telbo": 0, "mvtcae": 0, "crmvae": 0, "crmvae_stopgrad": 0,
    "jnf": 0, "jnf_dcca": 0,
    "cmvae": 0,
    "mhvae": 0, "nexus": 0,
    "dmvae": 0, "cvae": 0,
}
#: The engine's own syncs per step: the loss (with the gradient norm) read once.
ENGINE_BUDGET = 1


def _config(host_syncs, row):
    return next((name, settings) for r, name, settings in host_syncs.CONFIGS if r == row)


def test_every_model_of_the_zoo_has_a_budget(host_syncs):
    from pyro_mmvae.zoo import MODELS

    assert {name for _, name, _ in host_syncs.CONFIGS} == set(MODELS)
    assert {row for row, _, _ in host_syncs.CONFIGS} == set(BUDGETS)


@pytest.mark.parametrize("masked", [False, True], ids=["complete", "masked"])
@pytest.mark.parametrize("row", sorted(BUDGETS))
def test_training_step_is_within_its_sync_budget(host_syncs, row, masked):
    name, settings = _config(host_syncs, row)
    counts = host_syncs.count_step(name, settings, masked=masked)
    where = [p for p in counts["places"] if "pyro_mmvae/engine/" not in p]
    assert counts["syncs"] + counts["copies"] <= BUDGETS[row], where
    assert counts["mismatches"] == 0, where
    assert counts["engine_syncs"] <= ENGINE_BUDGET and counts["engine_copies"] == 0, counts


@pytest.mark.parametrize("name, settings", [
    ("mmvae", {"estimator": "dreg", "num_particles": 3}),
    ("mopoe", {"estimator": "iwae", "num_particles": 2, "subset_sampling": "stratified"}),
    ("crmvae", {"unimodal_targets": "all", "decoder_stop_gradient": True}),
    ("telbo", {"joint_features": 8, "incomplete_joint": "poe"}),
])
def test_estimators_and_variants_have_no_syncs(host_syncs, name, settings):
    counts = host_syncs.count_step(name, settings, masked=True)
    assert counts["syncs"] + counts["copies"] + counts["mismatches"] == 0, counts["places"]


def test_bf16_networks_add_no_syncs(host_syncs):
    counts = host_syncs.count_step("mvae", {}, masked=True, precision="bf16")
    assert counts["syncs"] + counts["copies"] + counts["mismatches"] == 0, counts["places"]


def test_the_harness_sees_syncs_copies_and_mismatches(host_syncs):
    """The counter itself: each kind of event on a device tensor is seen, none on host ones."""
    x = torch.rand(4)  # made before the mode: a device tensor
    with host_syncs.FakeAccelerator() as fake:
        bool(x.sum() > 0)
        x.max().item()
        x.tolist()
        x[x > 0.5]
        x.cpu()
        host = torch.tensor([1.0, 2.0, 3.0, 4.0])  # host, no copy yet
        host.sum().item()  # reading a host tensor is free
        host.to(x.device)  # one copy
        torch.tensor([0, 1], device=x.device)  # one copy
        y = torch.zeros(4, device=x.device)
        y[[0, 1]] = 1.0  # a list index is copied to the device
        x + host  # device + host (1-d): a mismatch on an accelerator
        x + torch.tensor(2.0)  # 0-d host tensors are allowed
    counts = fake.counts
    assert counts.of("sync") == 5, counts.events
    assert counts.of("copy") == 3, counts.events
    assert counts.of("mismatch") == 1, counts.events


def test_subset_tables_are_built_once_per_device():
    """The strata tables are cached: the same tensor each step, no per-step host copy."""
    assert subset_matrix(5) is subset_matrix(5, torch.device("cpu"))
    table = constant_table(((True, False), (False, True)), torch.bool, "cpu")
    assert table is constant_table(((True, False), (False, True)), torch.bool, None)
    assert table.tolist() == [[True, False], [False, True]]


def test_coverage_check_does_not_sync_on_an_accelerator_without_validation(host_syncs):
    """A row with no modality still fails: a ValueError while validating (and off an
    accelerator), ``torch._assert_async`` on an accelerator with validation off."""
    import pyro

    from pyro_mmvae.models.base import _check_rows_covered

    present = torch.tensor([[True, False], [True, False]])
    with pytest.raises(ValueError, match="1 row"):
        _check_rows_covered(present, sync=False)  # the CPU: a plain check
    pyro.enable_validation(False)
    with host_syncs.accelerator_paths(), host_syncs.FakeAccelerator() as fake:
        with pytest.raises(RuntimeError):
            _check_rows_covered(present, sync=False)
    assert fake.counts.of("sync") == 0, fake.counts.events


@pytest.mark.parametrize("name", ["mmvae_plus", "mopoe", "crmvae"])
def test_sync_free_engine_steps_have_no_syncs_at_all(host_syncs, name):
    """On an accelerator the engine queues its steps (TrainStep.queue): not even the loss is
    read per step; one read per window (TrainStep.check) is the only sync."""
    import pyro

    from pyro_mmvae.engine import TrainStep

    dataset = host_syncs.tiny_dataset()
    _, _, step = host_syncs.build_for_count(name, dataset)
    step.sync_free = True  # what an accelerator with fused Adam chooses
    batches = [b for b, _ in dataset.batches(host_syncs.BATCH)]
    was = pyro.poutine.util.is_validation_enabled()
    try:
        with host_syncs.accelerator_paths():
            pyro.enable_validation(True)
            step(batches[0])  # the validated first step, as train runs it
            pyro.enable_validation(False)
            queued = []
            with host_syncs.FakeAccelerator() as fake:
                for batch in batches[1:3]:
                    queued.append(step.queue(batch))
            counts = fake.counts.summary()
            losses = TrainStep.check(queued)
    finally:
        pyro.enable_validation(was)
    assert counts["syncs"] + counts["engine_syncs"] + counts["copies"] == 0, counts["places"]
    assert counts["mismatches"] == 0 and counts["engine_copies"] == 0, counts["places"]
    assert len(losses) == 2 and all(v == v for v in losses)
    pyro.clear_param_store()
