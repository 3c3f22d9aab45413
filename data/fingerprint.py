"""
Content keys: what a corpus's text is, cheaply. A file's key is its sha256; hashing gigabytes on
every run would cost seconds, so the hashes are kept in <root>/fingerprints.json, each beside the
file's size and modification time, and a file is hashed again only when those change.
"""

import hashlib
import json
from pathlib import Path

from common.errors import DataError, UserError
from common.files import atomic_write


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    try:
        with path.open("rb") as f:
            while chunk := f.read(1 << 24):
                h.update(chunk)
    except OSError as e:  # permission denied, an I/O error: nothing in the text to fix
        raise DataError(f"cannot read {path}: {e.strerror or e}") from None
    return h.hexdigest()


class Fingerprints:
    def __init__(self, root: Path):
        self.path = Path(root) / "fingerprints.json"
        try:
            self.known = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):  # none yet, or damaged: hash again
            self.known = {}
        self.changed = False

    def sha256(self, path: Path) -> str:
        st = path.stat()
        stamp = [st.st_size, st.st_mtime_ns]
        entry = self.known.get(str(path))
        if entry and entry[:2] == stamp:
            return entry[2]
        digest = file_sha256(path)
        self.known[str(path)] = stamp + [digest]
        self.changed = True
        return digest

    def key(self, source) -> str:
        """sha256 over the source's files (their names relative to the first's folder and their
        hashes), or the source's own sha256 / identity where it has no files."""
        if getattr(source, "sha256", None):
            return source.sha256
        if len(source.files) == 1 and not hasattr(source, "identity"):
            return self.sha256(source.files[0])
        base = getattr(source, "root", source.files[0].parent if source.files else Path())
        lines = "".join(f"{p.relative_to(base) if p.is_relative_to(base) else p}\0{self.sha256(p)}\n"
                        for p in source.files)
        if hasattr(source, "identity"):  # rows: which column, split, config (and the hub's name)
            lines += source.identity()
        return hashlib.sha256(lines.encode("utf-8")).hexdigest()

    def save(self):
        """Best effort: a read-only root still prepares, it only hashes again next time."""
        if self.changed:
            try:
                atomic_write(self.path, json.dumps(self.known, indent=0))
            except UserError:
                pass
