"""`artchain watch DIR`: drop a file in, get the result out, never lose one.

Layout under DIR::

    inbox/                  drop files here (or in inbox/CHAIN/ to pick the chain by folder name)
    work/                   files being processed (moved here from inbox/ when their job starts)
    outbox/                 results
    done/                   inputs whose result is in outbox/
    failed/                 inputs that failed, each with NAME.error.txt saying why

Delivery is Maildir-style, so a crash at any moment loses nothing and duplicates nothing:
1. a complete file is claimed by renaming it from inbox/ into work/ (one atomic step);
2. the result is written under a hidden temporary name in outbox/ and renamed into place;
3. only then is the input moved from work/ to done/ (or, on failure, NAME.error.txt is written to
   failed/ and the input moved beside it).
On start-up every file left in work/ is finished: moved to done/ if its result is already in
outbox/, to failed/ if its error file is already written, else processed again. Half-written
temporary files in outbox/ are removed.

File events come from watchdog. On Linux it reports close-after-write (inotify IN_CLOSE_WRITE) and
renames into inbox/, so a file is taken as soon as its writer closes it or it is moved in, and a
slow writer that pauses is never taken early; a file that changed without such an event (e.g. its
mtime touched) is taken after 10 x `settle_seconds` of quiet. Where close events do not exist, and
for files that arrived while the watcher was down, a file is taken once its size and mtime have
been stable for `settle_seconds`. On Linux no file is taken while a process holds it open for
writing (from /proc), so a writer that was already busy when the watcher started, and pauses, is
waited for.
Hidden, temporary and partial files (.name, ~name, *.tmp, *.part, *.crdownload, *.swp, name~) are
ignored.
"""
from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from artchain.core.errors import ArtchainError, ImageError
from artchain.core.files import PARTIAL_SUFFIX, write_atomically
from artchain.core.imageio import FORMATS
from artchain.core.chain import StepSpec
from artchain.core.job import Executor, InputFile, Job, JobStatus

IGNORED_SUFFIXES = (".tmp", ".part", ".partial", ".crdownload", ".download", ".swp", "~")
ERROR_SUFFIX = ".error.txt"


def is_candidate(path: Path) -> bool:
    name = path.name
    return not name.startswith((".", "~")) and not name.lower().endswith(IGNORED_SUFFIXES)


@dataclass(frozen=True)
class Folders:
    root: Path

    @property
    def inbox(self) -> Path:
        return self.root / "inbox"

    @property
    def work(self) -> Path:
        return self.root / "work"

    @property
    def outbox(self) -> Path:
        return self.root / "outbox"

    @property
    def done(self) -> Path:
        return self.root / "done"

    @property
    def failed(self) -> Path:
        return self.root / "failed"

    def create(self) -> None:
        for folder in (self.inbox, self.work, self.outbox, self.done, self.failed):
            folder.mkdir(parents=True, exist_ok=True)

    def output_for(self, relative: Path) -> Path:
        suffix = relative.suffix.lower() if relative.suffix.lower() in FORMATS else ".png"
        return self.outbox / relative.with_suffix(suffix)

    def error_for(self, relative: Path) -> Path:
        return self.failed / relative.with_name(relative.name + ERROR_SUFFIX)


