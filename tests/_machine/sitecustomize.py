"""Make every Python process of a test run see the same "machine" (for the suite's
machine-independence check, ``tests/test_machine_independence.py``).

With ``PYRO_MMVAE_TEST_BF16_UNITS=1`` (or ``0``) in the environment and this folder on
``PYTHONPATH``, :func:`pyro_mmvae.engine.networks.bf16_supported` answers True (or False) in
every process — the pytest process and the CLI / ``torchrun`` subprocesses the tests start —
so ``--precision auto`` resolves as on a CPU with (or without) bfloat16 matrix units, whatever
this CPU has. Nothing is imported at start-up: the patch is applied when the library's module
is first imported.
"""

from __future__ import annotations

import importlib.abc
import os
import sys

_ENV = "PYRO_MMVAE_TEST_BF16_UNITS"
_TARGET = "pyro_mmvae.engine.networks"


class _PatchOnImport(importlib.abc.MetaPathFinder):
    """Find ``_TARGET`` with the other finders, then replace its ``bf16_supported``."""

    def __init__(self, answer: bool) -> None:
        self.answer = answer

    def find_spec(self, name, path=None, target=None):  # noqa: D401 - importlib protocol
        if name != _TARGET:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(name, path, target)
            if spec is not None and spec.loader is not None:
                spec.loader = _PatchingLoader(spec.loader, self.answer)
                return spec
        return None


class _PatchingLoader(importlib.abc.Loader):
    def __init__(self, loader, answer: bool) -> None:
        self.loader, self.answer = loader, answer

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module) -> None:
        self.loader.exec_module(module)
        answer = self.answer
        module.bf16_supported = lambda device: answer


if os.environ.get(_ENV) in ("0", "1"):
    sys.meta_path.insert(0, _PatchOnImport(os.environ[_ENV] == "1"))
