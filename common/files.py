"""Writing files so that a crash never leaves a half-written one where a good one was.

atomic_write() writes to a temporary file in the same folder and renames it over the target
(a rename within one filesystem is atomic): readers see the old file or the new one, never a
mix. A process killed mid-write (kill -9, power loss) leaves its temp file behind;
clean_stale_temp_files() removes those at the next start, but never one whose writer may
still be running.
"""

import os
import shutil
import socket
import time
from pathlib import Path

from .errors import UserError

TEMP_SUFFIX = ".tmp"
FOREIGN_TEMP_AGE = 24 * 3600  # a temp file written on another host is stale after a day


def temp_name(path: Path) -> Path:
    """.<name>.<host>.<pid>.tmp beside path: the host and pid say who is writing it."""
    return path.with_name(f".{path.name}.{_host()}.{os.getpid()}{TEMP_SUFFIX}")


def _host() -> str:
    return socket.gethostname().replace(".", "_")  # no dots: the name is split on them


def atomic_write(path, data) -> Path:
    """Write data (bytes, str, or a function that writes to a binary file) to path atomically.
    The file gets the usual permissions (0666 less the umask, so 0644 for most users), is
    flushed to disk before the rename, and its folder after it."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise UserError(f"cannot write {path}: {path.parent} is a file, not a folder; "
                        f"choose another path") from None
    except PermissionError:
        raise UserError(f"cannot create the folder {path.parent}: permission denied; "
                        f"choose a writable path") from None
    if path.is_dir():
        raise UserError(f"cannot write {path}: it is a folder; give a file path")
    tmp = temp_name(path)
    try:
        # os.open applies the umask to 0o666, unlike tempfile.mkstemp's fixed 0o600
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
        with os.fdopen(fd, "wb") as f:
            if callable(data):
                data(f)
            else:
                f.write(data.encode("utf-8") if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        sync_folder(path.parent)  # the rename itself is an entry in the folder: on disk only once synced
    except PermissionError:
        raise UserError(f"cannot write {path}: permission denied; choose a writable path") from None
    except OSError as e:
        raise UserError(f"cannot write {path}: {e.strerror or e}; choose another path "
                        f"(or free some disk space)") from None
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def sync_folder(folder: Path):
    """fsync a folder, so the names created or renamed in it survive a power cut (POSIX; a
    system that cannot open a folder, such as Windows, has nothing to sync this way)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _writer_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # a live process of another user
        return True
    return True


def clean_stale_temp_files(folder) -> list[Path]:
    """Remove temp files that atomic_write's writers left behind when they were killed:
    this host's whose process is gone, other hosts' after FOREIGN_TEMP_AGE. Returns them."""
    folder, host, removed = Path(folder), _host(), []
    if not folder.is_dir():
        return removed
    for tmp in folder.glob(f".*{TEMP_SUFFIX}"):
        parts = tmp.name[:-len(TEMP_SUFFIX)].rsplit(".", 2)  # [.name, host, pid]
        if len(parts) != 3 or not parts[2].isdigit():
            continue  # not one of ours
        pid = int(parts[2])
        if parts[1] == host:
            stale = pid != os.getpid() and not _writer_alive(pid)
        else:
            try:
                stale = time.time() - tmp.stat().st_mtime > FOREIGN_TEMP_AGE
            except FileNotFoundError:
                continue
        if stale:  # a folder too: a killed data preparation's (data/prepare.py)
            shutil.rmtree(tmp, ignore_errors=True) if tmp.is_dir() else tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed
