"""The README's build-your-own-model snippet runs as written."""

import json
import re
from pathlib import Path

import torch

torch.set_num_threads(1)


def test_custom_model_snippet_runs():
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    snippet = next(b for b in blocks if "TokenEncoder" in b)
    namespace: dict = {}
    exec(compile(snippet, "README.md", "exec"), namespace)
    assert torch.isfinite(namespace["loss"])
    namespace["loss"].backward()
    assert namespace["vae"].mods["caption"].encoder.embed.weight.grad.abs().sum() > 0


def test_register_model_snippet_trains_through_the_command_line(tmp_path, monkeypatch):
    """The README's registration example: one call adds the model to the CLI."""
    from pyro_mmvae import zoo
    from pyro_mmvae.data import registry

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(zoo, "BUILDERS", dict(zoo.BUILDERS))
    monkeypatch.setattr(zoo, "MODEL_DEFAULTS", dict(zoo.MODEL_DEFAULTS))
    monkeypatch.setattr(registry, "_REGISTERED", dict(registry._REGISTERED))
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    model_block = next(b for b in blocks if "TokenEncoder" in b)
    register_block = next(b for b in blocks if "register_model" in b)
    namespace: dict = {}
    exec(compile(model_block, "README.md", "exec"), namespace)
    exec(compile(register_block, "README.md", "exec"), namespace)
    summary = json.loads((tmp_path / "runs/image-caption/summary.json").read_text())
    assert summary["model"] == "image_caption" and summary["epochs"] == 2
    assert summary["overrides"] == {"beta": 0.5}
    assert "image_caption" in zoo.model_names()


def test_your_own_data_example_trains_and_evaluates(tmp_path, monkeypatch):
    """The README's "Your own data" script and commands, with one epoch and a small
    evaluation."""
    import shlex

    from pyro_mmvae import cli

    monkeypatch.chdir(tmp_path)
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = text.split("## Your own data", 1)[1].split("\n## ", 1)[0]
    script = re.findall(r"```python\n(.*?)```", section, flags=re.S)[0]
    commands = re.findall(r"```bash\n(.*?)```", section, flags=re.S)[0].strip().splitlines()
    exec(compile(script, "README.md", "exec"), {})
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