def _move(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    os.replace(source, target)


def _write_atomically(target: Path, data: bytes) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(target, data)


QUIET_FACTOR = 10  # with close events trusted, how many settle periods a file without one waits
_WRITE_MODES = os.O_WRONLY | os.O_RDWR


def open_for_writing(folder: Path) -> set[Path] | None:
    """Files under `folder` that some process holds open for writing, from /proc (Linux); None where
    that cannot be known. A writer that pauses longer than any quiet period is still writing."""
    proc = Path("/proc")
    if not (proc / "self" / "fdinfo").is_dir():
        return None
    prefix = f"{folder.resolve()}{os.sep}"
    held = set()
    for descriptors in proc.glob("[0-9]*/fd"):
        try:
            links = [(fd, os.readlink(fd)) for fd in descriptors.iterdir()]
        except OSError:
            continue  # the process ended, or is not ours to look at
        for fd, target in links:
            if not target.startswith(prefix):
                continue
            try:
                info = (descriptors.parent / "fdinfo" / fd.name).read_text()
            except OSError:
                continue
            flags = next((line.split()[1] for line in info.splitlines() if line.startswith("flags:")), "0")
            if int(flags, 8) & _WRITE_MODES:
                held.add(Path(target))
    return held


@dataclass
class _Seen:
    stamp: tuple[int, int]  # (size, mtime_ns)
    since: float
    complete: bool = False  # a close-after-write or move-in event came after its last change
    from_startup: bool = False


@dataclass
class Watcher:
    folders: Folders
    executor: Executor
    steps_of: Callable[[str], tuple[StepSpec, ...]]  # chain text (a folder name) -> steps
    default_chain: str | None
    concurrency: int = 2
    settle_seconds: float = 1.0
    say: Callable[[str], None] = print
    max_bytes: int | None = None  # a bigger file goes to failed/ without being read
    _seen: dict[Path, _Seen] = field(default_factory=dict)
    _running: dict[Path, asyncio.Task] = field(default_factory=dict)
    _wake: asyncio.Event | None = None
    _trust_events: bool = False

    # -- naming --------------------------------------------------------------------------------------
    def chain_for(self, relative: Path) -> str | None:
        """The inbox subfolder's name wins; files directly in inbox/ use --chain or the config."""
        return relative.parts[0] if len(relative.parts) > 1 else self.default_chain

    def _claim_name(self, relative: Path) -> Path:
        """A name free in work/, done/, failed/ and outbox/, whose output no file in work/ will write
        either (a.png and a.bmp both make outbox/a.png), so every input has its own output."""
        work = self.folders.work
        coming = {self.folders.output_for(path.relative_to(work)) for path in work.rglob("*") if path.is_file()}
        candidate, number = relative, 1
        while self.folders.output_for(candidate) in coming or any(
                path.exists() for path in (work / candidate, self.folders.done / candidate,
                                           self.folders.failed / candidate, self.folders.output_for(candidate))):
            number += 1
            candidate = relative.with_name(f"{relative.stem}-{number}{relative.suffix}")
        return candidate

    # -- start-up ------------------------------------------------------------------------------------
    def recover(self) -> list[Path]:
        """Finishes what a crash interrupted; returns work items that still need processing."""
        for temporary in self.folders.outbox.rglob(f".*{PARTIAL_SUFFIX}"):
            temporary.unlink(missing_ok=True)
        for temporary in self.folders.failed.rglob(f".*{PARTIAL_SUFFIX}"):
            temporary.unlink(missing_ok=True)
        pending = []
        for item in sorted(p for p in self.folders.work.rglob("*") if p.is_file()):
            relative = item.relative_to(self.folders.work)
            if self.folders.output_for(relative).exists():
                _move(item, self.folders.done / relative)
                self.say(f"{relative}: recovered, result was already delivered")
            elif self.folders.error_for(relative).exists():
                _move(item, self.folders.failed / relative)
                self.say(f"{relative}: recovered, failure was already recorded")
            else:
                pending.append(relative)
        return pending

    # -- finding complete files ----------------------------------------------------------------------
    def note_complete(self, path: Path) -> None:
        """A writer closed the file, or it was renamed into inbox/: it is whole."""
        try:
            stat = path.stat()
        except OSError:
            return
        self._seen[path] = _Seen((stat.st_size, stat.st_mtime_ns), time.monotonic(), complete=True)

    def ready_files(self, startup: bool = False) -> list[Path]:
        now = time.monotonic()
        ready = []
        present = set()
        for path in sorted(self.folders.inbox.rglob("*")):
            relative = path.relative_to(self.folders.inbox)
            if not all(is_candidate(Path(part)) for part in relative.parts) or not path.is_file():
                continue
            try:
                stat = path.stat()
            except OSError:
                continue  # gone between listing and looking
            present.add(path)
            stamp = (stat.st_size, stat.st_mtime_ns)
            seen = self._seen.get(path)
            if seen is None or seen.stamp != stamp:
                self._seen[path] = _Seen(stamp, now, from_startup=startup)
                continue
            quiet = self.settle_seconds
            if self._trust_events and not seen.from_startup:
                quiet *= QUIET_FACTOR
            if seen.complete or now - seen.since >= quiet:
                ready.append(path)
        for gone in set(self._seen) - present:
            self._seen.pop(gone, None)
        held = open_for_writing(self.folders.inbox) if ready else None
        return [path for path in ready if path.resolve() not in held] if held else ready

    # -- processing ----------------------------------------------------------------------------------
    async def process(self, relative: Path) -> None:
        """Runs one claimed file (already in work/) to exactly one outcome."""
        item = self.folders.work / relative
        chain = self.chain_for(relative)
        started = time.monotonic()
        last_report = [0.0]

        def show(status: JobStatus) -> None:
            if status.running and time.monotonic() - last_report[0] >= 1.0:
                last_report[0] = time.monotonic()
                self.say(f"{relative}: {status.step} ({status.step_index + 1}/{status.step_count}) "
                         f"{status.fraction:.0%}")

        try:
            if not chain:
                raise ArtchainError("no chain: drop it into inbox/CHAIN/, or start with --chain")
            output = self.folders.output_for(relative)
            size = item.stat().st_size
            if self.max_bytes is not None and size > self.max_bytes:
                raise ImageError(f"{relative}: {size} bytes is over the limit of {self.max_bytes}")
            data = await asyncio.to_thread(item.read_bytes)
            job = Job(self.steps_of(chain), InputFile(str(relative), data), output_format=FORMATS[output.suffix])
            self.say(f"{relative}: started ({chain})")
            result = await self.executor.submit(job, show)
        except asyncio.CancelledError:
            _move(item, self.folders.inbox / relative)  # released: it will be taken again next time
            self.say(f"{relative}: released back to inbox")
            raise
        except Exception as exc:  # noqa: BLE001 - whatever went wrong, the input must end in failed/
            reason = str(exc) if isinstance(exc, ArtchainError) else f"internal error: {type(exc).__name__}: {exc}"
            _write_atomically(self.folders.error_for(relative), (reason + "\n").encode())
            _move(item, self.folders.failed / relative)
            self.say(f"{relative}: failed: {reason}")
            return
        try:
            _write_atomically(output, result.image)
            _move(item, self.folders.done / relative)
        except OSError as exc:  # e.g. a full disk: the input stays claimed and is redone at the next start
            self.say(f"{relative}: result not delivered ({exc.strerror or exc}); it stays in work/ "
                     "until the next start")
            return
        self.say(f"{relative} -> {output.relative_to(self.folders.root)} "
                 f"({result.size[0]}x{result.size[1]}, {time.monotonic() - started:.1f}s)")

    def _start(self, relative: Path) -> None:
        task = asyncio.create_task(self.process(relative))
        self._running[relative] = task
        task.add_done_callback(lambda _: (self._running.pop(relative, None), self._wake and self._wake.set()))

    def _take_ready(self) -> None:
        for path in self.ready_files():
            if len(self._running) >= self.concurrency:
                return
            relative = self._claim_name(path.relative_to(self.folders.inbox))
            try:
                _move(path, self.folders.work / relative)
            except FileNotFoundError:
                continue  # taken away by its owner in the meantime
            self._seen.pop(path, None)
            self._start(relative)

    async def run(self, stop: asyncio.Event, release: asyncio.Event) -> None:
        """Runs until `stop`; then finishes the files in progress, or releases them on `release`."""
        from watchdog.events import FileClosedEvent, FileMovedEvent, FileSystemEventHandler
        from watchdog.observers import Observer

        self.folders.create()
        loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        watcher = self

        class Events(FileSystemEventHandler):
            def on_any_event(self, event) -> None:
                # Everything is handed to the loop's thread: the watcher's state has one owner.
                if isinstance(event, FileClosedEvent):
                    loop.call_soon_threadsafe(watcher.note_complete, Path(event.src_path))
                elif isinstance(event, FileMovedEvent):
                    loop.call_soon_threadsafe(watcher.note_complete, Path(event.dest_path))
                loop.call_soon_threadsafe(watcher._wake.set)

        backlog = self.recover()
        observer = Observer()
        observer.schedule(Events(), str(self.folders.inbox), recursive=True)
        observer.start()
        # Files already there were written while nobody watched: only a stable size can vouch for them.
        self.ready_files(startup=True)
        self._trust_events = type(observer).__name__ == "InotifyObserver"
        self.say(f"watching {self.folders.inbox} (chain: {self.default_chain or 'from the subfolder name'})")
        try:
            while not stop.is_set():
                while backlog and len(self._running) < self.concurrency:
                    self._start(backlog.pop(0))
                if not backlog:
                    self._take_ready()
                self._wake.clear()
                waiters = [asyncio.create_task(e.wait()) for e in (self._wake, stop)]
                await asyncio.wait(waiters, timeout=max(self.settle_seconds / 2, 0.05),
                                   return_when=asyncio.FIRST_COMPLETED)
                for waiter in waiters:
                    waiter.cancel()
        finally:
            observer.stop()
            observer.join()
        if self._running:
            self.say(f"finishing {len(self._running)} file(s); signal again to release them")
            finishing = asyncio.gather(*self._running.values(), return_exceptions=True)
            releasing = asyncio.create_task(release.wait())
            await asyncio.wait([finishing, releasing], return_when=asyncio.FIRST_COMPLETED)
            if not finishing.done():
                for task in list(self._running.values()):
                    task.cancel()
                await finishing
            releasing.cancel()
