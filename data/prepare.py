"""
prepare(): raw text -> tokenizer -> train.bin, val.bin, meta.json in one folder.

    data/prepared/<name>-<tokenizer>[-<vocab_size>]/
        train.bin, val.bin   flat token ids, uint16 while the vocab fits (<= 65536), else uint32
        meta.json            dataset, source, split, sha256 of the raw text, sizes, dtype and the
                             tokenizer's to_dict(): everything needed to read the bins and decode;
                             its "request" records what was asked for, and for bpe the library
                             that trained it ("trainer": "rustbpe==0.1.0")

Every file is written to a temp name and renamed, and meta.json is written last, so its presence
means "complete": an interrupted run leaves no folder that passes for a prepared dataset.
Calling prepare() again with the same request, the same BPE trainer version and unchanged text
returns at once; anything else prepares it again.
"""

import hashlib
import json
import os
import re
import sys
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from common.errors import DataError
from common.files import atomic_write
from .corpora import load_corpus
from .tokenizers import KINDS, bpe_trainer, check_bpe_vocab, check_kind

FORMAT = 2  # bump when the layout, a split rule or BPE training changes: old preparations are redone
DEFAULT_DATASET = "shakespeare"
DEFAULT_ROOT = Path(__file__).parent / "prepared"
DEFAULT_BPE_VOCAB = 2048
DTYPES = {"uint16": np.uint16, "uint32": np.uint32}
META_KEYS = ("dataset", "tokenizer", "vocab_size", "dtype", "train_tokens", "val_tokens",
             "source", "sha256", "split")


def pieces(text, size=1 << 20):
    """Cut text into ~size pieces after a run of blank lines, where the tokenizers' split patterns
    cut anyway, so pieces encode (all but always) as the whole text would, and a bar can tick."""
    i = 0
    while i < len(text):
        m = re.compile(r"\n\n+").search(text, i + size)
        j = m.end() if m else len(text)
        yield text[i:j]
        i = j


def show_bar(quiet, text):
    """A bar only when it takes a while, and only on a terminal: in a log file (stderr
    redirected) its \r frames would pile up on one line (train.py's bar follows the same rule)."""
    return not quiet and len(text) >= 1 << 20 and sys.stderr.isatty()


def encode(tok, text, desc, quiet):
    bar = tqdm(total=len(text), desc=desc, unit="char", unit_scale=True, disable=not show_bar(quiet, text))
    out = []
    for p in pieces(text):
        out.append(np.array(tok.encode(p), dtype=np.int64))
        bar.update(len(p))
    bar.close()
    return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)


def pick_dtype(vocab_size, dtype=None):
    if dtype is None:
        return "uint16" if vocab_size <= 1 << 16 else "uint32"
    if dtype not in DTYPES:
        raise DataError(f"unknown dtype {dtype!r}; choose uint16 or uint32")
    if vocab_size > np.iinfo(DTYPES[dtype]).max + 1:
        raise DataError(f"a vocabulary of {vocab_size} tokens does not fit in {dtype} "
                        f"(at most {np.iinfo(DTYPES[dtype]).max + 1}); use uint32 or leave dtype unset")
    return dtype


def load_meta(dir):
    """meta.json of a prepared dataset (dir, or any file in it) as a dict, or a clear DataError."""
    dir = Path(dir)
    if dir.suffix in (".bin", ".json") or dir.is_file():  # a file in the folder: use its folder
        dir = dir.parent
    path = dir / "meta.json"
    if not path.exists():
        raise DataError(f"{path} not found; prepare the dataset first, e.g. python -m data prepare")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
        missing = [k for k in META_KEYS if k not in meta]
    except (ValueError, TypeError) as e:
        raise DataError(f"{path} is corrupt ({e}); prepare again with --force") from None
    if missing:
        raise DataError(f"{path} lacks {', '.join(missing)}; prepare again with --force")
    return meta


def check_folder(path, what, write=True):
    """A DataError now, not a traceback after minutes of downloading or training, if path is
    not a folder (we can write in, if write), nor could be made one. Creates nothing."""
    p = path
    while not p.exists() and p != p.parent:  # the nearest part of path that exists decides
        p = p.parent
    if not p.is_dir():
        blame = "it is a file" if p == path else f"{p} is a file"
        raise DataError(f"cannot use {path} as {what}: {blame}, not a folder; choose another "
                        f"--data_root (or move the file away)")
    if write and not os.access(p, os.W_OK | os.X_OK):
        raise DataError(f"cannot use {path} as {what}: {p} is not writable (permission denied); "
                        f"choose another --data_root")


def is_complete(out, corpus, request):
    """True if out already holds this exact preparation (same text, request and format)."""
    try:
        meta = load_meta(out)
        return (meta.get("format") == FORMAT and meta["sha256"] == corpus.sha256
                and meta["dataset"] == corpus.name and meta.get("request") == request
                and all((out / f"{s}.bin").stat().st_size ==
                        meta[f"{s}_tokens"] * np.dtype(meta["dtype"]).itemsize for s in ("train", "val")))
    except (DataError, OSError, KeyError, TypeError):
        return False


