"""Styles of your own: a trained weight file under its own name, in every place a style appears
(the CLI, `artchain list`, the chat keyboard, jobs as the watcher and the queue submit them), and
never in place of a built-in one."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from artchain.adapters import cli
from artchain.core.config import StyleSettings
from artchain.core.errors import ConfigError
from artchain.core.job import InputFile, Job, run_job
from artchain.core.styles import STYLES_FILE
from artchain.runtime import Runtime, load_settings

WEIGHTS = Path(__file__).resolve().parents[1] / "weights"
CUBISM = WEIGHTS / "cyclegan-cubism.safetensors"
NEON = WEIGHTS / "pix2pix-neon.safetensors"


def artchain(*args: str):
    result = CliRunner().invoke(cli.app, [str(arg) for arg in args])
    assert "Traceback" not in result.output
    return result


def runtime_with(tmp_path, **styles: dict) -> Runtime:
    config = load_settings(environ={"ARTCHAIN_WEIGHTS_DIR": str(tmp_path / "weights")})
    config.styles = {name: StyleSettings(**style) for name, style in styles.items()}
    return Runtime(config)


def test_styles_add_runs_the_file_under_its_name_and_remove_undoes_it(tmp_path, photo, isolated_env):
    added = artchain("styles", "add", "monet", CUBISM, "--description", "Monet's water lilies, my own training")
    assert added.exit_code == 0, added.output
    assert (Path(isolated_env["ARTCHAIN_WEIGHTS_DIR"]) / STYLES_FILE).is_file()

    listed = json.loads(artchain("list", "--json").output)
    monet = next(row for row in listed["processors"] if row["name"] == "monet")
    assert monet["description"] == "Monet's water lilies, my own training"
    assert monet["weights"] == "monet:imported"

    # The same file as the built-in cubism style: the same picture, and the photo's own size.
    for name in ("monet", "cubism"):
        result = artchain("run", name, photo, "-o", tmp_path / f"{name}.png")
        assert result.exit_code == 0, result.output
    mine, builtin = (np.asarray(Image.open(tmp_path / f"{name}.png")) for name in ("monet", "cubism"))
    assert Image.open(tmp_path / "monet.png").size == Image.open(photo).size
    assert np.array_equal(mine, builtin)

    removed = artchain("styles", "remove", "monet")
    assert removed.exit_code == 0, removed.output
    gone = artchain("run", "monet", photo, "-o", tmp_path / "again.png")
    assert gone.exit_code == 2 and "unknown step 'monet'" in gone.output
    assert not list((Path(isolated_env["ARTCHAIN_WEIGHTS_DIR"]) / "imported").glob("monet*"))


def test_a_style_never_takes_a_built_in_name_or_a_file_of_another_network(isolated_env):
    for name in ("cubism", "cyclegan-cubism", "thumbnail", "esrgan"):  # alias, processor, preset, processor
        result = artchain("styles", "add", name, CUBISM)
        assert result.exit_code == 2 and "already a processor, alias or preset" in result.output, result.output
    wrong = artchain("styles", "add", "poster", NEON, "--network", "cyclegan")
    assert wrong.exit_code == 2 and "pix2pix-neon.safetensors as a cyclegan style: not a GAN" in wrong.output
    unknown = artchain("styles", "add", "poster", NEON, "--network", "diffusion")
    assert unknown.exit_code == 2 and "known: cyclegan, pix2pix" in unknown.output
    assert not (Path(isolated_env["ARTCHAIN_WEIGHTS_DIR"]) / STYLES_FILE).exists()


def test_config_styles_reach_jobs_and_the_chat_keyboard(tmp_path, photo):
    from artchain.adapters.telegram.menu import ChainMenu

    runtime = runtime_with(tmp_path, glow={"network": "pix2pix", "weights": "pix2pix-neon",
                                           "description": "the demo neon under a name of mine"})
    menu = ChainMenu(runtime.parser, ["cubism"], [])
    assert [option.label for option in menu.options] == ["cubism", "glow"]
    assert menu.options[1].description == "The demo neon under a name of mine"

    # A job names the style as the watcher's inbox folder or a queue message does.
    job = Job(runtime.parser.steps_of("glow"), InputFile("photo.png", photo.read_bytes()))
    result = run_job(runtime.engine, job)
    assert result.size == Image.open(photo).size and result.chain.startswith("glow")


@pytest.mark.parametrize("styles, message", [
    ({"neon": {"network": "pix2pix", "weights": "pix2pix-neon"}}, "'neon' is already"),
    ({"glow": {"network": "stylegan", "weights": "x"}}, "no installed processor runs 'stylegan'"),
    ({"Glow": {"network": "pix2pix", "weights": "x"}}, "lowercase letters"),
])
def test_bad_config_styles_are_one_line_errors(tmp_path, styles, message):
    with pytest.raises(ConfigError, match=message):
        runtime_with(tmp_path, **styles).registry
