"""Chain parsing and validation, against a registry of small test processors."""
from __future__ import annotations

import pytest

from artchain.core.chain import ChainParser, StepSpec, parse_steps
from artchain.core.errors import ChainError
from artchain.core.hookspecs import hookimpl
from artchain.core.plugins import discover
from artchain.core.processor import ImageFile, Param, Processor


class Blur(Processor):
    name = "blur"
    description = "test"
    params = (Param("radius", int, 2, min=1, max=9), Param("style", ImageFile, help="a style image"))


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
    assert chain.steps[0].params == {"radius": 4, "style": ("a.png",)}
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
    ("blur:style=a.png:radius=99", "parameter radius must be <= 9"),
    ("blur:style=a.png:radius=two", "parameter radius must be a whole number"),
    ("blur:style=a.png:radius", "must look like key=value"),
    ("blur:style=a.png:style=b.png", "given twice"),
    ("sharpen:mode=medium", "mode must be one of fast, slow"),
    ("sharpen:size=3", "unknown parameter 'size' \\(accepted: radius, mode\\)"),
    ("sharpen:radius=nan", "radius must be a whole number"),
    ("blur:style=a.png+b.png", "style takes one file, got 2"),
    ("tidy:mode=slow:radius=x", "radius must be a whole number"),
    ("loop", "refers to itself"),
])
def test_bad_chains_say_what_is_wrong(parser, text, message):
    with pytest.raises(ChainError, match=message):
        parser.parse(text)


def test_a_required_file_may_come_with_the_job_instead(parser):
    chain = parser.parse("blur:radius=3")
    assert [param.name for param in chain.steps[0].missing_files()] == ["style"]
    assert parser.parse("blur:style=a.png").steps[0].missing_files() == ()


def test_text_and_structured_steps_resolve_alike(parser):
    text = "soft:style=a.png:radius=4,tidy:radius=2"
    assert parse_steps(text) == (StepSpec("soft", {"style": "a.png", "radius": "4"}), StepSpec("tidy", {"radius": "2"}))
    from_text, from_steps = parser.parse(text), parser.resolve(parse_steps(text))
    assert from_text.steps == from_steps.steps
    assert [step.origin for step in from_steps.steps] == [0, 1, 1]
    assert parser.steps_of("soft, crisp") == (StepSpec("soft,crisp"),)  # a preset's name as a whole
    assert parser.steps_of("soft,crisp:radius=3") == (StepSpec("soft,crisp", {"radius": "3"}),)
    assert [step.params["radius"] for step in parser.parse("soft,crisp:radius=3").steps] == [3, 3]


def test_a_preset_takes_the_required_parameters_of_its_steps(tmp_path):
    registry = discover([TestPlugin()])
    parser = ChainParser(registry, aliases={}, presets={"strong": "sharpen:mode=slow", "mine": "blur:radius=2"})
    step = parser.parse("mine:style=s.png").steps[0]
    assert step.params == {"radius": 2, "style": ("s.png",)}


def test_non_finite_numbers_are_refused():
    for text in ("nan", "inf", "-inf"):
        with pytest.raises(ValueError, match="finite"):
            Param("x", float, 0.0).parse(text)


def test_an_automatic_value_is_accepted_outside_the_range_and_named_in_the_error():
    memory = Param("memory", int, 0, min=64, automatic=0)
    assert memory.parse("0") == 0 and memory.parse("64") == 64
    with pytest.raises(ValueError, match=r"^must be >= 64 \(or 0: automatic\)$"):
        memory.parse("32")


def test_param_types():
    assert Param("on", bool, False).parse("yes") is True
    assert Param("n", float, 0.0).parse("2.5") == 2.5
    with pytest.raises(ValueError):
        Param("on", bool, False).parse("maybe")
    with pytest.raises(TypeError):
        Param("x", list, [])


def test_config_defaults_come_under_the_steps_own_parameters(parser):
    registry = parser.registry
    tuned = ChainParser(registry, aliases={}, presets={"tidy": "sharpen,resize-back"},
                        defaults={"crisp": {"mode": "slow"}, "blur": {"radius": 3}})
    assert tuned.parse("sharpen").steps[0].params == {"radius": 1, "mode": "slow"}
    assert tuned.parse("tidy").steps[0].params["mode"] == "slow"
    assert tuned.parse("blur:radius=5:style=a.png").steps[0].params["radius"] == 5
    assert tuned.parse("blur:style=a.png").describe() == "blur:radius=3:style=a.png"


@pytest.mark.parametrize("defaults, message", [
    ({"sharpn": {"mode": "slow"}}, "config: defaults: unknown step 'sharpn' (did you mean 'sharpen'?)"),
    ({"sharpen": {"mode": "loud"}}, "config: defaults: sharpen: parameter mode must be one of"),
    ({"sharpen": {"size": 3}}, "config: defaults: sharpen: unknown parameter 'size'"),
])
def test_bad_config_defaults_are_configuration_errors(parser, defaults, message):
    from artchain.core.errors import ConfigError

    with pytest.raises(ConfigError) as error:
        ChainParser(parser.registry, aliases={}, presets={}, defaults=defaults)
    assert str(error.value).startswith(message)
