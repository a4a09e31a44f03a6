"""Files that are never half-written, and JSON that every parser reads."""
import contextlib
import json
import math
import os


@contextlib.contextmanager
def atomic_write(path: str):
    """A binary file handle whose content appears at `path` only once complete: a kill midway
    leaves either the old file or nothing, never a truncated one."""
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)


def _finite(obj):
    """obj with every NaN or infinity replaced by None, at any depth: JSON (RFC 8259) has no
    NaN, and jq, browsers and strict parsers refuse the `NaN` Python's json writes by default.
    A figure that is missing or undefined is null."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def to_json(obj, indent=None, default=None) -> str:
    """Strict JSON text of obj: non-finite floats become null, and anything else JSON cannot
    hold raises (allow_nan=False) unless `default` converts it."""
    return json.dumps(_finite(obj), indent=indent, default=default, allow_nan=False)


def write_json(path: str, obj, indent=2, default=None):
    """Write obj as strict JSON to path, atomically."""
    with atomic_write(path) as f:
        f.write((to_json(obj, indent=indent, default=default) + "\n").encode())


def append_json_line(path: str, obj):
    """Append obj as one strict JSON line (JSON Lines)."""
    with open(path, "a") as f:
        f.write(to_json(obj) + "\n")
