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
    return folder


def assert_clean_failure(result, *names):
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout
    for name in names:
        lines = [line for line in result.stderr.splitlines() if name in line]
        assert lines, f"no error line names {name}: {result.stderr}"


def test_good_and_bad_inputs_in_one_call(bad_inputs, photo, isolated_env):
    good = bad_inputs / "good.png"
    Image.open(photo).save(good)
    names = ["empty.jpg", "text.jpg", "truncated.jpg", "bomb.png", "good.png", "missing.png"]
    result = run_cli("run", "resize:scale=0.5", *[bad_inputs / n for n in names], env=isolated_env)
    assert result.returncode == 1, result.stderr
    assert_clean_failure(result, *[n for n in names if n != "good.png"])
    assert "5 of 6 inputs failed" in result.stderr and "done 1, skipped 0, failed 5" in result.stdout
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
    # The side-by-side file is an output like the other: not replaced unless asked, even alone.
    target.unlink()
    kept = (tmp_path / "out.compare.webp").read_bytes()
    again = run_cli("run", "resize:width=32", photo, "-o", target, "--compare", env=isolated_env)
    assert again.returncode == 2 and "out.compare.webp exists; pass --overwrite" in again.stderr
    assert (tmp_path / "out.compare.webp").read_bytes() == kept and not target.exists()
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
    result = CliRunner().invoke(cli.app, ["run", "resize:width=32", str(locked), str(photo), "--out-dir", str(tmp_path)])
    assert result.exit_code == 1
    assert "locked.png: cannot read (Permission denied)" in result.output
    assert (tmp_path / "photo.resize-width-32.png").exists()
    assert not (tmp_path / "locked.resize-width-32.png").exists()


def test_version_list_and_usage_errors(isolated_env, photo):
    assert run_cli("--version", env=isolated_env).stdout.startswith("artchain ")
    listing = run_cli("list", env=isolated_env)
    assert listing.returncode == 0 and "resize-back" in listing.stdout and "neon,upscale" in listing.stdout
    other = photo.with_name("other.png")
    Image.open(photo).save(other)
    both = run_cli("run", "resize:width=8", photo, other, "-o", "x.png", env=isolated_env)
    assert both.returncode == 2 and "-o/--output names one file but there are 2 inputs" in both.stderr


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


def names_in(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.iterdir())


def test_outputs_never_collide_and_nothing_is_overwritten_silently(tmp_path, photo, isolated_env):
    for folder in ("d1", "d2"):
        (tmp_path / folder).mkdir()
        Image.open(photo).save(tmp_path / folder / "x.png")
    for suffix in (".tif", ".bmp", ".png"):
        Image.open(photo).save(tmp_path / f"tiny{suffix}")
    out = tmp_path / "out"
    first = run_cli("run", "resize:scale=0.5", tmp_path / "d1/x.png", tmp_path / "d2/x.png", tmp_path / "tiny.tif",
                    tmp_path / "tiny.bmp", tmp_path / "tiny.png", "--out-dir", out, env=isolated_env)
    assert first.returncode == 0, first.stderr
    assert names_in(out) == ["tiny.resize-scale-0-5-2.png", "tiny.resize-scale-0-5-3.png", "tiny.resize-scale-0-5.png",
                             "x.resize-scale-0-5-2.png", "x.resize-scale-0-5.png"]
    again = run_cli("run", "resize:scale=0.5", tmp_path / "d1/x.png", "--out-dir", out, env=isolated_env)
    assert again.returncode == 2 and "exists; pass --overwrite to replace it or --skip-existing" in again.stderr
    before = (out / "x.resize-scale-0-5.png").stat().st_mtime_ns
    skipped = run_cli("run", "resize:scale=0.5", tmp_path / "d1/x.png", "--out-dir", out, "--skip-existing",
                      env=isolated_env)
    assert skipped.returncode == 0 and "skipped" in skipped.stdout
    assert (out / "x.resize-scale-0-5.png").stat().st_mtime_ns == before
    replaced = run_cli("run", "resize:scale=0.25", tmp_path / "d1/x.png", "-o", out / "x.resize-scale-0-5.png",
                       "--overwrite", env=isolated_env)
    assert replaced.returncode == 0 and Image.open(out / "x.resize-scale-0-5.png").width == Image.open(photo).width // 4


def test_an_input_is_never_overwritten(tmp_path, photo, isolated_env):
    victim = tmp_path / "victim.png"
    Image.open(photo).save(victim)
    original = victim.read_bytes()
    for extra in ([], ["--overwrite"]):
        result = run_cli("run", "resize:scale=0.5", victim, "-o", victim, *extra, env=isolated_env)
        assert result.returncode == 2 and "would replace an input" in result.stderr
    same_folder = run_cli("run", "resize:scale=0.5", victim, "--suffix", "x", "--out-dir", tmp_path, env=isolated_env)
    assert same_folder.returncode == 0
    assert victim.read_bytes() == original


def test_folders_suffix_ext_scale_and_own_outputs(tmp_path, photo, isolated_env):
    album = tmp_path / "album"
    (album / "nested").mkdir(parents=True)
    (album / ".hidden").mkdir()
    for path in (album / "a.png", album / "nested" / "b.jpg", album / ".hidden" / "c.png", album / ".d.png"):
        Image.open(photo).convert("RGB").save(path)
    (album / "notes.txt").write_text("not an image")
    first = run_cli("run", "resize:scale=0.5", album, env=isolated_env)
    assert first.returncode == 0, first.stderr
    assert "a.resize-scale-0-5.png" in names_in(album) and "done 1, skipped 0, failed 0" in first.stdout
    # Its own output beside the input is not taken as an input the next time.
    second = run_cli("run", "resize:scale=0.5", album, "-r", "--skip-existing", env=isolated_env)
    assert second.returncode == 0, second.stderr
    assert "left out (an output of this chain)" in second.stdout and "b.resize-scale-0-5.jpg" in names_in(album / "nested")
    assert "done 1, skipped 2, failed 0" in second.stdout
    assert not list((album / ".hidden").glob("*resize*"))
    into = tmp_path / "into"
    third = run_cli("run", "resize:scale=0.5", album / "a.png", "-o", f"{into}/", "--suffix", "half", "--ext", "webp",
                    "-s", "2", env=isolated_env)
    assert third.returncode == 0, third.stderr
    result = Image.open(into / "a_half.webp")
    assert result.format == "WEBP" and result.size == (Image.open(photo).width * 2, Image.open(photo).height * 2)
    nested = run_cli("run", "resize:scale=0.5", photo, "-o", tmp_path / "made" / "for" / "me.png", env=isolated_env)
    assert nested.returncode == 0 and (tmp_path / "made" / "for" / "me.png").exists()


def test_long_chains_get_distinct_names():
    from artchain.adapters.batch import chain_slug

    first = chain_slug("nst:style=/home/me/paintings/a-very-long-folder-name/monet-water-lilies-1906.jpg")
    second = chain_slug("nst:style=/home/me/paintings/a-very-long-folder-name/monet-water-lilies-1907.jpg")
    assert first != second and len(first) <= 60 and len(second) <= 60
    assert chain_slug("neon,upscale") == "neon-upscale"
