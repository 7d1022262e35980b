"""The folder watcher with a real `artchain watch` process: hostile files, slow writers, and
kill -9 at random moments while files flow; every input must end with exactly one outcome."""
from __future__ import annotations

import asyncio
import io
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from artchain.adapters.watch.folder import Folders, Watcher, is_candidate
from artchain.core.chain import parse_steps

# Upscaling x4 and back is slow enough (~0.1-0.5 s) that kills land in the middle of jobs.
CHAIN = "resize:scale=4,resize-back"


def start_watcher(root: Path, env: dict, log: Path) -> subprocess.Popen:
    executable = Path(sys.executable).with_name("artchain")
    handle = open(log, "ab")
    process = subprocess.Popen([str(executable), "watch", str(root), "--chain", CHAIN, "--concurrency", "2"],
                               stdout=handle, stderr=subprocess.STDOUT, env={**env, "PYTHONUNBUFFERED": "1"})
    handle.close()
    return process


def wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def photo_bytes(index: int, side: int = 360) -> bytes:
    """A noisy picture (so that half of its file is really a damaged image), unique per index."""
    size = (side + index, side)
    noise = Image.effect_noise(size, 40).convert("RGB")
    image = Image.blend(Image.new("RGB", size, (index * 10 % 256, 80, 200)), noise, 0.3)
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def drop(inbox: Path, name: str, data: bytes) -> None:
    """Writes as most programs do: straight into the final name, closed when done."""
    (inbox / name).write_bytes(data)


def outcomes(folders: Folders) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for place in (folders.done, folders.failed, folders.work, folders.inbox):
        for path in place.rglob("*"):
            if path.is_file() and is_candidate(path) and not path.name.endswith(".error.txt"):
                found.setdefault(path.name, []).append(place.name)
    return found


def check_exactly_once(folders: Folders, expected_good: set[str], expected_bad: set[str]) -> None:
    found = outcomes(folders)
    assert set(found) == expected_good | expected_bad
    for name, places in found.items():
        assert places == (["done"] if name in expected_good else ["failed"]), (name, places)
    for name in expected_good:
        result = Image.open(folders.outbox / name)
        source = Image.open(folders.done / name)
        assert result.size == source.size  # resize-back returned each to its own size
    for name in expected_bad:
        reason = (folders.failed / f"{name}.error.txt").read_text().strip()
        assert name in reason or "empty" in reason or "image" in reason, reason
    leftovers = [p.name for p in folders.outbox.rglob("*") if p.is_file() and p.name not in expected_good]
    assert leftovers == [], f"outputs without an input, or temporary files: {leftovers}"


