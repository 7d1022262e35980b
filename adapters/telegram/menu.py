"""Which chains the bot offers: the configured list, narrowed to what the installed plugins can run.

A chain whose first step has a required `style` path parameter (neural style transfer) is offered
too; the bot then asks for a second image and passes it to that step as a file.
"""
from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

from aiogram.filters.callback_data import CallbackData
from aiogram.types import InlineKeyboardMarkup
from aiogram.utils.keyboard import InlineKeyboardBuilder
from PIL import Image

from artchain.core.chain import Chain, ChainParser
from artchain.core.errors import ArtchainError, ChainError

STYLE_PARAM = "style"
BUTTONS_PER_ROW = 2


class ChainChoice(CallbackData, prefix="chain"):
    """A tap on a chain button: which option, and for which photo (its message id)."""

    option: int
    photo: int


@dataclass(frozen=True)
class ChainOption:
    chain: str  # as configured: an alias, a preset or a chain text
    description: str  # the steps it runs
    needs_style: bool

    def chain_text(self, style: Path | str | None = None) -> str:
        """The chain to run; a style chain gets the style image's file on its first step."""
        if not self.needs_style:
            return self.chain
        if style is None:
            raise ValueError(f"{self.chain} needs a style image")
        first, separator, rest = self.chain.partition(",")
        return f"{first}:{STYLE_PARAM}={style}{separator}{rest}"


def _takes_style(chain: Chain) -> bool:
    return any(param.name == STYLE_PARAM and param.type is Path and param.required
               for param in chain.steps[0].processor.params)


def _option(parser: ChainParser, chain_text: str, style_probe: Path) -> ChainOption | None:
    try:
        return ChainOption(chain_text, parser.parse(chain_text).describe(), needs_style=False)
    except ChainError:
        pass
    probe = ChainOption(chain_text, "", needs_style=True)
    try:
        chain = parser.parse(probe.chain_text(style_probe))
    except ArtchainError:
        return None  # a processor it names is not installed (or the chain is wrong)
    if not _takes_style(chain):
        return None
    description = chain.describe().replace(f":{STYLE_PARAM}={style_probe}", f":{STYLE_PARAM}=<your style image>")
    return ChainOption(chain_text, description, needs_style=True)


class ChainMenu:
    """The options shown under a photo, built once when the bot starts."""

    def __init__(self, parser: ChainParser, chains: list[str], presets: list[str]) -> None:
        options: list[ChainOption] = []
        # Whether a chain would be complete once the user sends a style image is asked by parsing
        # it with a real one: a style step checks that its image opens.
        with tempfile.TemporaryDirectory(prefix="artchain-menu-") as folder:
            style_probe = Path(folder) / "style.png"
            Image.new("RGB", (16, 16)).save(style_probe)
            for chain_text in dict.fromkeys([*chains, *presets]):  # keeps order, drops repeats
                option = _option(parser, chain_text, style_probe)
                if option is not None:
                    options.append(option)
        self.options = tuple(options)

    def get(self, index: int) -> ChainOption | None:
        return self.options[index] if 0 <= index < len(self.options) else None

    def keyboard(self, photo_message_id: int) -> InlineKeyboardMarkup:
        builder = InlineKeyboardBuilder()
        for index, option in enumerate(self.options):
            builder.button(text=option.chain, callback_data=ChainChoice(option=index, photo=photo_message_id))
        builder.adjust(BUTTONS_PER_ROW)
        return builder.as_markup()