def prepare(dataset=DEFAULT_DATASET, tokenizer="char", *, vocab_size=None, source=None, root=None,
            force=False, quiet=False, dtype=None, use=None):
    """Prepare a dataset (a name, or a path to a .txt file / folder) and return its folder.
    use: a ready tokenizer of that kind to encode with, instead of training one (a pretrained
    model's, which must read the text exactly as it was trained to)."""
    log = (lambda *a: None) if quiet else (lambda *a: print(*a, file=sys.stderr))
    # check the cheap things before reading or downloading anything
    check_kind(tokenizer)
    if tokenizer == "bpe":
        vocab_size = DEFAULT_BPE_VOCAB if vocab_size is None else vocab_size
        check_bpe_vocab(vocab_size)
    elif vocab_size is not None:
        raise DataError(f"--tokenizer_vocab_size only applies to --tokenizer=bpe (the {tokenizer} "
                        f"vocabulary is fixed)")
    if dtype is not None:
        pick_dtype(0, dtype)
    root = Path(root) if root is not None else DEFAULT_ROOT
    check_folder(root, "the data root", write=False)  # a read-only root may hold what is asked for
    corpus = load_corpus(str(dataset), source, cache_dir=root / "downloads")
    out = root / (f"{corpus.name}-{tokenizer}" + (f"-{vocab_size}" if tokenizer == "bpe" else ""))
    request = {"tokenizer": tokenizer, "vocab_size": vocab_size, "dtype": dtype}
    if tokenizer == "bpe":  # another rustbpe may merge differently: a new version redoes the work
        request["trainer"] = bpe_trainer()
    if use is not None and use.kind != tokenizer:
        raise DataError(f"a {use.kind} tokenizer was given for --tokenizer={tokenizer}")
    if use is not None and use.to_dict() != {"kind": tokenizer}:  # it brings its own vocabulary
        request["vocab"] = hashlib.sha256(json.dumps(use.to_dict(), sort_keys=True).encode()).hexdigest()
    if not force and is_complete(out, corpus, request):
        log(f"{out} is already prepared (pass force=True / --force to redo it)")
        return out
    check_folder(out, "the dataset's folder")  # before the work, not after it

    log(f"preparing {corpus.name} ({corpus.source}) with the {tokenizer} tokenizer")
    if use is not None:
        tok = use
    elif tokenizer == "char":  # vocab from the whole text, as nanoGPT, so val has no unknown chars
        tok = KINDS["char"].train(corpus.train + corpus.val)
    elif tokenizer == "bpe":  # trained on train only: val stays unseen
        log(f"training a {vocab_size}-token BPE on {len(corpus.train):,} characters")
        t0 = time.perf_counter()
        with tqdm(desc="training bpe", unit="merge", disable=not show_bar(quiet, corpus.train)) as bar:
            def progress(done, total):
                bar.total = total
                bar.update(done - bar.n)  # update(), not refresh(): it keeps tqdm's frame rate
            tok = KINDS["bpe"].train(corpus.train, vocab_size, progress=None if bar.disable else progress)
        log(f"trained the BPE in {time.perf_counter() - t0:.1f}s")
        if tok.vocab_size < vocab_size:
            log(f"note: the text only supports {tok.vocab_size - 256} merges: the vocab is {tok.vocab_size}")
    else:
        tok = KINDS[tokenizer].train(corpus.train)
    dt = pick_dtype(tok.vocab_size, dtype)
    ids = {s: encode(tok, text, f"tokenizing {s}", quiet)
           for s, text in (("train", corpus.train), ("val", corpus.val))}
    for s, a in ids.items():
        if len(a) == 0:
            raise DataError(f"the {s} split of {corpus.name} is empty; the text is too short "
                            f"({len(corpus.train) + len(corpus.val)} characters), give more text")

    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:  # what check_folder cannot foresee: a read-only disk, a full one, a race
        raise DataError(f"cannot create the folder {out}: {e.strerror or e}; choose another "
                        f"--data_root") from None
    (out / "meta.json").unlink(missing_ok=True)  # a stale meta must not vouch for new bins
    for s, a in ids.items():
        atomic_write(out / f"{s}.bin", a.astype(DTYPES[dt]).tobytes())
    meta = {"format": FORMAT, "dataset": corpus.name, "source": corpus.source, "split": corpus.split,
            "sha256": corpus.sha256, "train_chars": len(corpus.train), "val_chars": len(corpus.val),
            "train_tokens": len(ids["train"]), "val_tokens": len(ids["val"]),
            "vocab_size": tok.vocab_size, "dtype": dt, "request": request, "tokenizer": tok.to_dict()}
    atomic_write(out / "meta.json", json.dumps(meta, indent=1, ensure_ascii=False).encode("utf-8"))
    return out
