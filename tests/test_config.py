from __future__ import annotations

import pytest

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
