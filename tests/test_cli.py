"""The `artchain` command as a user runs it: outputs, exit codes, and every bad input the core
issue lists (one-line error naming the file, no traceback, no output, other inputs still done)."""
from __future__ import annotations

import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from support import run_cli


def bomb_png(path: Path, side: int = 30000) -> Path:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
                     + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))
    return path


@pytest.fixture
def bad_inputs(tmp_path, photo):
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "text.jpg").write_text("this is not a picture")
    jpeg = folder / "whole.jpg"
    Image.open(photo).save(jpeg, quality=90)
    (folder / "truncated.jpg").write_bytes(jpeg.read_bytes()[: jpeg.stat().st_size // 2])
    bomb_png(folder / "bomb.png")
    (folder / "adir.png").mkdir()
    return folder


def assert_clean_failure(result, *names):
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout
    for name in names:
        lines = [line for line in result.stderr.splitlines() if name in line]
        assert lines, f"no error line names {name}: {result.stderr}"


def test_good_and_bad_inputs_in_one_call(bad_inputs, photo, isolated_env):
    good = bad_inputs / "good.png"
    Image.open(photo).save(good)
    names = ["empty.jpg", "text.jpg", "truncated.jpg", "bomb.png", "adir.png", "good.png", "missing.png"]
    result = run_cli("run", "resize:scale=0.5", *[bad_inputs / n for n in names], env=isolated_env)
    assert result.returncode == 1, result.stderr
    assert_clean_failure(result, *[n for n in names if n != "good.png"])
    assert "6 of 7 inputs failed" in result.stderr
    outputs = sorted(p.name for p in bad_inputs.glob("*.resize-scale-0-5.*"))
    assert outputs == ["good.resize-scale-0-5.png"]
    assert Image.open(bad_inputs / outputs[0]).size == (Image.open(good).width // 2, Image.open(good).height // 2)


def test_output_options(tmp_path, photo, isolated_env):
    target = tmp_path / "out.webp"
    result = run_cli("run", "resize:width=64", photo, "-o", target, "--compare", env=isolated_env)
    assert result.returncode == 0, result.stderr
    assert Image.open(target).format == "WEBP" and Image.open(target).width == 64
    assert Image.open(tmp_path / "out.compare.webp").width > 64
    assert "resize:width=64" in result.stdout
    results = tmp_path / "new" / "results"
    result = run_cli("run", "resize:width=64", photo, "--out-dir", results, env=isolated_env)
    assert result.returncode == 0, result.stderr
    assert [path.name for path in results.iterdir()] == ["photo.resize-width-64.png"]


@pytest.mark.parametrize("chain, message", [
    ("rezise", "unknown step 'rezise' (did you mean 'resize'?)"),
    ("resize:width=wide", "resize: parameter width must be a whole number"),
])
def test_chain_errors_stop_before_any_work(tmp_path, photo, isolated_env, chain, message):
    result = run_cli("run", chain, photo, "--out-dir", tmp_path / "results", env=isolated_env)
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr
    assert list(tmp_path.glob("photo.*.*")) == []  # no output beside the input
    assert not (tmp_path / "results").exists()  # nor an empty output directory


@pytest.mark.parametrize("target, message", [
    ("missing/out.png", "does not exist"),
    ("/proc/artchain-out.png", "cannot write"),
])
def test_unusable_output_paths(tmp_path, photo, isolated_env, target, message):
    target = tmp_path / target if not target.startswith("/") else Path(target)
    result = run_cli("run", "resize:width=32", photo, "-o", target, env=isolated_env)
    assert result.returncode == 1
    assert message in result.stderr and str(target) in result.stderr
    assert "Traceback" not in result.stderr
    assert not target.exists()


def test_unreadable_input(tmp_path, photo, isolated_env, monkeypatch):
    # Root reads any file whatever its mode, so the failure is injected where the read happens.
    from artchain.adapters import cli

    real_read = Path.read_bytes

    def refuse(self):
        if self.name == "locked.png":
            raise PermissionError(13, "Permission denied")
        return real_read(self)

    locked = tmp_path / "locked.png"
    Image.open(photo).save(locked)
    monkeypatch.setattr(Path, "read_bytes", refuse)
    cli.State._engine = None
    result = CliRunner().invoke(cli.app, ["run", "resize:width=32", str(locked), str(photo), "--out-dir", str(tmp_path)])
    assert result.exit_code == 1
    assert "locked.png: cannot read (Permission denied)" in result.output
    assert (tmp_path / "photo.resize-width-32.png").exists()
    assert not (tmp_path / "locked.resize-width-32.png").exists()


def test_version_list_and_usage_errors(isolated_env, photo):
    assert run_cli("--version", env=isolated_env).stdout.startswith("artchain ")
    listing = run_cli("list", env=isolated_env)
    assert listing.returncode == 0 and "resize-back" in listing.stdout and "neon,upscale" in listing.stdout
    both = run_cli("run", "resize:width=8", photo, photo, "-o", "x.png", env=isolated_env)
    assert both.returncode == 2 and "one input" in both.stderr


def test_bad_config_is_a_usage_error(tmp_path, photo, isolated_env):
    config = tmp_path / "bad.yaml"
    config.write_text("limits:\n  max_pixels: lots\n")
    result = run_cli("--config", config, "run", "resize:width=8", photo, env=isolated_env)
    assert result.returncode == 2 and "limits.max_pixels" in result.stderr and "Traceback" not in result.stderr


def test_weights_commands(tmp_path, isolated_env):
    listing = run_cli("weights", "list", env=isolated_env)
    assert listing.returncode == 0
    unknown = run_cli("weights", "import", tmp_path / "x.pth", "--as", "no-such-id", env=isolated_env)
    assert unknown.returncode == 2 and "unknown weight id" in unknown.stderr
    assert run_cli("weights", "verify", env=isolated_env).returncode == 0


@pytest.mark.parametrize("args", [["--version"], ["--help"], ["list"], ["weights", "list"]])
def test_commands_that_run_no_model_never_import_torch(args, isolated_env):
    probe = ("import sys\nfrom artchain.adapters.cli import main\nsys.argv = ['artchain', *sys.argv[1:]]\n"
             "try:\n    main()\nexcept SystemExit as exit:\n    assert not exit.code, exit.code\n"
             "print('torch imported' if 'torch' in sys.modules else 'no torch')\n")
    result = subprocess.run([sys.executable, "-c", probe, *args], capture_output=True, text=True,
                            env=isolated_env, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("no torch")


@pytest.mark.parametrize("command, extra", [(["bot"], "bot"), (["watch", "somewhere"], "watch"),
                                            (["worker"], "queue")])
def test_a_missing_extra_is_one_line_naming_the_install(tmp_path, isolated_env, command, extra):
    # A stand-in package that fails to import, as an uninstalled one would.
    module = {"bot": "aiogram", "watch": "watchdog", "queue": "celery"}[extra]
    shim = tmp_path / "shim" / module
    shim.mkdir(parents=True)
    (shim / "__init__.py").write_text("raise ImportError('not installed')\n")
    env = {**isolated_env, "PYTHONPATH": str(shim.parent), "ARTCHAIN_TELEGRAM_TOKEN": "1:x"}
    result = run_cli(*command, env=env)
    assert result.returncode == 2
    assert result.stderr.strip() == (f"error: this needs the optional dependencies of artchain[{extra}]: "
                                      f"pip install 'artchain[{extra}]'")
