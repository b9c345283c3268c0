"""The suite passes whatever ``--precision auto`` resolves to on the machine running it.

Machines of the same kind differ in CPU model: on one with AVX512-BF16 or AMX-BF16 ``auto`` is
bf16, elsewhere fp32. A test that compares numbers between two runs must pin the precision of
both (a ``torchrun`` run resolving ``auto`` to bf16 beside an fp32 in-process reference failed
CI on such a CPU). This test reruns the suite's numeric comparisons — exact resume, data-parallel
against one process, bf16 resume, the CLI's runs — as on a machine *with* bfloat16 matrix units
and as on one *without*, whatever this one has: ``tests/_machine/sitecustomize.py`` makes
:func:`pyro_mmvae.engine.networks.bf16_supported` answer the forced value in the pytest process
and in every CLI / ``torchrun`` process it starts.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MACHINE = REPO / "tests" / "_machine"

#: The numeric comparisons that run a training path with the default ``--precision``.
NUMERIC_COMPARISONS = (
    "tests/test_distributed.py",
    "tests/test_train.py::test_resume_gives_identical_parameters",
    "tests/test_train.py::test_short_run_lowers_loss_and_writes_files",
    "tests/test_engine.py::test_a_run_records_the_precision_auto_chose_and_keeps_it_on_resume",
    "tests/test_engine.py::test_resume_is_exact_with_schedule_clipping_and_bf16",
)


def _forced_env(units: str) -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYRO_MMVAE_TEST_BF16_UNITS=units)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(MACHINE), str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    return env


def test_the_forcing_reaches_subprocesses():
    """The check below is only worth something if a child process sees the forced machine."""
    code = ("from pyro_mmvae.engine import resolve_precision;"
            "print(resolve_precision('auto', 'cpu'))")
    for units, expected in (("1", "bf16"), ("0", "32")):
        out = subprocess.run([sys.executable, "-c", code], env=_forced_env(units), cwd=REPO,
                             capture_output=True, text=True, timeout=120, check=True)
        assert out.stdout.strip() == expected


@pytest.mark.parametrize("units", ["1", "0"], ids=["with-bf16-units", "without-bf16-units"])
def test_numeric_comparisons_pass_on_either_kind_of_cpu(units):
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-x",
         *NUMERIC_COMPARISONS],
        env=_forced_env(units), cwd=REPO, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert " passed" in result.stdout
