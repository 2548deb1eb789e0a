"""``python -m audiointerp.report PATH [PATH ...] [--out DIR]``: see :mod:`audiointerp.report`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from audiointerp.errors import AudioInterpError
from audiointerp.report.build import DEFAULT_RESAMPLES, DEFAULT_SEED, write_report
from audiointerp.report.page import GALLERY_MASKS


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m audiointerp.report",
                                     description="Gather runs (run folders, sweep folders or parents of them) into a report.")
    parser.add_argument("paths", nargs="+", type=Path, metavar="PATH")
    parser.add_argument("--out", type=Path, default=None, help="report folder (default: PATH/report for the first PATH)")
    parser.add_argument("--resamples", type=int, default=DEFAULT_RESAMPLES, help="bootstrap resamples per cell")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help="seeds the bootstrap")
    parser.add_argument("--gallery-masks", default=",".join(GALLERY_MASKS),
                        help="masks whose example audio the gallery plays, comma-separated")
    args = parser.parse_args(argv)
    try:
        if args.resamples < 1:
            raise AudioInterpError(f"--resamples: expected a positive integer, got {args.resamples}")
        out = args.out or args.paths[0] / "report"
        index = write_report(args.paths, out, resamples=args.resamples, seed=args.seed,
                             gallery_masks=tuple(m for m in args.gallery_masks.split(",") if m))
    except AudioInterpError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"report: {index.resolve()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
