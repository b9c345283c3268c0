"""A time-boxed run of a paper recipe with the coherence after every epoch (for check.sh).

Trains ``--preset`` epoch by epoch (``pyro-mmvae train --resume`` with one more epoch each
time: the run is exact as if uninterrupted) and evaluates the single-source coherence after
each, until ``--minutes`` would be exceeded by the next epoch. Writes one JSON line per
epoch to ``--curve``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import launch  # noqa: E402,F401  (registers mini-small)

from pyro_mmvae.cli import main  # noqa: E402


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--model", default="mmvae_plus")
    p.add_argument("--preset", default="mmvae_plus_polymnist")
    p.add_argument("--dataset", default="polymnist")
    p.add_argument("--data-root")
    p.add_argument("--device", default="cuda")
    p.add_argument("--precision", default="32")
    p.add_argument("--minutes", type=float, default=4.0)
    p.add_argument("--max-epochs", type=int, default=250)
    p.add_argument("--out", required=True)
    p.add_argument("--curve", required=True)
    p.add_argument("--set", dest="settings", action="append", default=[])
    return p.parse_args()


def main_curve() -> int:
    args = parse()
    start = time.perf_counter()
    longest = 0.0
    Path(args.curve).write_text("")
    for epoch in range(1, args.max_epochs + 1):
        elapsed = time.perf_counter() - start
        if epoch > 1 and elapsed + longest > args.minutes * 60:
            break
        tic = time.perf_counter()
        argv = ["train", "--model", args.model, "--dataset", args.dataset,
                "--device", args.device, "--precision", args.precision, "--epochs", str(epoch),
                "--out", args.out, "--no-progress"]
        argv += ["--preset", args.preset] if args.preset else []
        argv += ["--data-root", args.data_root] if args.data_root else []
        argv += [x for s in args.settings for x in ("--set", s)]
        argv += ["--resume"] if epoch > 1 else []
        code = main(argv)
        if code != 0:
            return code
        summary = json.loads((Path(args.out) / "summary.json").read_text())
        record = {"epoch": epoch, "coherence": summary.get("conditional_coherence"),
                  "train_loss": summary.get("final_loss"),
                  "epoch_and_eval_seconds": round(time.perf_counter() - tic, 1),
                  "elapsed_seconds": round(time.perf_counter() - start, 1)}
        with open(args.curve, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")
        print(json.dumps(record), flush=True)
        longest = max(longest, time.perf_counter() - tic)
    return 0


if __name__ == "__main__":
    sys.exit(main_curve())
