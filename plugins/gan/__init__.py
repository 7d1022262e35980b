"""GAN styles: the seeds' CycleGAN UNet (cubism, renaissance, expressionism) and pix2pix neon, with the
`artchain train pairs|paired|pix2pix|cyclegan` commands that make their weights. Heavy modules load on
first use."""
from __future__ import annotations

from typing import TYPE_CHECKING

from artchain.core.hookspecs import hookimpl

if TYPE_CHECKING:
    import typer


@hookimpl
def artchain_processors() -> list:
    from .processors import PROCESSORS

    return list(PROCESSORS)


@hookimpl
def artchain_cli(app: "typer.Typer") -> None:
    from .cli import train_app

    app.add_typer(train_app, name="train")
