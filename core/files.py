"""Writing files so that a reader never sees half of one."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

PARTIAL_SUFFIX = ".part"


def write_atomically(path: Path, data: bytes) -> None:
    """Writes `data` to a hidden temporary file beside `path`, then renames it into place: a crash
    or a full disk leaves the old file (or none), never a truncated one. Raises OSError."""
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=PARTIAL_SUFFIX, dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
