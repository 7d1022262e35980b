"""Builds the nst pictures in docs/nst/: the seed's content/style pair through each shipped backbone.

    python scripts/nst_gallery.py [--seed-images ../shared/seed-images]

Every picture comes from the chain as a user runs it (`nst:style=style.png ...` through the engine);
a backbone whose weights are absent (vgg19 before `artchain weights pull vgg19`) is skipped with a
note. The seed's images themselves are not copied into the repository.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from artchain.core.errors import WeightsError
from artchain.runtime import Runtime

ROOT = Path(__file__).resolve().parent.parent
OUTPUT = ROOT / "docs" / "nst"
# (file name, chain parameters after the style): the default for each backbone, plus the options.
VARIANTS = (
    ("efficientnet-lite0", "backbone=efficientnet-lite0"),
    ("efficientnet-lite0-preserve-colour", "backbone=efficientnet-lite0:preserve_colour=true"),
    ("efficientnet-lite0-smooth", "backbone=efficientnet-lite0:smooth=true:style_weight=1e7:"
                                  "style_layers=block_1+block_3+block_5+block_8+block_10:content_layers=block_8"),
    ("vgg19", "backbone=vgg19"),
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed-images", type=Path, default=ROOT.parent / "shared" / "seed-images")
    args = parser.parse_args()
    content, style = args.seed_images / "content.png", args.seed_images / "style.png"
    engine = Runtime().engine
    OUTPUT.mkdir(parents=True, exist_ok=True)
    for name, options in VARIANTS:
        started = time.perf_counter()
        try:
            image = engine.run(f"nst:style={style}:{options}", content)
        except WeightsError as exc:
            print(f"{name}: skipped ({exc})")
            continue
        image.save(OUTPUT / f"{name}.jpg", quality=85)
        print(f"{name}: {time.perf_counter() - started:.1f} s -> docs/nst/{name}.jpg {image.size}")


if __name__ == "__main__":
    main()
