"""The `artchain` command line. Thin: parse, call the engine or the weight store, report.

Exit codes: 0 every input done; 1 some inputs failed; 2 usage or configuration error.
"""
from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeElapsedColumn, TransferSpeedColumn
from rich.table import Table

from artchain.core.errors import ArtchainError, ImageError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Plugin-based image-processing chains.")
weights_app = typer.Typer(no_args_is_help=True, help="List, download, import and verify weight files.")
app.add_typer(weights_app, name="weights")
out = Console(highlight=False)
err = Console(stderr=True, highlight=False)

USAGE_ERROR = 2
SOME_FAILED = 1


class State:
    config_path: Path | None = None
    _engine = None

    @classmethod
    def engine(cls):
        if cls._engine is None:
            from artchain.core.config import load_config
            from artchain.core.engine import Engine

            cls._engine = Engine(load_config(cls.config_path))
        return cls._engine


def fail(message: str, code: int = USAGE_ERROR) -> typer.Exit:
    err.print(f"[red]error:[/red] {message}", markup=True, soft_wrap=True)
    return typer.Exit(code)


def _version(value: bool) -> None:
    if value:
        from artchain import __version__

        out.print(f"artchain {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    config: Annotated[Optional[Path], typer.Option("--config", "-c", help="config file merged over the bundled one (or ARTCHAIN_CONFIG)")] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="log what happens")] = False,
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True, help="print the version")] = False,
) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    State.config_path = config


def chain_slug(chain: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", chain).strip("-")[:60] or "out"


def output_path(source: Path, chain: str, out_dir: Path | None) -> Path:
    from artchain.core.imageio import FORMATS

    suffix = source.suffix.lower() if source.suffix.lower() in FORMATS else ".png"
    return (out_dir or source.parent) / f"{source.stem}.{chain_slug(chain)}{suffix}"


@app.command()
def run(
    chain: Annotated[str, typer.Argument(help='steps such as "neon,upscale" or "resize:width=512,upscale:tile=256"')],
    inputs: Annotated[list[Path], typer.Argument(help="input images", show_default=False)],
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="output file (one input only)")] = None,
    out_dir: Annotated[Optional[Path], typer.Option("--out-dir", help="directory for the outputs")] = None,
    device: Annotated[Optional[str], typer.Option(help="auto, cpu, cuda or cuda:N (default: from config)")] = None,
    compare: Annotated[bool, typer.Option("--compare", help="also write input and output side by side")] = False,
    remote: Annotated[bool, typer.Option("--remote", help="run on queue workers (config `queue`) instead of here")] = False,
) -> None:
    """Run CHAIN on each input; outputs go beside the inputs unless -o/--out-dir say otherwise."""
    if output and len(inputs) > 1:
        raise fail("-o/--output takes one input; use --out-dir for several")
    if output and out_dir:
        raise fail("give -o/--output or --out-dir, not both")
    if out_dir and out_dir.exists() and not out_dir.is_dir():
        raise fail(f"{out_dir}: exists and is not a directory")
    try:
        engine = State.engine()
        prepared, where = _checked_chain(engine, chain, device, remote)
    except ArtchainError as exc:
        raise fail(str(exc)) from None
    if out_dir:  # created only once the chain is known to be good
        try:
            out_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise fail(f"{out_dir}: cannot create the output directory ({exc.strerror})") from None
    out.print(f"chain: {prepared.describe()}  [dim]on {where}[/dim]")
    try:
        runner = _remote_runner(engine, prepared, device) if remote else _local_runner(engine, prepared, device)
    except ArtchainError as exc:
        raise fail(str(exc)) from None
    failures = 0
    for source in inputs:
        destination = output or output_path(source, chain, out_dir)
        try:
            _run_one(engine, runner, source, destination, compare)
        except ArtchainError as exc:
            failures += 1
            err.print(f"[red]failed:[/red] {exc}", soft_wrap=True)
        except Exception as exc:  # noqa: BLE001 - e.g. out of memory, broker gone: the next input still runs
            failures += 1
            reason = str(exc).splitlines()[0] if str(exc) else ""
            err.print(f"[red]failed:[/red] {source}: {type(exc).__name__}: {reason}", soft_wrap=True)
    if failures:
        err.print(f"{failures} of {len(inputs)} inputs failed")
        raise typer.Exit(SOME_FAILED)


