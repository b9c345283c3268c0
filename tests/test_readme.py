"""The README's build-your-own-model snippet runs as written."""

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
