"""A plugin written outside artchain, really installed with pip, runs untouched: in a chain from the
command line, with its own weights entry (downloaded from a local HTTP server) and an image-file
parameter, on a Celery worker, and in the chat bot's two-image dialog. Nothing in core names it."""
from __future__ import annotations

import asyncio
import hashlib
import io
import http.server
import os
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image
from safetensors.torch import save_file

from support import run_cli, start_worker, wait_for_text
from telegram_fake_server import FakeTelegram

PLUGIN = '''
"""A third-party artchain plugin: colour inversion, and a blend with an image the user gives."""
from artchain.core.hookspecs import hookimpl
from artchain.core.processor import ImageFile, Param, Processor


class Invert(Processor):
    name = "invert"
    aliases = ("negative",)
    description = "Invert colours, blended with the input by `strength`."
    params = (Param("strength", float, 1.0, "0 keeps the input, 1 fully inverts", min=0, max=1),)

    def process(self, batch, model, params, ctx):
        return batch + params["strength"] * (1 - 2 * batch)


class Blend(Processor):
    name = "blend"
    description = "Blend another image over the input, tinted by the plugin's own weights."
    params = (Param("over", ImageFile, help="the image to blend over"),
              Param("amount", float, 0.5, min=0, max=1))
    weights = ("blend-tint",)

    def load(self, params, store, device):
        return store.load("blend-tint")["tint"].to(device)

    def process(self, batch, model, params, ctx):
        from artchain.core.imageio import to_tensor
        from artchain.core.imageops import resize

        over = resize(to_tensor(params["over"][0].rgb).to(batch.device), *batch.shape[-2:])
        mixed = (1 - params["amount"]) * batch + params["amount"] * over
        return mixed * model.view(1, 3, 1, 1)


@hookimpl
def artchain_processors():
    return [Invert, Blend]
'''

PYPROJECT = '''
[build-system]
requires = ["setuptools"]
build-backend = "setuptools.build_meta"

[project]
name = "artchain-extras"
version = "1.0"

[project.entry-points."artchain.plugins"]
extras = "artchain_extras"

[tool.setuptools]
packages = ["artchain_extras"]

[tool.setuptools.package-data]
artchain_extras = ["weights.yaml"]
'''

TINT = (1.0, 0.5, 0.25)
OVER = (200, 200, 200)
BLENDED = (200, 100, 50)  # OVER x TINT, with amount=1


@pytest.fixture
def weight_server(tmp_path):
    """Serves the plugin's weight file over real HTTP on 127.0.0.1."""
    served = tmp_path / "served"
    served.mkdir()
    save_file({"tint": torch.tensor(TINT)}, str(served / "blend-tint.safetensors"))
    handler = lambda *args: http.server.SimpleHTTPRequestHandler(*args, directory=str(served))  # noqa: E731
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield served / "blend-tint.safetensors", f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


@pytest.fixture
def installed_plugin(tmp_path, isolated_env, weight_server):
    weight_file, base_url = weight_server
    package = tmp_path / "src" / "artchain_extras"
    package.mkdir(parents=True)
    (tmp_path / "src" / "pyproject.toml").write_text(textwrap.dedent(PYPROJECT))
    (package / "__init__.py").write_text(textwrap.dedent(PLUGIN))
    (package / "weights.yaml").write_text(yaml.safe_dump({"weights": [{
        "id": "blend-tint", "file": "blend-tint.safetensors", "size": weight_file.stat().st_size,
        "sha256": hashlib.sha256(weight_file.read_bytes()).hexdigest(),
        "urls": [f"{base_url}/blend-tint.safetensors"], "licence": "MIT", "provenance": "made by the test"}]}))
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--target", str(target), str(tmp_path / "src")], check=True, timeout=300)
    return {**isolated_env,
            "PYTHONPATH": os.pathsep.join(filter(None, [str(target), isolated_env.get("PYTHONPATH")]))}


def solid(path: Path, colour, size=(20, 10)) -> Path:
    Image.new("RGB", size, colour).save(path)
    return path


