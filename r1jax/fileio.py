"""Atomic file writes: a crash leaves the old file or the new one, never half of either."""
from __future__ import annotations

import json
import os
from collections.abc import Iterable
from typing import Any


def atomic_write(path: str | os.PathLike, data: bytes | str) -> str:
    """Write `data` (text as UTF-8) to `path` through a temporary file and a rename; makes the folder."""
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            f.write(data.encode("utf-8") if isinstance(data, str) else data)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def atomic_write_jsonl(path: str | os.PathLike, rows: Iterable[Any]) -> str:
    """One JSON object per line (UTF-8, non-ASCII kept), written atomically."""
    return atomic_write(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
