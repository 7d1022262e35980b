"""The `artchain` command line. Thin: parse, call the engine or the weight store, report.

Exit codes: 0 every input done; 1 some inputs failed; 2 usage or configuration error.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import (BarColumn, DownloadColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn,
                           TransferSpeedColumn)
from rich.table import Table

from artchain.core.errors import ArtchainError, ImageError
from artchain.runtime import MissingExtra, Runtime, require_extra

app = typer.Typer(no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Plugin-based image-processing chains.")
weights_app = typer.Typer(no_args_is_help=True, help="List, download, import and verify weight files.")
app.add_typer(weights_app, name="weights")
styles_app = typer.Typer(no_args_is_help=True, help="Add or remove styles of your own (a trained weight file "
                         "under a name of its own).")
app.add_typer(styles_app, name="styles")
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
    ctx: typer.Context,
    config: Annotated[Optional[Path], typer.Option("--config", "-c", help="config file merged over the bundled one (or ARTCHAIN_CONFIG)")] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="log what happens")] = False,
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True, help="print the version")] = False,
) -> None:
    _set_verbose(verbose)
    State.config_path, State._runtime = config, None
    ctx.obj = State.runtime  # plugin commands (e.g. `artchain train`) reach the runtime through it


def _set_verbose(verbose: bool) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s",
                        force=True)


@app.command()
def run(
    chain: Annotated[str, typer.Argument(help='steps such as "neon,upscale" or "resize:width=512,upscale:tile=256"')],
    inputs: Annotated[list[Path], typer.Argument(help="input images or folders of images", show_default=False)],
    output_text: Annotated[Optional[str], typer.Option("--output", "-o", help="output file (one input), or a folder (existing, or ending in /)")] = None,
    out_dir: Annotated[Optional[Path], typer.Option("--out-dir", help="folder for the outputs (created if needed)")] = None,
    suffix: Annotated[Optional[str], typer.Option("--suffix", help="name outputs NAME_SUFFIX.EXT instead of NAME.CHAIN.EXT")] = None,
    ext: Annotated[Optional[str], typer.Option("--ext", help="output format: png, jpg or webp (default: the input's, else png)")] = None,
    scale: Annotated[Optional[float], typer.Option("--scale", "-s", min=0.01, max=64, help="finally resize to this multiple of the input's size")] = None,
    recursive: Annotated[bool, typer.Option("--recursive", "-r", help="take images from subfolders of folder inputs too")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="replace outputs that exist")] = False,
    skip_existing: Annotated[bool, typer.Option("--skip-existing", help="leave inputs whose output exists")] = False,
    device: Annotated[Optional[str], typer.Option(help="auto, cpu, cuda or cuda:N (default: from config)")] = None,
    compare: Annotated[bool, typer.Option("--compare", help="also write input and output side by side")] = False,
    remote: Annotated[bool, typer.Option("--remote", help="run on queue workers (config `queue`) instead of here")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="log devices, precision, tiles, timings")] = False,
) -> None:
    """Run CHAIN on each input; outputs go beside the inputs unless -o/--out-dir say otherwise.
    An existing output is never replaced unless --overwrite says so, and an input never is."""
    from artchain.adapters import batch

    if verbose:
        _set_verbose(True)
    if overwrite and skip_existing:
        raise fail("give --overwrite or --skip-existing, not both")
    # A Path would drop the trailing "/" that marks a folder yet to be made.
    output = Path(output_text) if output_text else None
    if output is not None and (output.is_dir() or output_text.endswith(("/", os.sep))):
        output, out_dir = None, out_dir or output
    if output and out_dir:
        raise fail("give -o/--output or --out-dir, not both")
    if out_dir and out_dir.exists() and not out_dir.is_dir():
        raise fail(f"{out_dir}: exists and is not a directory")
    sources = batch.expand_inputs(inputs, recursive)
    if output and len(sources) != 1:
        raise fail(f"-o/--output names one file but there are {len(sources)} inputs; give a folder (-o DIR/)")
    if output and output.suffix.lower() not in batch.WRITABLE:
        raise fail(f"{output}: unknown output format {output.suffix or '(no extension)'}; use .png, .jpg or .webp")
    chain_text = chain if scale is None else f"{chain},resize-back:scale={scale:g}"
    many = len(inputs) > 1 or any(path.is_dir() for path in inputs)  # a folder or a glob
    try:
        naming = batch.Naming(chain, out_dir, output, suffix, ext)
        runs, skips, left_out = batch.plan(sources, naming, overwrite, skip_existing, from_folder_or_glob=many,
                                           compare=compare)
    except batch.BatchError as exc:
        raise fail(str(exc)) from None
    runtime = State.runtime()
    try:
        runner = RemoteRunner(runtime, device) if remote else LocalRunner(runtime, device)
        chain_checked, files = runner.check(chain_text)
    except (ArtchainError, MissingExtra) as exc:
        raise fail(str(exc)) from None
    for folder in {planned.destination.parent for planned in runs}:  # only once the chain is good
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise fail(f"{folder}: cannot create the output folder ({exc.strerror})") from None
    out.print(f"chain: {escape(chain_checked.describe())}  [dim]on {runner.where}[/dim]")
    for source in left_out:
        out.print(f"{escape(str(source))}: left out (an output of this chain)", soft_wrap=True)
    for planned in skips:
        out.print(f"{escape(str(planned.source))}: skipped, {escape(str(planned.destination))} exists", soft_wrap=True)
    failures = 0
    for planned in runs:
        try:
            _run_one(runtime, runner, chain_checked, files, planned)
        except ArtchainError as exc:
            failures += 1
            err.print(f"[red]failed:[/red] {escape(str(exc))}", soft_wrap=True)
        except Exception as exc:  # noqa: BLE001 - e.g. out of memory, broker gone: the next input still runs
            failures += 1
            reason = str(exc).splitlines()[0] if str(exc) else ""
            err.print(f"[red]failed:[/red] {escape(f'{planned.source}: {type(exc).__name__}: {reason}')}",
                      soft_wrap=True)
    if many or skips:
        out.print(f"done {len(runs) - failures}, skipped {len(skips) + len(left_out)}, failed {failures}")
    if failures:
        err.print(f"{failures} of {len(runs)} inputs failed")
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
                      TimeElapsedColumn(), TimeRemainingColumn(), console=err, transient=True,
                      disable=not err.is_terminal) as bars:
            tasks: dict[int, int] = {}

            def show(status) -> None:
                description = f"{job.name}: {status.step} ({status.step_index + 1}/{status.step_count})"
                if status.step_index not in tasks:
                    tasks[status.step_index] = bars.add_task(description, total=1.0)
                step_fraction = status.fraction * status.step_count - status.step_index
                bars.update(tasks[status.step_index], completed=step_fraction, description=description)

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


def _run_one(runtime: Runtime, runner, chain, files, planned) -> None:
    from artchain.core import imageio
    from artchain.core.files import write_atomically
    from artchain.core.job import Job, read_file

    source, destination = planned.source, planned.destination
    output_format = imageio.output_format(destination)
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
    if planned.comparison is not None:
        before = imageio.decode_image(job.image.data, limits, job.name).rgb
        after = imageio.decode_image(result.image, limits, str(destination)).rgb
        imageio.save_image(imageio.side_by_side(before, after), planned.comparison, runtime.config.output)
        out.print(f"  comparison -> {planned.comparison}")


def _show_tables(tables: dict[str, tuple[tuple[str, ...], list[tuple[str, ...]]]], as_json: bool) -> None:
    """Tables in a terminal (folded, never cut); tab-separated lines in a pipe; one JSON object on
    request. `tables` maps a title to (columns, rows)."""
    if as_json:
        print(json.dumps({title: [dict(zip(columns, row)) for row in rows]
                          for title, (columns, rows) in tables.items()}, indent=2, ensure_ascii=False))
        return
    for title, (columns, rows) in tables.items():
        _show_table(title, columns, rows)


def _show_table(title: str, columns: tuple[str, ...], rows: list[tuple[str, ...]]) -> None:
    if out.is_terminal:
        table = Table(title=title, title_justify="left")
        for column in columns:
            table.add_column(column, overflow="fold")
        for row in rows:
            table.add_row(*(escape(cell) for cell in row))
        out.print(table)
    else:
        for row in rows:
            print("\t".join(row))


JSON_OPTION = typer.Option("--json", help="print JSON (for scripts)")


@app.command("list")
def list_processors(as_json: Annotated[bool, JSON_OPTION] = False) -> None:
    """Show processors, aliases, presets and the state of their weights."""
    runtime = State.runtime()
    try:
        registry, config, store = runtime.registry, runtime.config, runtime.store
    except ArtchainError as exc:
        raise fail(str(exc)) from None
    aliases_of: dict[str, list[str]] = {}
    for alias, target in {**registry.aliases, **config.aliases}.items():
        aliases_of.setdefault(target, []).append(alias)
    rows = []
    for name, processor in sorted(registry.processors.items()):
        params = " ".join(f"{p.name}={'?' if p.required else p.default}" for p in processor.params)
        weights = " ".join(f"{w}:{_weight_state(store, w)}" for w in processor.weights) or "-"
        rows.append((name, ", ".join(sorted(aliases_of.get(name, []))), params, weights, processor.description))
    _show_tables({"processors": (("name", "aliases", "parameters", "weights", "description"), rows),
                  "presets": (("name", "chain"), list(config.presets.items()))}, as_json)
    missing = sorted(alias for alias, target in config.aliases.items() if not registry.get(target))
    if missing:
        err.print(f"[yellow]aliases without an installed processor:[/yellow] {', '.join(missing)}")
    for plugin, reason in sorted(registry.broken.items()):
        err.print(f"[red]plugin {escape(plugin)} failed to load:[/red] {escape(reason)}", soft_wrap=True)


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
def weights_list(as_json: Annotated[bool, JSON_OPTION] = False) -> None:
    """Every known weight: present, missing or checksum mismatch, with licence and provenance."""
    store = _store()
    rows = []
    for weight_id in sorted({*store.entries, *store.imported()}):
        status = store.status(weight_id)
        entry = status.entry
        provenance = f"imported from {status.imported.source}" if status.imported else (entry.provenance if entry else "")
        rows.append((weight_id, entry.plugin if entry else "-", status.state,
                     str(status.path or (entry.file if entry else "")), entry.licence if entry else "-",
                     " ".join(provenance.split())))
    if not as_json:
        err.print(f"weights in {store.directory}", soft_wrap=True)
    _show_tables({"weights": (("id", "plugin", "state", "file", "licence", "provenance"), rows)}, as_json)


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
    unknown = [weight_id for weight_id in weight_ids if weight_id not in store.entries]
    if unknown:
        raise fail(f"unknown weight id {unknown[0]!r} (known: {', '.join(sorted(store.entries))})")
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


@styles_app.command("add")
def styles_add(
    name: Annotated[str, typer.Argument(help="the step name it gets, e.g. monet")],
    path: Annotated[Path, typer.Argument(help="its weight file (an `artchain train` export, or a seed's checkpoint)")],
    network: Annotated[str, typer.Option(help="the network family that runs it: cyclegan or pix2pix")] = "cyclegan",
    description: Annotated[str, typer.Option(help="what it looks like; shown in `artchain list` and the chat")] = "",
) -> None:
    """Import a weight file as a style of your own: `artchain run NAME photo.jpg` then works."""
    from artchain.core.styles import install_style

    runtime = State.runtime()
    try:
        style = install_style(runtime.store, runtime.registry, name, path, network, description,
                              taken=runtime.config.presets)
    except ArtchainError as exc:
        raise fail(str(exc)) from None
    out.print(f"{name}: a {network} style with weights {style.weights} (undo with `artchain styles remove {name}`)")


@styles_app.command("remove")
def styles_remove(name: Annotated[str, typer.Argument(help="a style you added")]) -> None:
    """Undo `styles add` (or a training run's install): the name and its imported file go."""
    from artchain.core.styles import remove_style

    try:
        style = remove_style(_store(), name)
    except ArtchainError as exc:
        raise fail(str(exc)) from None
    out.print(f"{name}: removed, with its weights {style.weights}")


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

    folders = Folders(directory)
    try:
        folders.create()
    except OSError as exc:
        executor.shutdown()
        raise fail(f"{directory}: cannot make the watched folders ({exc.strerror or exc})") from None
    watcher = Watcher(folders, executor, runtime.parser.steps_of, chain, workers,
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