@pytest.mark.slow
def test_installed_plugin_runs_in_a_chain(tmp_path, installed_plugin):
    env = installed_plugin
    listing = run_cli("list", env=env)
    assert "invert" in listing.stdout and "negative" in listing.stdout

    image = solid(tmp_path / "in.png", (10, 100, 250))
    result = run_cli("run", "negative:strength=1,resize:scale=2", image, "-o", tmp_path / "out.png", env=env)
    assert result.returncode == 0, result.stderr
    out = Image.open(tmp_path / "out.png")
    assert out.size == (40, 20) and out.getpixel((5, 5)) == (245, 155, 5)


@pytest.mark.slow
def test_its_weights_and_file_parameter_work_here_and_on_a_worker(tmp_path, installed_plugin, redis_url):
    env = installed_plugin
    image, over = solid(tmp_path / "in.png", (10, 100, 250)), solid(tmp_path / "over.png", OVER)
    chain = f"blend:over={over}:amount=1"

    missing = run_cli("run", chain, image, "-o", tmp_path / "out.png", env=env)
    assert missing.returncode == 2 and "artchain weights pull blend-tint" in missing.stderr
    pulled = run_cli("weights", "pull", "blend-tint", env=env)
    assert pulled.returncode == 0, pulled.stderr
    assert "blend-tint" in run_cli("weights", "list", env=env).stdout

    here = run_cli("run", chain, image, "-o", tmp_path / "here.png", env=env)
    assert here.returncode == 0, here.stderr
    assert Image.open(tmp_path / "here.png").getpixel((3, 3)) == BLENDED

    config = tmp_path / "queue.yaml"
    config.write_text(yaml.safe_dump({"device": "cpu", "queue": {"broker_url": redis_url, "name": "extras"}}))
    log = tmp_path / "worker.log"
    worker = start_worker(config, "extras", log, env)
    try:
        wait_for_text(log, "ready.", 120)
        remote = run_cli("--config", config, "run", "--remote", chain, image, "-o", tmp_path / "remote.png", env=env)
    finally:
        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait(timeout=30)
    assert remote.returncode == 0, remote.stderr
    assert Image.open(tmp_path / "remote.png").getpixel((3, 3)) == BLENDED


@pytest.mark.slow
def test_the_bot_asks_for_its_file_parameter(tmp_path, installed_plugin):
    env = installed_plugin
    token = "123456:TEST-secret-token-value"
    assert run_cli("weights", "pull", "blend-tint", env=env).returncode == 0
    config = tmp_path / "bot.yaml"

    async def scenario():
        server = FakeTelegram(token)
        await server.start()
        config.write_text(f"device: cpu\npresets: {{}}\ntelegram: {{api_url: '{server.url}', chains: [blend:amount=1]}}\n")
        process = await asyncio.create_subprocess_exec(
            str(Path(sys.executable).with_name("artchain")), "--config", str(config), "bot",
            env={**env, "ARTCHAIN_TELEGRAM_TOKEN": token},
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        try:
            await server.wait_for(lambda: "getUpdates" in server.calls, timeout=60)
            await server.user_sends_photo(5, Image.new("RGB", (30, 20), (10, 100, 250)))
            keyboard = await server.reply(5)
            await server.user_taps(5, keyboard, "blend:amount=1")
            question = await server.reply(5, after=1)
            assert "send the style image" in question.text
            await server.user_sends_photo(5, Image.new("RGB", (16, 16), OVER))
            result = await server.reply(5, "sendPhoto")
            colour = Image.open(io.BytesIO(result.file)).convert("RGB").getpixel((10, 10))
            assert all(abs(a - b) <= 6 for a, b in zip(colour, BLENDED)), colour  # a JPEG photo
            process.send_signal(signal.SIGINT)
            await asyncio.wait_for(process.communicate(), 30)
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
            await server.stop()

    asyncio.run(asyncio.wait_for(scenario(), 120))
