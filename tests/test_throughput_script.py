"""benchmarks/throughput.py: its port of our ResNets is exact, and its dry run works (our side
only; MultiVae is never needed here)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from _scripts import load_script

from pyro_mmvae.nets.polymnist import PolyMNISTResNetDecoder, PolyMNISTResNetEncoder

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "throughput.py"


@pytest.fixture(scope="module")
def throughput():
    return load_script("throughput", "throughput_script")


def _shapes(module: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


@pytest.mark.parametrize("latent_dim, private_dim", [(32, 32), (512, 0)])
def test_ported_encoder_is_ours(throughput, latent_dim, private_dim):
    """Same parameter names and shapes, and with our weights the same outputs bit for bit."""
    torch.manual_seed(0)
    ours = PolyMNISTResNetEncoder(latent_dim, private_dim)
    port = throughput.PolyMNISTResNetEncoder(latent_dim, private_dim)
    assert _shapes(port) == _shapes(ours)
    port.load_state_dict(ours.state_dict())
    x = torch.rand(3, 3, 28, 28)
    expected, got = ours(x), port(x)
    assert len(got) == len(expected) == (4 if private_dim else 2)
    for a, b in zip(got, expected, strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("latent_dim", [64, 512])
def test_ported_decoder_is_ours(throughput, latent_dim):
    torch.manual_seed(1)
    ours = PolyMNISTResNetDecoder(latent_dim)
    port = throughput.PolyMNISTResNetDecoder(latent_dim)
    assert _shapes(port) == _shapes(ours)
    port.load_state_dict(ours.state_dict())
    z = torch.randn(4, latent_dim)
    assert torch.equal(port(z), ours(z))


def test_parse_variant(throughput):
    assert throughput.parse_variant("fp32") == {"precision": "32", "compile": False,
                                                "decoder_batching": None,
                                                "memory_format": None}
    assert throughput.parse_variant("bf16+compile+split+contiguous") == {
        "precision": "bf16", "compile": True, "decoder_batching": "split",
        "memory_format": "contiguous"}
    with pytest.raises(ValueError, match="unknown variant part 'int8'"):
        throughput.parse_variant("int8")


def test_summarise_and_batches(throughput):
    assert throughput.summarise([0.003, 0.001, 0.002, 0.010]) == {
        "median_ms": pytest.approx(2.5), "min_ms": pytest.approx(1.0),
        "max_ms": pytest.approx(10.0), "n": 4}
    a = throughput.make_batches(2, 2, seed=5, device="cpu")
    b = throughput.make_batches(2, 2, seed=5, device="cpu")
    assert sorted(a[0]) == ["m0", "m1", "m2", "m3", "m4"]
    assert throughput.checksum(a) == throughput.checksum(b)
    assert throughput.checksum(a) != throughput.checksum(throughput.make_batches(2, 2, 6, "cpu"))


def test_unknown_recipe_is_rejected(throughput):
    with pytest.raises(ValueError, match="unknown recipe 'mmvae'"):
        throughput.parse_args(["--recipes", "mmvae"])


def test_dry_run_ours_only(tmp_path):
    """The whole path (parent, worker process, protocol, table) on one tiny MMVAE+ step."""
    out_json, out_md = tmp_path / "t.json", tmp_path / "t.md"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--dry-run", "--recipes", "mmvae_plus_polymnist",
         "--json", str(out_json), "--md", str(out_md)],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    results = json.loads(out_json.read_text())
    (row,) = results["rows"]
    assert (row["recipe"], row["batch"], row["variant"]) == ("mmvae_plus_polymnist", 1, "fp32")
    assert "multivae" not in row
    ours = row["ours"]
    # the worker built the preset's model: its parameter count is the zoo's
    from types import SimpleNamespace

    from pyro_mmvae.zoo import build_model

    names = tuple(f"m{i}" for i in range(5))
    dataset = SimpleNamespace(name="polymnist", modalities=names,
                              event_shapes={m: torch.Size((3, 28, 28)) for m in names})
    vae = build_model("mmvae_plus", dataset, preset="mmvae_plus_polymnist").vae
    assert ours["params"] == sum(p.numel() for p in vae.parameters())
    assert ours["flops_per_step"] > 0 and ours["wall"]["n"] == 1
    assert ours["peak_rss_kb"] >= ours["rss_after_setup_kb"] > 0
    assert "`mmvae_plus_polymnist` | 1 | fp32 (split, channels_last)" in out_md.read_text()


def test_markdown_keeps_hand_written_sections(throughput, tmp_path):
    md = tmp_path / "t.md"
    throughput.write_markdown(md, "# table\n\n| a |\n")
    assert md.read_text() == "# table\n\n| a |\n"
    md.write_text(md.read_text() + "\n## Findings of run 1\n\nwritten by hand\n")
    throughput.write_markdown(md, "# table\n\n| a |\n| b |\n")
    text = md.read_text()
    assert text.startswith("# table\n\n| a |\n| b |\n")
    assert text.count("## Findings of run 1") == 1 and text.endswith("written by hand\n")
