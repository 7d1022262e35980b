"""Fetches the real training data for the GAN styles (public-domain paintings and photographs from
Debian packages and scikit-image) into a dataset folder laid out by school, with sources.json.

    python scripts/training_data.py [--out DIR] [--cache DIR]

Nothing it writes belongs in the repository. Run it again to resume or to check: it downloads and
writes only what is missing or changed.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from artchain.plugins.gan.training_data import (
    TrainingDataError, build_dataset, default_dataset_dir, default_package_cache)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=default_dataset_dir(), help="dataset folder (default: %(default)s)")
    parser.add_argument("--cache", type=Path, default=default_package_cache(),
                        help="where the .deb files are downloaded and extracted (default: %(default)s)")
    parser.add_argument("--quiet", action="store_true", help="print only the summary")
    args = parser.parse_args()
    try:
        summary = build_dataset(args.out, args.cache, progress=(lambda message: None) if args.quiet else print)
    except TrainingDataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for folder, count in sorted(summary.counts.items()):
        print(f"{folder}: {count}")
    print(f"{summary.written} written, {summary.reused} already there")
    for failure in summary.not_rebuilt:
        print(f"not rebuilt: {failure}")
    if summary.unused:
        print(f"{len(summary.unused)} boards of no school here, left out: " + "; ".join(summary.unused))
    print(f"dataset: {summary.out_dir}")
    return 1 if summary.not_rebuilt else 0


if __name__ == "__main__":
    sys.exit(main())
