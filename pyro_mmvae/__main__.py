"""`python -m pyro_mmvae` runs the pyro-mmvae command line."""

from pyro_mmvae.cli import main

raise SystemExit(main())
