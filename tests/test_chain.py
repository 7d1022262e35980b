"""Chain parsing and validation, against a registry of small test processors."""
from __future__ import annotations

from pathlib import Path

import pytest

from artchain.core.chain import ChainParser
from artchain.core.errors import ChainError
from artchain.core.hookspecs import hookimpl
from artchain.core.plugins import discover
from artchain.core.processor import Param, Processor


class Blur(Processor):
    name = "blur"
    description = "test"
    params = (Param("radius", int, 2, min=1, max=9), Param("style", Path, help="a style image"))


class Sharpen(Processor):
    name = "sharpen"
    description = "test"
    aliases = ("crisp",)
    params = (Param("radius", int, 1, min=1), Param("mode", str, "fast", choices=("fast", "slow")))


class TestPlugin:
    @hookimpl
    def artchain_processors(self):
        return [Blur, Sharpen]


@pytest.fixture(scope="module")
def parser():
    registry = discover([TestPlugin()])
    return ChainParser(registry, aliases={"soft": "blur", "gone": "no-such-processor"},
                       presets={"tidy": "sharpen,resize-back", "soft,crisp": "blur:style=s.png,sharpen",
                                "loop": "loop2", "loop2": "loop"})


def names(chain):
    return [step.name for step in chain.steps]


def test_steps_params_and_aliases(parser):
    chain = parser.parse("soft:style=a.png:radius=4, crisp:mode=slow ,resize-back")
    assert names(chain) == ["blur", "sharpen", "resize-back"]
    assert chain.steps[0].params == {"radius": 4, "style": Path("a.png")}
    assert chain.steps[1].params == {"radius": 1, "mode": "slow"}
    assert chain.describe() == "blur:radius=4:style=a.png -> sharpen:mode=slow -> resize-back"


def test_presets_expand_inline_and_as_a_whole(parser):
    assert names(parser.parse("tidy")) == ["sharpen", "resize-back"]
    assert names(parser.parse("blur:style=x.png,tidy")) == ["blur", "sharpen", "resize-back"]
    assert names(parser.parse("soft, crisp")) == ["blur", "sharpen"]


def test_preset_parameters_reach_the_steps_that_take_them(parser):
    chain = parser.parse("tidy:radius=5")
    assert chain.steps[0].params["radius"] == 5
    with pytest.raises(ChainError, match="no step accepts parameter 'colour'"):
        parser.parse("tidy:colour=red")


@pytest.mark.parametrize("text, message", [
    ("", "empty"),
    ("blur,,sharpen", "empty step"),
    ("blr:style=a.png", "unknown step 'blr' \\(did you mean 'blur'\\?\\); known: .*sharpen"),
    ("gone", "alias 'gone' points to 'no-such-processor'"),
    ("blur", "parameter style is required"),
    ("blur:style=a.png:radius=99", "parameter radius must be <= 9"),
    ("blur:style=a.png:radius=two", "parameter radius must be a whole number"),
    ("blur:style=a.png:radius", "must look like key=value"),
    ("blur:style=a.png:style=b.png", "given twice"),
    ("sharpen:mode=medium", "mode must be one of fast, slow"),
    ("sharpen:size=3", "unknown parameter 'size' \\(accepted: radius, mode\\)"),
    ("loop", "refers to itself"),
])
def test_bad_chains_say_what_is_wrong(parser, text, message):
    with pytest.raises(ChainError, match=message):
        parser.parse(text)


def test_param_types():
    assert Param("on", bool, False).parse("yes") is True
    assert Param("n", float, 0.0).parse("2.5") == 2.5
    with pytest.raises(ValueError):
        Param("on", bool, False).parse("maybe")
    with pytest.raises(TypeError):
        Param("x", list, [])
