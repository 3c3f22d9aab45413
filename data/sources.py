"""
Sources: a corpus read as documents, a few MB at a time, so no corpus is ever held whole.

    TextFile   one UTF-8 .txt file: a single document (prepare splits it at 90% of its characters)
    Folder     every .txt under a folder, sorted by path: one document a file
    Rows       Parquet / JSON-lines files, or a Hugging Face dataset (hf:OWNER/NAME): one a row
    Texts      documents already in memory with their split given (the built-in plays)

A source's docs() yields Doc(name, split, pieces); pieces is an iterator of Piece: bytes read
from a file (checked and decoded later, on a worker thread) or str. data/fingerprint.py keys a
source by its files' sha256, or a hub dataset by its name and options (identity()).
"""

import glob
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from common.errors import DataError

PIECE = 4 << 20  # bytes a piece: big enough to keep threads busy, small enough to bound memory
ROW_FILES = (".parquet", ".jsonl", ".json")  # .json: one object a line, as the datasets library reads it


@dataclass
class Piece:
    data: bytes | str
    path: Path | None = None  # where bytes came from, for error messages
    offset: int = 0

    def text(self) -> str:
        """The piece as text, or a DataError naming the file and the byte that is wrong."""
        if isinstance(self.data, str):
            return self.data
        if b"\x00" in self.data:
            raise DataError(f"{self.path} looks binary (it has NUL bytes); give a UTF-8 text file")
        try:
            return self.data.decode("utf-8")
        except UnicodeDecodeError as e:
            raise DataError(f"{self.path} is not UTF-8 text (bad byte 0x{self.data[e.start]:02x} at offset "
                            f"{self.offset + e.start}); convert it to UTF-8, e.g. iconv -t utf-8") from None

    def nbytes(self) -> int:
        return len(self.data) if isinstance(self.data, bytes) else len(self.data.encode("utf-8"))


@dataclass
class Doc:
    name: str
    split: str | None  # "train" / "val" where the source decides, else None
    pieces: Iterator[Piece]


def cut_point(buf: bytes) -> int:
    """Where to end a piece of buf: after a run of blank lines that text follows, where every
    tokenizer's split pattern cuts anyway, so pieces encode as the whole text would; else after
    a line; else before a UTF-8 start byte (never inside a character)."""
    i = buf.rfind(b"\n\n")
    while i >= 0:
        j = i + 2
        while j < len(buf) and buf[j] == 10:
            j += 1
        if j < len(buf):
            return j
        i = buf.rfind(b"\n\n", 0, i)
    i = buf.rfind(b"\n", 0, len(buf) - 1)
    if i >= 0:
        return i + 1
    j = len(buf) - 1
    while j > 0 and buf[j] & 0xC0 == 0x80:  # a continuation byte: step back to its start
        j -= 1
    return j or len(buf)


def file_pieces(path: Path, size: int | None = None) -> Iterator[Piece]:
    """path's bytes as pieces of about `size`, a byte-order mark dropped."""
    size = size or PIECE
    try:
        f = path.open("rb")
    except OSError as e:  # permission denied, an I/O error: nothing in the text to fix
        raise DataError(f"cannot read {path}: {e.strerror or e}") from None
    with f:
        buf, offset = f.read(size), 0
        if buf.startswith(b"\xef\xbb\xbf"):
            buf, offset = buf[3:], 3
        while buf:
            more = f.read(size)
            if not more:
                yield Piece(buf, path, offset)
                return
            buf += more
            cut = cut_point(buf[:size]) if len(buf) > size else len(buf)
            yield Piece(buf[:cut], path, offset)
            buf, offset = buf[cut:], offset + cut


def no_such(path):
    """'no such file or folder: PATH', naming the file in the way if PATH runs through one."""
    p = Path(path).parent
    while not p.exists() and p != p.parent:
        p = p.parent
    why = f" ({p} is a file, not a folder)" if p.is_file() else ""
    return DataError(f"no such file or folder: {path}{why}")