def _checked_chain(engine, chain: str, device: str | None = None, remote: bool = False):
    """The chain validated where it will run, and that place: here (device, weights present) or,
    for queue workers, which hold the weights, only its text."""
    if remote:
        return engine.parser.parse(chain), f"queue {engine.config.queue.name}"
    return engine.prepare(chain, device)


def _local_runner(engine, chain, device):
    """Runs a picture here, with a progress bar per step."""
    def run_here(source: Path, picture):
        with Progress(TextColumn("  {task.description}"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
                      TimeElapsedColumn(), console=err, transient=True) as bars:
            tasks: dict[int, int] = {}

            def show(index: int, count: int, name: str, fraction: float) -> None:
                if index not in tasks:
                    tasks[index] = bars.add_task(f"{source.name}: {name} ({index + 1}/{count})", total=1.0)
                bars.update(tasks[index], completed=fraction)

            result = engine.execute(chain, picture, device=device, progress=show)
        return result.image, [(t.name, t.seconds) for t in result.timings]
    return run_here


def _remote_runner(engine, chain, device):
    """Sends the file's bytes, and the files the chain's steps read, to the queue and waits for
    the workers' result."""
    import asyncio
    import io

    from PIL import Image

    from artchain.core.jobs import JobRequest, with_attachments
    from artchain.core.queue import CeleryExecutor

    executor = CeleryExecutor(engine.config)
    chain_text, attachments = with_attachments(chain)

    def run_remotely(source: Path, picture):
        request = JobRequest(chain_text, source.read_bytes(), "PNG", source.name, device, attachments)
        result = asyncio.run(executor.submit(request))
        image = Image.open(io.BytesIO(result.image))
        image.load()
        return image, [(result.chain, result.seconds)]
    return run_remotely


def _run_one(engine, runner, source: Path, destination: Path, compare: bool) -> None:
    from artchain.core import imageio

    imageio.output_format(destination)
    if not destination.parent.is_dir():
        raise ImageError(f"{destination}: output directory {destination.parent} does not exist")
    picture = imageio.open_image(source, engine.config.limits)
    image, timings = runner(source, picture)
    imageio.save_image(image, destination, engine.config.output, picture.exif)
    steps = ", ".join(f"{name} {seconds:.2f}s" for name, seconds in timings)
    out.print(f"{source} -> {destination} ({image.width}x{image.height}; {steps})", soft_wrap=True)
    if compare:
        side_by_side = destination.with_name(f"{destination.stem}.compare{destination.suffix}")
        imageio.save_image(imageio.side_by_side(picture.rgb, image), side_by_side, engine.config.output)
        out.print(f"  comparison -> {side_by_side}")


@app.command("list")
def list_processors() -> None:
    """Show processors, aliases, presets and the state of their weights."""
    try:
        engine = State.engine()
    except ArtchainError as exc:
        raise fail(str(exc)) from None
    table = Table(title="processors", title_justify="left")
    for column in ("name", "aliases", "parameters", "weights", "description"):
        table.add_column(column)
    aliases_of: dict[str, list[str]] = {}
    for alias, target in {**engine.registry.aliases, **engine.config.aliases}.items():
        aliases_of.setdefault(target, []).append(alias)
    for name, processor in sorted(engine.registry.processors.items()):
        params = " ".join(f"{p.name}={'?' if p.required else p.default}" for p in processor.params)
        weights = " ".join(f"{w}:{_weight_state(engine.store, w)}" for w in processor.weights) or "-"
        table.add_row(name, ", ".join(sorted(aliases_of.get(name, []))), params, weights, processor.description)
    out.print(table)
    presets = Table(title="presets", title_justify="left")
    presets.add_column("name")
    presets.add_column("chain")
    for name, chain in engine.config.presets.items():
        presets.add_row(name, chain)
    out.print(presets)
    missing = sorted(alias for alias, target in engine.config.aliases.items() if not engine.registry.get(target))
    if missing:
        out.print(f"[yellow]aliases without an installed processor:[/yellow] {', '.join(missing)}")
    for plugin, reason in sorted(engine.registry.broken.items()):
        out.print(f"[red]plugin {plugin} failed to load:[/red] {reason}", soft_wrap=True)


def _weight_state(store, weight_id: str) -> str:
    try:
        return store.status(weight_id, check_hash=False).state
    except ArtchainError:
        return "unknown"


@app.command()
def bot() -> None:
    """Run the Telegram bot: long polling, or a webhook when telegram.webhook.url is set (README: Telegram bot)."""
    import asyncio

    from aiogram.exceptions import TelegramAPIError, TelegramUnauthorizedError
    from aiogram.utils.token import TokenValidationError
    from aiohttp import ClientError

    from artchain.adapters.telegram import describe_failure, serve
    from artchain.core.config import load_config
    from artchain.core.jobs import executor_from_config

    try:
        token = load_config(State.config_path).telegram.token
        if not token:
            raise fail("no Telegram token: set ARTCHAIN_TELEGRAM_TOKEN (or telegram.token in your config)")
        engine = State.engine()
        settings = engine.config.telegram
        executor = executor_from_config(engine, settings.workers, settings.max_queue)
    except ArtchainError as exc:
        raise fail(str(exc)) from None
    try:
        asyncio.run(serve(token, engine.config, engine.parser, executor))
    except TokenValidationError:
        raise fail("the Telegram token is malformed; copy it again from @BotFather") from None
    except TelegramUnauthorizedError:
        raise fail("Telegram refused the token (revoked?); get the current one from @BotFather") from None
    except (TelegramAPIError, ClientError, OSError) as exc:
        raise fail(f"the bot could not start: {describe_failure(exc)}") from None
    except KeyboardInterrupt:
        pass
    finally:
        executor.shutdown()


def _store():
    from artchain.core.config import load_config
    from artchain.core.weights import WeightStore

    try:
        return WeightStore(load_config(State.config_path).weights_dir)
    except ArtchainError as exc:
        raise fail(str(exc)) from None


@weights_app.command("list")
def weights_list() -> None:
    """A table of every known weight: present, missing or checksum mismatch, with provenance."""
    store = _store()
    table = Table(title=f"weights in {store.directory}", title_justify="left")
    for column in ("id", "plugin", "state", "file", "licence", "provenance"):
        table.add_column(column, overflow="fold")
    for weight_id in sorted({*store.entries, *store.imported()}):
        status = store.status(weight_id)
        entry = status.entry
        colour = {"missing": "yellow", "mismatch": "red"}.get(status.state, "green")
        provenance = f"imported from {status.imported.source}" if status.imported else (entry.provenance if entry else "")
        table.add_row(weight_id, entry.plugin if entry else "-", f"[{colour}]{status.state}[/{colour}]",
                      str(status.path or (entry.file if entry else "")), entry.licence if entry else "-", provenance)
    out.print(table)


@weights_app.command("pull")
def weights_pull(
    weight_ids: Annotated[Optional[list[str]], typer.Argument(help="weight ids (see `artchain weights list`)")] = None,
    derivable: Annotated[bool, typer.Option("--derivable", help="also every weight that can be built offline")] = False,
) -> None:
    """Download (or derive offline) weight files, checking their sha256."""
    store = _store()
    weight_ids = list(weight_ids or [])
    if derivable:
        weight_ids += [entry.id for entry in store.entries.values() if entry.derive and entry.id not in weight_ids]
    if not weight_ids and not derivable:
        raise fail("name the weight ids to pull, or pass --derivable")
    failed = 0
    for weight_id in weight_ids:
        with Progress(TextColumn(f"  {weight_id}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                      console=err, transient=True) as bars:
            task = bars.add_task(weight_id, total=None)
            try:
                path = store.pull(weight_id, progress=lambda done, total: bars.update(task, completed=done, total=total))
            except ArtchainError as exc:
                failed += 1
                err.print(f"[red]failed:[/red] {exc}", soft_wrap=True)
                continue
        out.print(f"{weight_id}: {path}")
    if failed:
        raise typer.Exit(SOME_FAILED)


@weights_app.command("import")
def weights_import(
    path: Annotated[Path, typer.Argument(help="a checkpoint file (e.g. a seed's .pth / .tar)")],
    weight_id: Annotated[str, typer.Option("--as", help="the weight id it fills, e.g. esrgan")],
) -> None:
    """Use your own checkpoint for a weight id; its sha256 is recorded."""
    store = _store()
    known = set(store.entries) | {w for p in State.engine().registry.processors.values() for w in p.weights}
    if weight_id not in known:
        raise fail(f"unknown weight id {weight_id!r} (known: {', '.join(sorted(known))})")
    try:
        record = store.import_file(path, weight_id)
    except ArtchainError as exc:
        raise fail(str(exc), SOME_FAILED) from None
    out.print(f"{weight_id}: imported {path} (sha256 {record.sha256[:16]}...)")


@weights_app.command("verify")
def weights_verify() -> None:
    """Re-hash every present weight file; exit 1 if any differs from its record."""
    store = _store()
    bad = 0
    for weight_id in sorted({*store.entries, *store.imported()}):
        status = store.status(weight_id)
        if status.state == "mismatch":
            bad += 1
            err.print(f"[red]{weight_id}: {status.detail}[/red] ({status.path})", soft_wrap=True)
        elif status.state != "missing":
            out.print(f"{weight_id}: ok ({status.path})")
    if bad:
        raise typer.Exit(SOME_FAILED)


@app.command()
def watch(
    directory: Annotated[Path, typer.Argument(help="folder that gets inbox/, work/, outbox/, done/, failed/")],
    chain: Annotated[Optional[str], typer.Option(help="chain for files dropped straight into inbox/ (default: config watch.chain)")] = None,
    concurrency: Annotated[Optional[int], typer.Option(min=1, help="files processed at once (default: config watch.concurrency)")] = None,
) -> None:
    """Process every image dropped into DIRECTORY/inbox/ until SIGINT/SIGTERM (twice: release at once)."""
    import asyncio
    import signal

    from artchain.adapters.watch import Folders, Watcher
    from artchain.core.jobs import executor_from_config

    try:
        engine = State.engine()
        chain = chain or engine.config.watch.chain
        if chain:
            _checked_chain(engine, chain, remote=engine.config.executor == "celery")
    except ArtchainError as exc:
        raise fail(str(exc)) from None
    if directory.exists() and not directory.is_dir():
        raise fail(f"{directory}: not a directory")
    workers = concurrency or engine.config.watch.concurrency
    executor = executor_from_config(engine, workers=workers, max_jobs=workers)
    watcher = Watcher(Folders(directory), executor, chain, workers, engine.config.watch.settle_seconds,
                      max_bytes=engine.config.limits.max_bytes,
                      say=lambda line: out.print(line, soft_wrap=True, markup=False))

    async def serve() -> None:
        stop, release = asyncio.Event(), asyncio.Event()

        def on_signal() -> None:
            (release if stop.is_set() else stop).set()

        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, on_signal)
        await watcher.run(stop, release)

    asyncio.run(serve())
    executor.shutdown()


@app.command()
def worker(
    concurrency: Annotated[Optional[int], typer.Option(min=1, help="jobs at once (default: config queue.worker_concurrency)")] = None,
    loglevel: Annotated[str, typer.Option(help="Celery log level")] = "INFO",
    name: Annotated[Optional[str], typer.Option(help="worker name, e.g. gpu1@%h (default: celery@HOST)")] = None,
) -> None:
    """Run a queue worker: takes jobs from the Celery/Redis queue (config `queue`), preloading models."""
    from artchain.core.config import load_config
    from artchain.core.queue import run_worker

    try:
        config = load_config(State.config_path)
    except ArtchainError as exc:
        raise fail(str(exc)) from None
    run_worker(config, concurrency, loglevel, name)


def _load_plugin_commands() -> None:
    from artchain.core.plugins import discover

    discover().manager.hook.artchain_cli(app=app)


def main() -> None:
    try:
        _load_plugin_commands()
    except ArtchainError as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise SystemExit(USAGE_ERROR) from None
    app()
