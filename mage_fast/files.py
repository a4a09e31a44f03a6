"""Files that are never half-written."""
import contextlib
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