def check_file(path: Path):
    if not path.exists():
        raise no_such(path)
    if not path.is_file():
        raise DataError(f"{path} is not a regular file")


class TextFile:
    sep = ""

    def __init__(self, path, name=None, split_words="first 90% of characters train, last 10% val"):
        self.path = Path(path).resolve()
        check_file(Path(path))
        self.name = name or self.path.stem or "text"
        self.where, self.split_words = str(self.path), split_words
        self.files = [self.path]

    def nbytes(self):
        return self.path.stat().st_size

    def count(self):
        return 1

    def docs(self):
        yield Doc(self.path.name, None, file_pieces(self.path))


ONE_DOC = "one document: first 90% of characters train, last 10% val"


class Folder:
    sep = "\n\n"  # between documents, for a tokenizer without an end-of-text token
    split_words = ONE_DOC  # where it holds a single file

    def __init__(self, path):
        self.root = Path(path).resolve()
        self.files = sorted(p for p in self.root.rglob("*.txt") if p.is_file())
        if not self.files:
            raise DataError(f"folder {path} has no .txt files")
        self.name = self.root.name or "text"
        self.where = f"{len(self.files)} .txt files in {self.root}"

    def nbytes(self):
        return sum(p.stat().st_size for p in self.files)

    def count(self):
        return len(self.files)

    def docs(self):
        for p in self.files:
            yield Doc(str(p.relative_to(self.root)), None, file_pieces(p))


class Texts:
    """Documents in memory, each with its split: [(name, split, text)]."""

    def __init__(self, name, where, docs, sep, split_words):
        self.name, self.where, self._docs, self.sep, self.split_words = name, where, docs, sep, split_words
        self.files = []
        self.sha256 = hashlib.sha256(json.dumps(docs).encode("utf-8")).hexdigest()

    def nbytes(self):
        return sum(len(t.encode("utf-8")) for _, _, t in self._docs)

    def count(self):
        return len(self._docs)

    def text(self, split):
        return self.sep.join(t for _, s, t in self._docs if s == split)

    def docs(self):
        for name, split, text in self._docs:
            yield Doc(name, split, iter([Piece(text)]))


# -----------------------------------------------------------------------------
# rows: Parquet, JSON lines, a Hugging Face dataset

def batched_rows(texts, size=None) -> Iterator[str]:
    """Long rows cut into pieces (at line ends) so a single row never becomes one huge piece."""
    size = size or PIECE
    for t in texts:
        while len(t) > size:
            cut = t.rfind("\n", 0, size) + 1 or size
            yield t[:cut]
            t = t[cut:]
        yield t


class Rows:
    """One document a row: the `column` of every row of local Parquet / JSON-lines files, or of
    a Hugging Face dataset streamed through the `datasets` library."""
    sep = "\n\n"
    split_words = ONE_DOC  # where there is a single row

    def __init__(self, spec, column="text", split="train", config=None):
        self.column, self.hf_split, self.config = column or "text", split or "train", config
        if spec.startswith("hf:"):
            self.hub, self.files = spec[3:], []
            if self.hub.count("/") != 1 or not all(self.hub.split("/")):
                raise DataError(f"--dataset={spec}: a hub dataset is hf:OWNER/NAME, e.g. hf:roneneldan/TinyStories")
            self.name = self.hub.replace("/", "_")
            self.where = f"hf:{self.hub}" + (f" ({config})" if config else "") + f", split {self.hf_split}"
        else:
            self.hub = None
            self.files = [Path(p).resolve() for p in sorted(glob.glob(spec))] if glob.has_magic(spec) else [Path(spec)]
            if not self.files:
                raise DataError(f"no files match {spec}")
            for p in self.files:
                check_file(p)
                if p.suffix not in ROW_FILES:
                    raise DataError(f"{p} is not a .parquet or .jsonl file; give files of one kind")
            self.files = [p.resolve() for p in self.files]
            self.name = self.files[0].stem if len(self.files) == 1 else self.files[0].parent.name
            self.where = (str(self.files[0]) if len(self.files) == 1 else
                          f"{len(self.files)} files in {self.files[0].parent}") + f", column {self.column}"
        self._count = None

    def identity(self) -> str:
        """What names a hub dataset's text: the files' content keys stand in for local files."""
        return json.dumps([self.hub, self.config, self.hf_split, self.column])

    def nbytes(self):
        return sum(p.stat().st_size for p in self.files) or None  # a hub stream's size is unknown

    def count(self):
        """Rows in all, or None where finding out would mean reading the data (a hub stream
        without a row count in its card)."""
        if self._count is None:
            if self.hub:
                ds = self._hub()
                splits = getattr(ds.info, "splits", None) or {}
                self._count = getattr(splits.get(self.hf_split), "num_examples", None)
            else:
                self._count = sum(self._file_rows(p) for p in self.files)
        return self._count

    def _file_rows(self, p):
        if p.suffix == ".parquet":
            return parquet(p).metadata.num_rows
        with p.open("rb") as f:
            return sum(1 for line in f if line.strip())

    def docs(self):
        i = 0
        for text in self._texts():
            if text.strip():
                yield Doc(str(i), None, (Piece(t) for t in batched_rows([text])))
            i += 1

    def _texts(self) -> Iterator[str]:
        if self.hub:
            for row in self._hub():
                yield self._pick(row, f"hf:{self.hub}")
            return
        for p in self.files:
            if p.suffix == ".parquet":
                f = parquet(p)
                if self.column not in f.schema_arrow.names:
                    raise DataError(f"{p} has no column {self.column!r} (it has {', '.join(f.schema_arrow.names)}); "
                                    f"choose one with --hf_column")
                for batch in f.iter_batches(batch_size=1024, columns=[self.column]):  # bounded memory
                    yield from (t or "" for t in batch.column(0).to_pylist())
            else:
                with p.open(encoding="utf-8") as f:
                    for n, line in enumerate(f, 1):
                        if line.strip():
                            try:
                                row = json.loads(line)
                            except ValueError as e:
                                raise DataError(f"{p} line {n} is not JSON ({e})") from None
                            yield self._pick(row, f"{p} line {n}")

    def _pick(self, row, where):
        if not isinstance(row, dict) or self.column not in row:
            have = ", ".join(row) if isinstance(row, dict) else type(row).__name__
            raise DataError(f"{where} has no column {self.column!r} (it has {have}); choose one with --hf_column")
        t = row[self.column]
        if t is not None and not isinstance(t, str):
            raise DataError(f"{where}: column {self.column!r} holds {type(t).__name__}, not text; "
                            f"choose a text column with --hf_column")
        return t or ""

    def _hub(self):
        try:
            import datasets
        except ImportError:
            raise DataError("--dataset=hf:... needs the `datasets` library; run: pip install -e '.[hf]'") from None
        try:
            return datasets.load_dataset(self.hub, self.config, split=self.hf_split, streaming=True)
        except Exception as e:  # offline, no such dataset, a bad split or config: all mean "no data"
            msg = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
            raise DataError(f"cannot read hf:{self.hub} from the Hugging Face hub ({msg}); connect to the "
                            f"network and check the name (--hf_config, --hf_split), or download its Parquet "
                            f"files and pass --dataset='path/*.parquet'") from None


def parquet(p):
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError(f"reading {p} needs pyarrow; run: pip install -e '.[hf]'") from None
    try:
        return pq.ParquetFile(p)
    except Exception as e:  # pyarrow's ArrowInvalid and friends
        raise DataError(f"{p} is not a readable Parquet file ({e})") from None


def open_source(dataset: str, hf_column=None, hf_split=None, hf_config=None):
    """The source for a path, a glob of row files, or hf:OWNER/NAME."""
    if dataset.startswith("hf:") or Path(dataset).suffix in ROW_FILES or (
            glob.has_magic(dataset) and not Path(dataset).exists()):
        return Rows(dataset, hf_column, hf_split, hf_config)
    if Path(dataset).is_dir():
        return Folder(dataset)
    return TextFile(dataset)
