"""Screenshots of the built site at 1280 px in headless Chromium, with the network off.

    python -m sphinx -b html docs docs/_build
    python docs/_ext/screenshots.py docs/_build docs/_static/screenshots

Takes the index, a guide page with maths, an API page and a notebook page, so that a reviewer
can check that nothing is clipped and that the formulas are rendered by the bundled MathJax
(no CDN). The network is cut with ``unshare -n`` where that works (root, or user namespaces),
and Chromium's own background networking is off in any case. Needs ``chromium`` (Debian:
``apt-get install chromium``) or ``chromium-browser`` / ``google-chrome`` on the PATH.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

PAGES = {
    "index": "index.html",
    "guide_models_mixture": "models_mixture.html",
    "api_infer_mixture": "api/pyro_mmvae.infer.mixture.html",
    "notebook_quickstart": "notebooks/01_quickstart.html",
}
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--window-size=1280,2000", "--virtual-time-budget=5000", "--hide-scrollbars"]


def _browser() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return name
    raise SystemExit("error: no chromium on the PATH (apt-get install chromium)")


def _offline_prefix() -> list[str]:
    """``unshare -n`` when it can create a network namespace here, else nothing."""
    if shutil.which("unshare") and subprocess.run(
            ["unshare", "-n", "true"], capture_output=True).returncode == 0:
        return ["unshare", "-n"]
    return []


def main(site: Path, out: Path) -> None:
    browser, prefix = _browser(), _offline_prefix()
    out.mkdir(parents=True, exist_ok=True)
    for name, page in PAGES.items():
        html = (site / page).resolve()
        if not html.is_file():
            raise SystemExit(f"error: {html} does not exist; build the site first")
        target = (out / f"{name}.png").resolve()
        subprocess.run([*prefix, browser, *FLAGS, f"--screenshot={target}", html.as_uri()],
                       check=True, capture_output=True, timeout=120)
        print(f"{target} ({'network off' if prefix else 'network on'})")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit(__doc__)
    main(Path(sys.argv[1]), Path(sys.argv[2]))
