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
from rich.markup import escape
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeElapsedColumn, TransferSpeedColumn
from rich.table import Table

from artchain.core.errors import ArtchainError, ImageError
from artchain.runtime import MissingExtra, Runtime, require_extra

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Plugin-based image-processing chains.")
weights_app = typer.Typer(no_args_is_help=True, help="List, download, import and verify weight files.")
app.add_typer(weights_app, name="weights")
out = Console(highlight=False)
err = Console(stderr=True, highlight=False)

USAGE_ERROR = 2
SOME_FAILED = 1


class State:
    """The runtime of this command; built from --config on first use."""

    config_path: Path | None = None
    _runtime: Runtime | None = None

    @classmethod
    def runtime(cls) -> Runtime:
        if cls._runtime is None:
            cls._runtime = Runtime(config_path=cls.config_path)
        return cls._runtime


def fail(message: str, code: int = USAGE_ERROR) -> typer.Exit:
    err.print(f"[red]error:[/red] {escape(message)}", markup=True, soft_wrap=True)
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
    runtime = State.runtime()
    try:
        runner = RemoteRunner(runtime, device) if remote else LocalRunner(runtime, device)
        chain_checked, files = runner.check(chain)
    except (ArtchainError, MissingExtra) as exc:
        raise fail(str(exc)) from None
    if out_dir:  # created only once the chain is known to be good
        try:
            out_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise fail(f"{out_dir}: cannot create the output directory ({exc.strerror})") from None
    out.print(f"chain: {chain_checked.describe()}  [dim]on {runner.where}[/dim]")
    failures = 0
    for source in inputs:
        destination = output or output_path(source, chain, out_dir)
        try:
            _run_one(runtime, runner, chain_checked, files, source, destination, compare)
        except ArtchainError as exc:
            failures += 1
            err.print(f"[red]failed:[/red] {escape(str(exc))}", soft_wrap=True)
        except Exception as exc:  # noqa: BLE001 - e.g. out of memory, broker gone: the next input still runs
            failures += 1
            reason = str(exc).splitlines()[0] if str(exc) else ""
            err.print(f"[red]failed:[/red] {escape(f'{source}: {type(exc).__name__}: {reason}')}", soft_wrap=True)
    if failures:
        err.print(f"{failures} of {len(inputs)} inputs failed")
        raise typer.Exit(SOME_FAILED)


