"""Which chains the bot offers: the configured list, narrowed to what the installed plugins can run.

A chain with one step that reads an image file that the chain does not name (nst's style) is
offered too; the bot then asks for a second image and puts it into the job for that step.
"""
from __future__ import annotations

from dataclasses import dataclass

from aiogram.filters.callback_data import CallbackData
from aiogram.types import InlineKeyboardMarkup
from aiogram.utils.keyboard import InlineKeyboardBuilder

from artchain.core.chain import Chain, ChainParser, StepSpec
from artchain.core.errors import ArtchainError
from artchain.core.job import FileKey

BUTTONS_PER_ROW = 2


class ChainChoice(CallbackData, prefix="chain"):
    """A tap on a chain button: which option, and for which photo (its message id)."""

    option: int
    photo: int


@dataclass(frozen=True)
class ChainOption:
    label: str  # as configured: an alias, a preset or a chain text
    steps: tuple[StepSpec, ...]
    description: str  # what it does, in the processors' own words, for people
    style_slot: FileKey | None  # where the user's second image goes, when the chain needs one

    @property
    def needs_style(self) -> bool:
        return self.style_slot is not None


def _option(parser: ChainParser, chain_text: str) -> ChainOption | None:
    try:
        steps = parser.steps_of(chain_text)
        chain = parser.resolve(steps, chain_text)
    except ArtchainError:
        return None  # a processor it names is not installed (or the chain is wrong)
    slots = [(step.origin, param.name) for step in chain.steps for param in step.missing_files()]
    if len(slots) > 1:
        return None  # a chat asks for one extra image at most
    return ChainOption(chain_text, steps, describe_for_people(chain), slots[0] if slots else None)


def describe_for_people(chain: Chain) -> str:
    """The processors' descriptions, step by step ("Neon glow...; then super-resolution...")."""
    descriptions = [text for text in dict.fromkeys(step.processor.description.strip().rstrip(".")
                                                   for step in chain.steps) if text]
    if not descriptions:
        return ""
    first, *rest = descriptions
    return "; then ".join([first[:1].upper() + first[1:], *(_lower_first(text) for text in rest)])


def _lower_first(text: str) -> str:
    """"Return to..." -> "return to...", but "ESRGAN..." stays."""
    return text[:1].lower() + text[1:] if text[1:2].islower() else text


class ChainMenu:
    """The options shown under a photo, built once when the bot starts."""

    def __init__(self, parser: ChainParser, chains: list[str], presets: list[str]) -> None:
        wanted = chains or sorted(parser.registry.processors)
        # Styles of your own (`artchain styles add`, `artchain train`) always get a button.
        own_styles = sorted(name for name, processor in parser.registry.processors.items() if processor.own_style)
        options = (_option(parser, text) for text in dict.fromkeys([*wanted, *presets, *own_styles]))  # keeps order
        self.options = tuple(option for option in options if option is not None)

    def get(self, index: int) -> ChainOption | None:
        return self.options[index] if 0 <= index < len(self.options) else None

    def keyboard(self, photo_message_id: int) -> InlineKeyboardMarkup:
        builder = InlineKeyboardBuilder()
        for index, option in enumerate(self.options):
            builder.button(text=option.label, callback_data=ChainChoice(option=index, photo=photo_message_id))
        builder.adjust(BUTTONS_PER_ROW)
        return builder.as_markup()
