"""pyro_mmvae: multimodal VAEs as Pyro programs."""

__version__ = "0.1.0"
