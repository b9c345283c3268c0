"""The README's example, and the guide's examples that the README points to, run as written.

The README's Python block; the image–caption model and its registration with the command line
(``docs/custom_model.md``); the own-data script and commands (``docs/data.md``, with one epoch
and a small evaluation). ``tests/test_docs.py`` runs every page's code in order as well; these
tests check what the examples promise (gradients reach the token encoder, the registered model
trains through ``pyro-mmvae train``, the own-data run is evaluated).
"""

import json
import re
import shlex
from pathlib import Path

import torch

torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parents[1]


def _python_blocks(path: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", path.read_text(), flags=re.S)


def test_readme_is_short_and_keeps_its_two_commands():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 150
    assert "pip install -e . && pyro-mmvae train" in text
    assert 'pip install -e ".[dev]" && python -m pytest' in text


def test_readme_example_trains_and_generates_every_modality(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    (block,) = _python_blocks(ROOT / "README.md")
    namespace: dict = {}
    exec(compile(block, "README.md", "exec"), namespace)
    assert namespace["loss"] > 0 and torch.isfinite(torch.tensor(namespace["loss"]))
    samples = namespace["samples"]
    assert {f"x_m{i}" for i in range(5)} <= set(samples)
    assert samples["x_m3"].shape[-4:] == (8, 3, 28, 28)


def test_custom_modality_example_runs():
    blocks = _python_blocks(ROOT / "docs" / "custom_model.md")
    snippet = next(b for b in blocks if "class TokenEncoder" in b)
    namespace: dict = {}
    exec(compile(snippet, "docs/custom_model.md", "exec"), namespace)
    assert torch.isfinite(namespace["loss"])
    assert namespace["pair"].mods["caption"].encoder.embed.weight.grad.abs().sum() > 0


def test_register_model_example_trains_through_the_command_line(tmp_path, monkeypatch):
    """The guide's registration example: one call adds the model to the CLI."""
    from pyro_mmvae import zoo
    from pyro_mmvae.data import registry

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(zoo, "BUILDERS", dict(zoo.BUILDERS))
    monkeypatch.setattr(zoo, "MODEL_DEFAULTS", dict(zoo.MODEL_DEFAULTS))
    monkeypatch.setattr(registry, "_REGISTERED", dict(registry._REGISTERED))
    blocks = _python_blocks(ROOT / "docs" / "custom_model.md")
    model_block = next(b for b in blocks if "class TokenEncoder" in b)
    register_block = next(b for b in blocks if "register_model" in b)
    namespace: dict = {}
    exec(compile(model_block, "docs/custom_model.md", "exec"), namespace)
    exec(compile(register_block, "docs/custom_model.md", "exec"), namespace)
    summary = json.loads((tmp_path / "runs/image-caption/summary.json").read_text())
    assert summary["model"] == "image_caption" and summary["epochs"] == 2
    assert summary["overrides"] == {"beta": 0.5}
    assert "image_caption" in zoo.model_names()


def test_your_own_data_example_trains_and_evaluates(tmp_path, monkeypatch):
    """The own-data page's script and commands, with one epoch and a small evaluation."""
    from pyro_mmvae import cli

    monkeypatch.chdir(tmp_path)
    text = (ROOT / "docs" / "data.md").read_text()
    section = text.split("## An example: two sensors", 1)[1].split("\n## ", 1)[0]
    script = re.findall(r"```python\n(.*?)```", section, flags=re.S)[0]
    commands = re.findall(r"```bash\n(.*?)```", section, flags=re.S)[0]
    commands = commands.replace("\\\n", " ").strip().splitlines()
    exec(compile(script, "docs/data.md", "exec"), {})
    assert (tmp_path / "mydata/train/sensor_b.mask.npy").is_file()
    train, evaluate = (shlex.split(line) for line in commands)
    assert train[:2] == ["pyro-mmvae", "train"] and evaluate[:2] == ["pyro-mmvae", "evaluate"]
    train[train.index("--epochs") + 1] = "1"
    assert cli.main([*train[1:], "--no-progress"]) == 0
    assert cli.main([*evaluate[1:], "--num-samples", "16", "--max-points", "32"]) == 0
    results = json.loads((tmp_path / "runs/mydata/eval.json").read_text())
    assert results["complete"] and results["dataset"] == f"files:{tmp_path / 'mydata'}"
    assert 0 <= results["coherence"]["by_subset_size"]["1"] <= 1
    assert "skipped" in results["quality"]  # vectors: no Fréchet distances
