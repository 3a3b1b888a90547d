"""Files Voxline derives once and keeps between starts (the knowledge index, rendered
phrases), under ~/.cache/voxline (or $VOXLINE_CACHE)."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

CACHE_ROOT = Path(os.environ.get("VOXLINE_CACHE") or Path.home() / ".cache" / "voxline")


def write_atomically(path: Path, write: Callable[[BinaryIO], None]) -> None:
    """Write `path` aside and rename it into place, so a server starting beside this one
    never reads half a file. Raises OSError (the caller decides whether that matters)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
