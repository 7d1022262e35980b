"""The local executor: bytes in and out, queue positions, a bounded queue, cancellation, a free loop."""
from __future__ import annotations

import asyncio
import io
import time
from pathlib import Path

import pytest
import torch
from PIL import Image

from artchain.core.config import load_config
from artchain.core.engine import Engine
from artchain.core.errors import Cancelled, ImageError
from artchain.core.hookspecs import hookimpl
from artchain.core.jobs import ATTACHMENTS, JobRequest, LocalExecutor, QueueFull, with_attachments
from artchain.core.plugins import discover
from artchain.core.processor import CancelToken, Param, Processor


class SlowShade(Processor):
    """Sleeps in small slices (as a model would compute), then shades the image to a given grey."""

    name = "slow-shade"
    description = "test: wait, then fill with a grey level"
    params = (Param("level", int, 0, min=0, max=255), Param("seconds", float, 0.05))

    def process(self, batch, model, params, ctx):
        slices = 10
        for index in range(slices):
            ctx.cancel.check()
            time.sleep(params["seconds"] / slices)
            ctx.progress((index + 1) / slices)
        return batch * 0 + params["level"] / 255


class FillFrom(Processor):
    """Fills the image with the colour of the top-left pixel of another image file."""

    name = "fill-from"
    description = "test: fill with the colour of a file's first pixel"
    params = (Param("source", Path),)

    def process(self, batch, model, params, ctx):
        red, green, blue = Image.open(params["source"]).convert("RGB").getpixel((0, 0))
        return batch * 0 + torch.tensor([red, green, blue]).view(1, 3, 1, 1) / 255


class TestPlugin:
    @hookimpl
    def artchain_processors(self):
        return [SlowShade, FillFrom]


@pytest.fixture(scope="module")
def engine():
    config = load_config(environ={})
    config.device = "cpu"
    return Engine(config, discover([TestPlugin()]))


def png(width=12, height=8) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), "white").save(buffer, "PNG")
    return buffer.getvalue()


def test_every_submitter_gets_its_own_result(engine):
    async def scenario():
        executor = LocalExecutor(engine, workers=2, max_jobs=50)
        requests = [JobRequest(f"slow-shade:level={level}:seconds=0.02", png(), "PNG") for level in range(40)]
        results = await asyncio.gather(*(executor.submit(r) for r in requests))
        executor.shutdown()
        return results

    for level, result in enumerate(asyncio.run(scenario())):
        assert Image.open(io.BytesIO(result.image)).getpixel((0, 0)) == (level, level, level)


def test_positions_then_progress_are_reported(engine):
    async def scenario():
        executor = LocalExecutor(engine, workers=1, max_jobs=10)
        seen = {0: [], 1: [], 2: []}
        jobs = [executor.submit(JobRequest("slow-shade:seconds=0.05", png()), seen[i].append) for i in range(3)]
        await asyncio.gather(*jobs)
        executor.shutdown()
        return seen

    seen = asyncio.run(scenario())
    assert 2 in [s.position for s in seen[2]] and 1 in [s.position for s in seen[2]]
    assert seen[2][-1].running and seen[2][-1].fraction == 1.0
    assert all(s.position == 0 for s in seen[0])


def test_full_queue_is_refused(engine):
    async def scenario():
        executor = LocalExecutor(engine, workers=1, max_jobs=2)
        first = asyncio.create_task(executor.submit(JobRequest("slow-shade:seconds=0.2", png())))
        second = asyncio.create_task(executor.submit(JobRequest("slow-shade:seconds=0.2", png())))
        await asyncio.sleep(0.01)
        with pytest.raises(QueueFull, match="busy"):
            await executor.submit(JobRequest("slow-shade", png()))
        await asyncio.gather(first, second)
        executor.shutdown()

    asyncio.run(scenario())


def test_cancel_stops_a_running_job_and_frees_the_worker(engine):
    async def scenario():
        executor = LocalExecutor(engine, workers=1, max_jobs=4)
        token = CancelToken()
        long_job = asyncio.create_task(executor.submit(JobRequest("slow-shade:seconds=5", png()), cancel=token))
        await asyncio.sleep(0.1)
        token.cancel()
        with pytest.raises(Cancelled):
            await long_job
        started = time.perf_counter()
        await executor.submit(JobRequest("slow-shade:seconds=0.01", png()))
        executor.shutdown()
        return time.perf_counter() - started

    assert asyncio.run(scenario()) < 1.0


def test_bad_bytes_fail_only_that_job(engine):
    async def scenario():
        executor = LocalExecutor(engine, workers=2)
        results = await asyncio.gather(executor.submit(JobRequest("slow-shade", b"not an image", name="a.jpg")),
                                       executor.submit(JobRequest("slow-shade", png())), return_exceptions=True)
        executor.shutdown()
        return results

    bad, good = asyncio.run(scenario())
    assert isinstance(bad, ImageError) and "a.jpg: not an image file" in str(bad)
    assert good.size == (12, 8)


def test_event_loop_stays_responsive_while_jobs_run(engine):
    async def scenario():
        executor = LocalExecutor(engine, workers=2)
        lags = []

        async def heartbeat():
            while True:
                tick = time.perf_counter()
                await asyncio.sleep(0.01)
                lags.append(time.perf_counter() - tick - 0.01)

        beat = asyncio.create_task(heartbeat())
        await asyncio.gather(*(executor.submit(JobRequest("slow-shade:seconds=0.1", png(256, 256)))
                               for _ in range(10)))
        beat.cancel()
        executor.shutdown()
        return sorted(lags)

    lags = asyncio.run(scenario())
    assert lags[int(len(lags) * 0.99) - 1] < 0.1


def test_files_a_chain_reads_travel_with_the_job(engine, tmp_path):
    source = tmp_path / "colour.png"
    Image.new("RGB", (4, 4), (200, 40, 10)).save(source)
    chain = engine.parser.parse(f"slow-shade:seconds=0,fill-from:source={source}")
    text, attachments = with_attachments(chain)
    assert text == f"slow-shade:seconds=0.0,fill-from:source={ATTACHMENTS}/1-source.png"
    assert attachments == {"1-source.png": source.read_bytes()}
    source.unlink()  # the job must not need the file any more

    async def run():
        executor = LocalExecutor(engine)
        try:
            return await executor.submit(JobRequest(text, png(), attachments=attachments))
        finally:
            executor.shutdown()

    result = asyncio.run(run())
    assert Image.open(io.BytesIO(result.image)).getpixel((3, 3)) == (200, 40, 10)
    with pytest.raises(ImageError, match="colour.png: cannot read"):
        with_attachments(chain)


def test_attachment_names_must_be_plain(engine):
    async def run():
        executor = LocalExecutor(engine)
        try:
            return await executor.submit(JobRequest("slow-shade", png(), attachments={"../x.png": png()}))
        finally:
            executor.shutdown()

    with pytest.raises(ImageError, match="not a plain file name"):
        asyncio.run(run())
