from __future__ import annotations

import pytest
from PIL import Image

from artchain.core.config import load_config as load_core_config
from artchain.core.errors import ConfigError
from artchain.runtime import load_settings as load_config


def test_bundled_config_is_valid_and_has_the_neon_preset():
    config = load_config(environ={})
    assert config.presets["neon,upscale"] == "pix2pix-neon:output=working,esrgan,resize-back"
    assert config.telegram.workers >= 1 and config.queue.name and config.executor == "local"


def test_user_file_merges_over_bundled(tmp_path):
    user = tmp_path / "mine.yaml"
    user.write_text("limits:\n  max_pixels: 1000\naliases:\n  big: esrgan\n")
    config = load_config(user, environ={})
    assert config.limits.max_pixels == 1000
    assert config.limits.max_bytes > 0  # untouched keys keep the bundled values
    assert config.aliases["big"] == "esrgan"


def test_environment_overrides_paths_and_secrets(tmp_path):
    config = load_config(environ={"ARTCHAIN_DEVICE": "cpu", "ARTCHAIN_WEIGHTS_DIR": str(tmp_path),
                                  "ARTCHAIN_TELEGRAM_TOKEN": "123:abc"})
    assert (config.device, config.weights_dir, config.telegram.token) == ("cpu", tmp_path, "123:abc")
    assert "123:abc" not in repr(config)


@pytest.mark.parametrize("text, message", [
    ("limits:\n  max_pixels: -5\n", "limits.max_pixels: Input should be greater than 0"),
    ("device: tpu\n", "device: must be auto, cpu, cuda or cuda:N"),
    ("limitz: {}\n", "limitz: Extra inputs are not permitted"),
    ("output:\n  jpeg_quality: 101\n", "output.jpeg_quality"),
    ("limits: [1, 2\n", "not valid YAML"),
    ("- just\n- a list\n", "must be a mapping"),
    ("telegram:\n  workerz: 2\n", "telegram.workerz: Extra inputs are not permitted"),
    ("queue:\n  time_limit: 1\n", "queue.time_limit"),
    ("[" * 20000 + "]" * 20000, "nested too deeply"),
])
def test_errors_name_the_key(tmp_path, text, message):
    user = tmp_path / "bad.yaml"
    user.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_config(user, environ={})


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="cannot read config"):
        load_config(tmp_path / "absent.yaml", environ={})


def test_a_file_that_is_not_utf8_is_one_line(tmp_path):
    user = tmp_path / "bad.yaml"
    user.write_bytes(b"device: \xff\xfe cpu\n")
    with pytest.raises(ConfigError, match="not a text file in UTF-8"):
        load_config(user, environ={})


def test_core_alone_knows_no_adapter_section(tmp_path):
    user = tmp_path / "engine-only.yaml"
    user.write_text("device: cpu\n")
    # The bundled file documents every section, so core alone refuses it: the runtime composes.
    with pytest.raises(ConfigError, match="telegram: Extra inputs are not permitted"):
        load_core_config(user, environ={})


def test_processor_defaults_from_the_config_reach_the_engine_and_the_cli(tmp_path, photo, isolated_env):
    from support import run_cli

    from artchain.runtime import Runtime

    user = tmp_path / "mine.yaml"
    user.write_text("defaults:\n  upscale: {memory: 96}\n  resize: {scale: 0.5}\n")
    runtime = Runtime(load_config(user, environ={}))
    assert runtime.parser.parse("esrgan").steps[0].params["memory"] == 96
    assert runtime.engine.parser.parse("upscale:memory=200").steps[0].params["memory"] == 200

    bad = tmp_path / "bad.yaml"
    bad.write_text("defaults:\n  esrgan: {memory: 1}\n")
    result = run_cli("--config", bad, "run", "resize", photo, "-o", tmp_path / "x.png", env=isolated_env)
    assert result.returncode == 2 and "config: defaults: esrgan: parameter memory must be >= 64" in result.stderr
    good = run_cli("--config", user, "run", "resize", photo, "-o", tmp_path / "half.png", env=isolated_env)
    assert good.returncode == 0, good.stderr
    assert Image.open(tmp_path / "half.png").width == Image.open(photo).width // 2
