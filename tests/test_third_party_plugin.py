"""A plugin written outside artchain, really installed with pip, runs in a chain untouched."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
from PIL import Image

from support import run_cli

PLUGIN = '''
"""A third-party artchain plugin: colour inversion with a strength parameter."""
from artchain.core.hookspecs import hookimpl
from artchain.core.processor import Param, Processor


class Invert(Processor):
    name = "invert"
    aliases = ("negative",)
    description = "Invert colours, blended with the input by `strength`."
    params = (Param("strength", float, 1.0, "0 keeps the input, 1 fully inverts", min=0, max=1),)

    def process(self, batch, model, params, ctx):
        return batch + params["strength"] * (1 - 2 * batch)


@hookimpl
def artchain_processors():
    return [Invert]
'''

PYPROJECT = '''
[build-system]
requires = ["setuptools"]
build-backend = "setuptools.build_meta"

[project]
name = "artchain-invert"
version = "1.0"

[project.entry-points."artchain.plugins"]
invert = "artchain_invert"
'''


@pytest.mark.slow
def test_installed_plugin_runs_in_a_chain(tmp_path, isolated_env):
    source = tmp_path / "src"
    source.mkdir()
    (source / "pyproject.toml").write_text(textwrap.dedent(PYPROJECT))
    (source / "artchain_invert.py").write_text(textwrap.dedent(PLUGIN))
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--target", str(target), str(source)], check=True, timeout=300)
    env = {**isolated_env, "PYTHONPATH": os.pathsep.join(filter(None, [str(target), isolated_env.get("PYTHONPATH")]))}

    listing = run_cli("list", env=env)
    assert "invert" in listing.stdout and "negative" in listing.stdout

    image = tmp_path / "in.png"
    Image.new("RGB", (20, 10), (10, 100, 250)).save(image)
    result = run_cli("run", "negative:strength=1,resize:scale=2", image, "-o", tmp_path / "out.png", env=env)
    assert result.returncode == 0, result.stderr
    out = Image.open(tmp_path / "out.png")
    assert out.size == (40, 20) and out.getpixel((5, 5)) == (245, 155, 5)