class LocalRunner:
    """Runs jobs here, with a progress bar per step."""

    def __init__(self, runtime: Runtime, device: str | None) -> None:
        self.runtime = runtime
        self.device = device
        self.where = "this machine"

    def check(self, chain_text: str):
        """The chain and the files its steps read, checked here before any input is touched."""
        from artchain.core.job import read_step_files

        engine = self.runtime.engine
        chain = engine.parser.parse(chain_text)
        files = read_step_files(chain, self.runtime.config.limits.max_bytes)
        plan = engine.check(chain, files, self.device)
        self.where = str(plan.device)
        return chain, files

    def __call__(self, job):
        from artchain.core.job import run_job

        with Progress(TextColumn("  {task.description}"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
                      TimeElapsedColumn(), console=err, transient=True,
                      disable=not err.is_terminal) as bars:
            tasks: dict[int, int] = {}

            def show(status) -> None:
                if status.step_index not in tasks:
                    tasks[status.step_index] = bars.add_task(
                        f"{job.name}: {status.step} ({status.step_index + 1}/{status.step_count})", total=1.0)
                step_fraction = status.fraction * status.step_count - status.step_index
                bars.update(tasks[status.step_index], completed=step_fraction)

            return run_job(self.runtime.engine, job, show)


class RemoteRunner:
    """Sends jobs, with the files the chain's steps read, to the queue's workers (which hold the
    weights, so only the chain's steps and parameters are checked here)."""

    def __init__(self, runtime: Runtime, device: str | None) -> None:
        self.runtime = runtime
        self.device = device
        self.where = f"queue {runtime.config.queue.name}"
        self.executor = runtime.celery_executor()

    def check(self, chain_text: str):
        from artchain.core.job import read_step_files

        chain = self.runtime.parser.parse(chain_text)
        return chain, read_step_files(chain, self.runtime.config.limits.max_bytes)

    def __call__(self, job):
        import asyncio

        return asyncio.run(self.executor.submit(job))


def _run_one(runtime: Runtime, runner, chain, files, source: Path, destination: Path, compare: bool) -> None:
    from artchain.core import imageio
    from artchain.core.files import write_atomically
    from artchain.core.job import Job, read_file

    output_format = imageio.output_format(destination)
    if not destination.parent.is_dir():
        raise ImageError(f"{destination}: output directory {destination.parent} does not exist")
    limits = runtime.config.limits
    job = Job(runtime.parser.steps_of(chain.text), read_file(source, limits.max_bytes), files,
              output_format, runner.device)
    result = runner(job)
    try:
        write_atomically(destination, result.image)
    except OSError as exc:
        raise ImageError(f"{destination}: cannot write ({exc.strerror or exc})") from None
    steps = ", ".join(f"{name} {seconds:.2f}s" for name, seconds in result.step_seconds)
    width, height = result.size
    out.print(f"{source} -> {destination} ({width}x{height}; {steps})", soft_wrap=True)
    if compare:
        side_by_side = destination.with_name(f"{destination.stem}.compare{destination.suffix}")
        before = imageio.decode_image(job.image.data, limits, job.name).rgb
        after = imageio.decode_image(result.image, limits, str(destination)).rgb
        imageio.save_image(imageio.side_by_side(before, after), side_by_side, runtime.config.output)
        out.print(f"  comparison -> {side_by_side}")


@app.command("list")
def list_processors() -> None:
    """Show processors, aliases, presets and the state of their weights."""
    runtime = State.runtime()
    try:
        registry, config, store = runtime.registry, runtime.config, runtime.store
    except ArtchainError as exc:
        raise fail(str(exc)) from None
    table = Table(title="processors", title_justify="left")
    for column in ("name", "aliases", "parameters", "weights", "description"):
        table.add_column(column)
    aliases_of: dict[str, list[str]] = {}
    for alias, target in {**registry.aliases, **config.aliases}.items():
        aliases_of.setdefault(target, []).append(alias)
    for name, processor in sorted(registry.processors.items()):
        params = " ".join(f"{p.name}={'?' if p.required else p.default}" for p in processor.params)
        weights = " ".join(f"{w}:{_weight_state(store, w)}" for w in processor.weights) or "-"
        table.add_row(name, ", ".join(sorted(aliases_of.get(name, []))), params, weights, processor.description)
    out.print(table)
    presets = Table(title="presets", title_justify="left")
    presets.add_column("name")
    presets.add_column("chain")
    for name, chain in config.presets.items():
        presets.add_row(name, chain)
    out.print(presets)
    missing = sorted(alias for alias, target in config.aliases.items() if not registry.get(target))
    if missing:
        out.print(f"[yellow]aliases without an installed processor:[/yellow] {', '.join(missing)}")
    for plugin, reason in sorted(registry.broken.items()):
        out.print(f"[red]plugin {escape(plugin)} failed to load:[/red] {escape(reason)}", soft_wrap=True)


def _weight_state(store, weight_id: str) -> str:
    try:
        return store.status(weight_id, check_hash=False).state
    except ArtchainError:
        return "unknown"


@app.command()
def bot() -> None:
    """Run the Telegram bot: long polling, or a webhook when telegram.webhook.url is set (README: Telegram bot)."""
    import asyncio

    runtime = State.runtime()
    try:
        require_extra("bot", "aiogram")
        settings = runtime.config.telegram
        if not settings.token:
            raise fail("no Telegram token: set ARTCHAIN_TELEGRAM_TOKEN (or telegram.token in your config)")
        executor = runtime.executor(settings.workers, settings.max_queue)
    except (ArtchainError, MissingExtra) as exc:
        raise fail(str(exc)) from None
    from aiogram.exceptions import TelegramAPIError, TelegramUnauthorizedError
    from aiogram.utils.token import TokenValidationError
    from aiohttp import ClientError

    from artchain.adapters.telegram.app import serve
    from artchain.adapters.telegram.handlers import describe_failure

    try:
        asyncio.run(serve(settings.token, runtime.config, runtime.parser, executor))
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
    try:
        return State.runtime().store
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
                err.print(f"[red]failed:[/red] {escape(str(exc))}", soft_wrap=True)
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
    processors = State.runtime().registry.processors.values()
    known = set(store.entries) | {w for p in processors for w in p.weights}
    if weight_id not in known:
        raise fail(f"unknown weight id {weight_id!r} (known: {', '.join(sorted(known))})")
    loaders = [processor() for processor in processors if weight_id in processor.weights]

    def fits(state: dict) -> None:
        for loader in loaders:
            loader.check_weights(weight_id, state)

    try:
        record = store.import_file(path, weight_id, check=fits)
    except ArtchainError as exc:
        raise fail(str(exc), SOME_FAILED) from None
    out.print(f"{weight_id}: imported {path} (sha256 {record.sha256[:16]}...; undo with "
              f"`artchain weights remove {weight_id}`)")


@weights_app.command("remove")
def weights_remove(
    weight_id: Annotated[str, typer.Argument(help="a weight id you imported a file for")],
) -> None:
    """Undo `weights import`: the id goes back to its manifest file (or to missing)."""
    store = _store()
    try:
        record = store.remove_import(weight_id)
    except ArtchainError as exc:
        raise fail(str(exc)) from None
    out.print(f"{weight_id}: removed the file imported from {record.source}; now {store.status(weight_id).state}")


@weights_app.command("verify")
def weights_verify() -> None:
    """Re-hash every present weight file; exit 1 if any differs from its record."""
    store = _store()
    bad = 0
    for weight_id in sorted({*store.entries, *store.imported()}):
        status = store.status(weight_id)
        if status.state == "mismatch":
            bad += 1
            err.print(f"[red]{weight_id}: {escape(status.detail)}[/red] ({escape(str(status.path))})", soft_wrap=True)
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

    runtime = State.runtime()
    try:
        require_extra("watch", "watchdog")
        config = runtime.config
        chain = chain or config.watch.chain
        if chain:  # workers hold the weights of a remote run: here only the steps are checked
            runtime.parser.parse(chain) if runtime.remote else runtime.engine.check(chain)
        if directory.exists() and not directory.is_dir():
            raise fail(f"{directory}: not a directory")
        workers = concurrency or config.watch.concurrency
        executor = runtime.executor(workers=workers, max_jobs=workers)
    except (ArtchainError, MissingExtra) as exc:
        raise fail(str(exc)) from None
    from artchain.adapters.watch.folder import Folders, Watcher

    watcher = Watcher(Folders(directory), executor, runtime.parser.steps_of, chain, workers,
                      config.watch.settle_seconds, max_bytes=config.limits.max_bytes,
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
    runtime = State.runtime()
    try:
        require_extra("queue", "celery")
        runtime.config  # read now: a bad config is one line here, not a traceback in every pool process
    except (ArtchainError, MissingExtra) as exc:
        raise fail(str(exc)) from None
    from artchain.adapters.celery.worker import run_worker

    run_worker(runtime, concurrency, loglevel, name)


def _load_plugin_commands() -> None:
    # Before the options are parsed, so without --config: the commands' runtime comes later.
    from artchain.core.plugins import discover

    discover().manager.hook.artchain_cli(app=app)


def main() -> None:
    try:
        _load_plugin_commands()
    except ArtchainError as exc:
        err.print(f"[red]error:[/red] {escape(str(exc))}")
        raise SystemExit(USAGE_ERROR) from None
    app()