def hostile_files(inbox: Path) -> set[str]:
    (inbox / "empty.jpg").write_bytes(b"")
    (inbox / "text.jpg").write_text("not a picture at all")
    whole = photo_bytes(7)
    (inbox / "truncated.png").write_bytes(whole[: len(whole) // 2])
    return {"empty.jpg", "text.jpg", "truncated.png"}


@pytest.mark.slow
def test_twenty_files_each_end_in_one_place(tmp_path, isolated_env):
    folders = Folders(tmp_path / "box")
    folders.create()
    process = start_watcher(folders.root, isolated_env, tmp_path / "watch.log")
    try:
        good = {f"photo{i:02}.png" for i in range(17)}
        for index, name in enumerate(sorted(good)):
            drop(folders.inbox, name, photo_bytes(index, side=96))
        bad = hostile_files(folders.inbox)
        (folders.inbox / ".hidden.png").write_bytes(photo_bytes(0))
        (folders.inbox / "download.png.part").write_bytes(photo_bytes(0))
        # A slow writer: half the bytes, a pause longer than settle_seconds, then the rest.
        slow = folders.inbox / "slow.png"
        data = photo_bytes(99, side=96)
        with open(slow, "wb") as handle:
            handle.write(data[: len(data) // 2])
            handle.flush()
            time.sleep(2.5)
            handle.write(data[len(data) // 2:])
        good.add("slow.png")
        wait_for(lambda: sorted(p.name for p in folders.inbox.iterdir()) == [".hidden.png", "download.png.part"]
                 and not any(folders.work.iterdir()), 180, "the inbox to empty")
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0
    log = (tmp_path / "watch.log").read_text()
    assert "Traceback" not in log
    check_exactly_once(folders, good, bad)


@pytest.mark.slow
def test_kill_nine_ten_times_loses_and_duplicates_nothing(tmp_path, isolated_env):
    folders = Folders(tmp_path / "box")
    folders.create()
    log = tmp_path / "watch.log"
    rng = random.Random(20261122)
    names = [f"flow{i:02}.png" for i in range(24)]
    good, bad = set(names), set()
    dropped = 0
    process = start_watcher(folders.root, isolated_env, log)
    try:
        for kill in range(10):
            wait_for(lambda: "watching" in log.read_text().split("--- restart")[-1], 120, "the watcher to start")
            for _ in range(3):
                if dropped < len(names):
                    drop(folders.inbox, names[dropped], photo_bytes(dropped))
                    dropped += 1
            if kill == 4:
                bad = hostile_files(folders.inbox)
            # Kill as soon as something is in flight, or after a random short while.
            wait_for(lambda: any(folders.work.rglob("*")) or not any(folders.inbox.iterdir()), 30, "work to start")
            time.sleep(rng.uniform(0.0, 0.6))
            process.send_signal(signal.SIGKILL)
            process.wait(timeout=30)
            with open(log, "a") as handle:
                handle.write(f"\n--- restart {kill + 1}\n")
            process = start_watcher(folders.root, isolated_env, log)
        for name in names[dropped:]:
            drop(folders.inbox, name, photo_bytes(names.index(name)))
        wait_for(lambda: not any(p for p in folders.inbox.iterdir()) and not any(folders.work.rglob("*")),
                 240, "every file to be processed")
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)
    text = log.read_text()
    assert "Traceback" not in text
    check_exactly_once(folders, good, bad)
    # The kills must have landed mid-job, or this test proved nothing about recovery.
    generations = [set(re.findall(r"^(\S+): started", part, re.M)) for part in text.split("--- restart")]
    resumed = {name for name in names if sum(name in g for g in generations) > 1}
    assert len(resumed) >= 3, f"only {sorted(resumed)} were interrupted mid-job"


def test_recovery_finishes_interrupted_work(tmp_path):
    folders = Folders(tmp_path)
    folders.create()
    (folders.work / "delivered.png").write_bytes(b"input")
    (folders.outbox / "delivered.png").write_bytes(b"output")
    (folders.work / "refused.png").write_bytes(b"input")
    (folders.failed / "refused.png.error.txt").write_text("why")
    (folders.work / "interrupted.png").write_bytes(b"input")
    (folders.outbox / ".interrupted.png.part").write_bytes(b"half")
    watcher = Watcher(folders, executor=None, steps_of=parse_steps, default_chain="resize-back", say=lambda line: None)
    assert watcher.recover() == [Path("interrupted.png")]
    assert (folders.done / "delivered.png").exists() and (folders.failed / "refused.png").exists()
    assert not (folders.outbox / ".interrupted.png.part").exists()


def test_names_and_chains(tmp_path):
    assert not any(is_candidate(Path(n)) for n in [".x.jpg", "~x.jpg", "x.jpg.part", "x.tmp", "x.jpg~", "x.crdownload"])
    assert is_candidate(Path("photo.jpg"))
    folders = Folders(tmp_path)
    folders.create()
    watcher = Watcher(folders, executor=None, steps_of=parse_steps, default_chain="upscale", say=lambda line: None)
    assert watcher.chain_for(Path("neon,upscale/a.jpg")) == "neon,upscale"
    assert watcher.chain_for(Path("a.jpg")) == "upscale"
    (folders.done / "a.jpg").write_bytes(b"earlier")
    assert watcher._claim_name(Path("a.jpg")) == Path("a-2.jpg")
    # b.png and b.bmp would both write outbox/b.png: the second one claimed gets another name.
    (folders.work / "b.png").write_bytes(b"claimed")
    assert watcher._claim_name(Path("b.bmp")) == Path("b-2.bmp")
    assert folders.output_for(Path("x/a.tiff")) == folders.outbox / "x" / "a.png"


def test_a_file_over_the_size_limit_fails_unread(tmp_path):
    class NeverCalled:
        async def submit(self, request, on_status=None, cancel=None):
            raise AssertionError("an oversized file reached the executor")

    folders = Folders(tmp_path)
    folders.create()
    (folders.work / "big.png").write_bytes(b"x" * 2048)
    watcher = Watcher(folders, executor=NeverCalled(), steps_of=parse_steps, default_chain="resize-back", say=lambda line: None,
                      max_bytes=1024)
    asyncio.run(watcher.process(Path("big.png")))
    assert (folders.failed / "big.png").exists()
    assert "2048 bytes is over the limit of 1024" in folders.error_for(Path("big.png")).read_text()


@pytest.mark.slow
def test_a_file_being_written_when_the_watcher_starts_is_waited_for(tmp_path, isolated_env):
    folders = Folders(tmp_path / "box")
    folders.create()
    data = photo_bytes(3, side=96)
    slow = folders.inbox / "started-before.png"
    with open(slow, "wb") as handle:
        handle.write(data[: len(data) // 3])
        handle.flush()
        process = start_watcher(folders.root, isolated_env, tmp_path / "watch.log")
        try:
            wait_for(lambda: "watching" in (tmp_path / "watch.log").read_text(), 60, "the watcher to start")
            time.sleep(4)  # several settle periods of silence from a writer that still holds the file
            assert slow.exists(), "a half-written file was taken"
            handle.write(data[len(data) // 3:])
        finally:
            handle.flush()
    try:
        wait_for(lambda: (folders.outbox / "started-before.png").exists(), 120, "the result")
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0
    check_exactly_once(folders, {"started-before.png"}, set())
