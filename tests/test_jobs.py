"""Jobs as data (every field survives to_dict/from_dict) and the local executor: bytes in and out,
queue positions, a bounded queue, cancellation, a free loop."""
from __future__ import annotations

import asyncio
import io
import time
import json

import pytest
import torch
from PIL import Image

from artchain.core.chain import StepSpec, parse_steps
from artchain.core.engine import Engine
from artchain.core.errors import Cancelled, ImageError
from artchain.core.hookspecs import hookimpl
from artchain.core.job import BadJob, InputFile, Job, JobResult, LocalExecutor, QueueFull, read_step_files
from artchain.core.plugins import discover
from artchain.core.processor import CancelToken, ImageFile, Param, Processor
from artchain.core.weights import WeightStore
from artchain.runtime import load_settings


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
    params = (Param("source", ImageFile),)

    def process(self, batch, model, params, ctx):
        red, green, blue = params["source"][0].rgb.getpixel((0, 0))
        return batch * 0 + torch.tensor([red, green, blue]).view(1, 3, 1, 1) / 255


class TestPlugin:
    @hookimpl
    def artchain_processors(self):
        return [SlowShade, FillFrom]


@pytest.fixture(scope="module")
def engine():
    config = load_settings(environ={})
    config.device = "cpu"
    return Engine(config, discover([TestPlugin()]), WeightStore(manifest_text="weights: []"))


def png(width=12, height=8) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), "white").save(buffer, "PNG")
    return buffer.getvalue()


def job(chain: str, image: bytes | None = None, name: str = "image", **fields) -> Job:
    return Job(parse_steps(chain), InputFile(name, png() if image is None else image), **fields)


def test_every_submitter_gets_its_own_result(engine):
    async def scenario():
        executor = LocalExecutor(engine, workers=2, max_jobs=50)
        requests = [job(f"slow-shade:level={level}:seconds=0.02") for level in range(40)]
        results = await asyncio.gather(*(executor.submit(r) for r in requests))
        executor.shutdown()
        return results

    for level, result in enumerate(asyncio.run(scenario())):
        assert Image.open(io.BytesIO(result.image)).getpixel((0, 0)) == (level, level, level)


def test_positions_then_progress_are_reported(engine):
    async def scenario():
        executor = LocalExecutor(engine, workers=1, max_jobs=10)
        seen = {0: [], 1: [], 2: []}
        jobs = [executor.submit(job("slow-shade:seconds=0.05"), seen[i].append) for i in range(3)]
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
        first = asyncio.create_task(executor.submit(job("slow-shade:seconds=0.2")))
        second = asyncio.create_task(executor.submit(job("slow-shade:seconds=0.2")))
        await asyncio.sleep(0.01)
        with pytest.raises(QueueFull, match="busy"):
            await executor.submit(job("slow-shade"))
        await asyncio.gather(first, second)
        executor.shutdown()

    asyncio.run(scenario())


def test_cancel_stops_a_running_job_and_frees_the_worker(engine):
    async def scenario():
        executor = LocalExecutor(engine, workers=1, max_jobs=4)
        token = CancelToken()
        long_job = asyncio.create_task(executor.submit(job("slow-shade:seconds=5"), cancel=token))
        await asyncio.sleep(0.1)
        token.cancel()
        with pytest.raises(Cancelled):
            await long_job
        started = time.perf_counter()
        await executor.submit(job("slow-shade:seconds=0.01"))
        executor.shutdown()
        return time.perf_counter() - started

    assert asyncio.run(scenario()) < 1.0


def test_bad_bytes_fail_only_that_job(engine):
    async def scenario():
        executor = LocalExecutor(engine, workers=2)
        results = await asyncio.gather(executor.submit(job("slow-shade", b"not an image", "a.jpg")),
                                       executor.submit(job("slow-shade")), return_exceptions=True)
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
        await asyncio.gather(*(executor.submit(job("slow-shade:seconds=0.1", png(256, 256)))
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
    files = read_step_files(chain, max_bytes=1 << 20)
    assert files == {(1, "source"): (InputFile(str(source), source.read_bytes()),)}
    source.unlink()  # the job must not need the file any more
    travelled = Job.from_dict(json.loads(json.dumps(
        Job(parse_steps(chain.text), InputFile("in", png()), files).to_dict())))

    async def run():
        executor = LocalExecutor(engine)
        try:
            return await executor.submit(travelled)
        finally:
            executor.shutdown()

    result = asyncio.run(run())
    assert Image.open(io.BytesIO(result.image)).getpixel((3, 3)) == (200, 40, 10)
    with pytest.raises(ImageError, match="colour.png: cannot read"):
        read_step_files(chain, max_bytes=1 << 20)


def test_every_field_of_a_job_survives_a_json_round_trip():
    original = Job((StepSpec("fill-from", {"source": "a.png+b.png"}), StepSpec("resize", {"width": "9"})),
                   InputFile("photo from @someone", b"\x89PNG\x00\xff" * 10),
                   {(0, "source"): (InputFile("a.png", b"\x00\x01"), InputFile("b.png", b""))},
                   output_format="WEBP", device="cuda:1")
    assert Job.from_dict(json.loads(json.dumps(original.to_dict()))) == original
    result = JobResult(b"\x00image\xff", "JPEG", (640, 480), "a -> b", (("a", 0.5), ("b", 1.25)))
    back = JobResult.from_dict(json.loads(json.dumps(result.to_dict())))
    assert back == result and back.seconds == 1.75


@pytest.mark.parametrize("damage", [
    lambda d: d.pop("steps"),
    lambda d: d["steps"].append({"name": 3, "params": {}}),
    lambda d: d["image"].update(data="not base64!"),
    lambda d: d["files"].append({"step": -1, "param": "x", "files": []}),
    lambda d: d.update(output_format="EPS"),
])
def test_a_malformed_job_is_one_clear_error(damage):
    data = job("slow-shade").to_dict()
    damage(data)
    with pytest.raises(BadJob, match="malformed job"):
        Job.from_dict(data)


def test_a_file_over_the_byte_limit_is_refused_by_name(engine):
    big = job("slow-shade", files={(0, "source"): (InputFile("huge.png", b"0" * 2048),)})
    with pytest.raises(ImageError, match="huge.png: 2048 bytes is over the limit of 1024"):
        big.check_sizes(1024)
