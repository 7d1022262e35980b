"""Builds the README gallery: runs artchain itself on the photos scikit-image ships, writes
docs/gallery/<photo>-<chain>.jpg and puts their table into README.md between the gallery markers.

    python scripts/gallery.py [--chains cubism renaissance expressionism neon] [--width 384]

Each image goes through the chain as a user would run it (`artchain.run(chain, image)`, followed by
`resize-back` so every cell keeps the photo's size), then is scaled to the gallery's cell width.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
GALLERY = ROOT / "docs" / "gallery"
README = ROOT / "README.md"
START, END = "<!-- gallery: made by scripts/gallery.py -->", "<!-- gallery end -->"
# Only photos whose licence allows redistribution: chelsea and coffee are CC0, astronaut and rocket
# public domain.
PHOTOS = ("chelsea.png", "astronaut.png", "coffee.png", "rocket.jpg")
# The last column is the neon bot's flow (colour at the working resolution, x4, back to the photo's
# size) spelled out, so the upscaler works on the small image whatever the `neon,upscale` preset says.
DEFAULT_CHAINS = ("cubism", "renaissance", "expressionism", "neon", "neon:output=working,upscale")


def load_photo(name: str) -> Image.Image:
    from skimage import data

    return Image.open(Path(data.data_dir) / name).convert("RGB")


def cell(image: Image.Image, width: int) -> Image.Image:
    height = round(image.height * width / image.width)
    return image.resize((width, height), Image.Resampling.LANCZOS)


def build(chains: list[str], width: int, out_dir: Path = GALLERY, readme: Path = README) -> Path:
    import artchain

    out_dir.mkdir(parents=True, exist_ok=True)
    header = "| photo | " + " | ".join(chains) + " |"
    rows = [header, "|" + " --- |" * (len(chains) + 1)]
    for name in PHOTOS:
        stem = Path(name).stem
        photo = load_photo(name)
        cell(photo, width).save(out_dir / f"{stem}.jpg", quality=88)
        link = out_dir.relative_to(readme.parent).as_posix()
        cells = [f"![{stem}]({link}/{stem}.jpg)"]
        for chain in chains:
            styled = artchain.run(f"{chain},resize-back", photo)
            file_name = f"{stem}-{chain.replace(',', '+').replace(':', '-').replace('=', '-')}.jpg"
            cell(styled, width).save(out_dir / file_name, quality=88)
            cells.append(f"![{stem} {chain}]({link}/{file_name})")
            print(f"{file_name}")
        rows.append("| " + " | ".join(cells) + " |")
    text = readme.read_text(encoding="utf-8")
    before, start, rest = text.partition(START)
    _, end, after = rest.partition(END)
    if not (start and end):
        raise SystemExit(f"{readme}: the markers {START} and {END} are missing")
    readme.write_text(before + START + "\n" + "\n".join(rows) + "\n" + END + after, encoding="utf-8")
    return readme


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--chains", nargs="+", default=list(DEFAULT_CHAINS),
                        help="chains (e.g. cubism or neon,upscale), one gallery column each")
    parser.add_argument("--width", type=int, default=384, help="width of each gallery image in pixels")
    args = parser.parse_args()
    print(f"wrote {build(args.chains, args.width)}")


if __name__ == "__main__":
    main()
