"""
prepare(): a corpus -> tokens in train.bin / val.bin, streamed in bounded memory.

    data/prepared/<name>-<tokenizer>[-<vocab_size>]-<key>/
        train.bin, val.bin   flat token ids, uint16 while the vocab fits (<= 65536), else uint32
        meta.json            dataset, source, split, the text's sha256, sizes (tokens, characters,
                             bytes: bits per byte needs them), dtype and the tokenizer's to_dict():
                             everything needed to read the bins and decode; its "request" records
                             what was asked for, and for bpe the library that trained it

<key> hashes the text's content (data/fingerprint.py) and the request: two corpora never share a
folder, whatever their names, and the same corpus asked for again is found and reused. A folder
is written under a temporary name and renamed into place whole, so it never changes under a run
reading it, and a killed preparation leaves nothing that passes for a prepared dataset.

Splits:
- one document (a .txt file): the first 90% of its characters train, the rest val (nanoGPT's)
- documents whose source splits them (the built-in plays): as given
- many documents (a folder, rows): whole documents held out for val, about 10%, a seeded draw

Passes over the corpus, a few MB at a time on every core (data/stream.py):
1. scan, for the char tokenizer or a single document: the characters, and how many
2. bpe only: train it on a seeded sample of the train split, at most bpe_sample_mb
3. encode, writing tokens as they come; documents joined by the tokenizer's end-of-text token,
   or, where it has none (char), by the source's separator text
"""

import hashlib
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np

from common.errors import DataError
from common.files import atomic_write, clean_stale_temp_files, temp_name
from .corpora import load_corpus
from .fingerprint import Fingerprints
from .sources import Piece, Texts
from .stream import bar, encoder, ordered_map, scan
from .tokenizers import KINDS, bpe_trainer, check_bpe_vocab, check_kind

FORMAT = 3  # bump when the layout, a split rule or BPE training changes: old preparations are redone
DEFAULT_DATASET = "shakespeare"
DEFAULT_ROOT = Path(__file__).parent / "prepared"
DEFAULT_BPE_VOCAB = 2048
DEFAULT_BPE_SAMPLE_MB = 64
VAL_FRACTION = 0.1
SEED = 1337  # the val documents' draw and the BPE's sample
DTYPES = {"uint16": np.uint16, "uint32": np.uint32}
META_KEYS = ("dataset", "tokenizer", "vocab_size", "dtype", "train_tokens", "val_tokens",
             "source", "sha256", "split")


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


def is_complete(out, key):
    """True if out holds this exact preparation (same text, request and format), whole."""
    try:
        meta = load_meta(out)
        return (meta.get("format") == FORMAT and meta.get("key") == key
                and all((out / f"{s}.bin").stat().st_size ==
                        meta[f"{s}_tokens"] * np.dtype(meta["dtype"]).itemsize for s in ("train", "val")))
    except (DataError, OSError, KeyError, TypeError):
        return False


def prepare(dataset=DEFAULT_DATASET, tokenizer="char", *, vocab_size=None, source=None, root=None,
            force=False, quiet=False, dtype=None, use=None, bpe_sample_mb=DEFAULT_BPE_SAMPLE_MB,
            hf_column=None, hf_split=None, hf_config=None):
    """Prepare a dataset (a name, a path to a .txt file / folder / Parquet or JSON-lines files, or
    hf:OWNER/NAME) and return its folder. use: a ready tokenizer of that kind to encode with,
    instead of training one (a pretrained model's, which must read the text as it was trained to)."""
    log = (lambda *a: None) if quiet else (lambda *a: print(*a, file=sys.stderr))
    # check the cheap things before reading or downloading anything
    check_kind(tokenizer)
    if tokenizer == "bpe":
        vocab_size = DEFAULT_BPE_VOCAB if vocab_size is None else vocab_size
        check_bpe_vocab(vocab_size)
        if not (isinstance(bpe_sample_mb, int) and bpe_sample_mb >= 1):
            raise DataError(f"--bpe_sample_mb={bpe_sample_mb} must be a whole number of MB, at least 1")
    elif vocab_size is not None:
        raise DataError(f"--tokenizer_vocab_size only applies to --tokenizer=bpe (the {tokenizer} "
                        f"vocabulary is fixed)")
    if dtype is not None:
        pick_dtype(0, dtype)
    if use is not None and use.kind != tokenizer:
        raise DataError(f"a {use.kind} tokenizer was given for --tokenizer={tokenizer}")
    root = Path(root) if root is not None else DEFAULT_ROOT
    check_folder(root, "the data root", write=False)  # a read-only root may hold what is asked for
    src = load_corpus(str(dataset), source, cache_dir=root / "downloads", hf_column=hf_column,
                      hf_split=hf_split, hf_config=hf_config)
    request = {"tokenizer": tokenizer, "vocab_size": vocab_size, "dtype": dtype}
    if tokenizer == "bpe":  # another rustbpe may merge differently: a new version redoes the work
        request.update(trainer=bpe_trainer(), sample_mb=bpe_sample_mb)
    if use is not None and use.to_dict() != {"kind": tokenizer}:  # it brings its own vocabulary
        request["vocab"] = hashlib.sha256(json.dumps(use.to_dict(), sort_keys=True).encode()).hexdigest()

    fingerprints = Fingerprints(root)
    sha = fingerprints.key(src)
    key = hashlib.sha256(json.dumps([FORMAT, sha, request], sort_keys=True).encode()).hexdigest()
    out = root / (f"{src.name}-{tokenizer}" + (f"-{vocab_size}" if tokenizer == "bpe" else "") + f"-{key[:12]}")
    if not force and is_complete(out, key):
        fingerprints.save()
        log(f"{out} is already prepared (pass force=True / --force to redo it)")
        return out
    src.count()  # a hub dataset's first contact: offline, its one error line comes before any output
    check_folder(out, "the dataset's folder")  # before the work, not after it
    try:
        root.mkdir(parents=True, exist_ok=True)
        clean_stale_temp_files(root)  # folders of preparations that were killed
        tmp = temp_name(out)
        tmp.mkdir()
    except OSError as e:  # what check_folder cannot foresee: a read-only disk, a full one, a race
        raise DataError(f"cannot create a folder in {root}: {e.strerror or e}; choose another "
                        f"--data_root") from None
    try:
        log(f"preparing {src.name} ({src.where}) with the {tokenizer} tokenizer")
        meta = write_splits(src, tokenizer, tmp, vocab_size=vocab_size, dtype=dtype, use=use,
                            sample_mb=bpe_sample_mb, quiet=quiet, log=log)
        meta = {"format": FORMAT, "key": key, "dataset": src.name, "source": src.where, "sha256": sha,
                **meta, "request": request}
        atomic_write(tmp / "meta.json", json.dumps(meta, indent=1, ensure_ascii=False).encode("utf-8"))
        publish(tmp, out, None if force else key)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    fingerprints.save()
    return out


def publish(tmp, out, key):
    """Rename the finished folder into place. One already there is kept if it is complete (another
    process just did the same work: key given, so not a forced redo); else (forced, or damaged
    since) it is moved aside first, then removed: its files stay readable to a run that has them
    open."""
    try:
        os.rename(tmp, out)
        return
    except OSError:
        if not out.exists():
            raise
    if key is not None and is_complete(out, key):
        return
    old = out.with_name(f"{temp_name(out).name[:-4]}.old.tmp")
    os.rename(out, old)
    os.rename(tmp, out)
    shutil.rmtree(old, ignore_errors=True)


# -----------------------------------------------------------------------------
# the passes

class Splits:
    """Which split each document goes to (module docstring), and the val documents' names."""

    def __init__(self, src):
        self.given = isinstance(src, Texts)
        n = None if self.given else src.count()
        self.single = n == 1
        self.n = n
        self.reset()
        if n and n > 1:
            k = min(n - 1, max(1, round(n * VAL_FRACTION)))
            self.val = set(np.random.default_rng(SEED).choice(n, k, replace=False).tolist())

    def reset(self):
        self.docs, self.val_names = {"train": 0, "val": 0}, []

    def of(self, i, doc):
        if self.given:
            return doc.split
        if self.n is None:  # a stream of unknown length: a seeded hash of the index draws
            h = int.from_bytes(hashlib.sha256(f"{SEED}/{i}".encode()).digest()[:8], "little")
            return "val" if h < VAL_FRACTION * 2 ** 64 else "train"
        return "val" if i in self.val else "train"

    def words(self, src):
        if self.given or self.single:
            return src.split_words
        how = "a seeded draw" if self.n else "a seeded hash of each row's index"
        return (f"whole documents held out: {self.docs['val']:,} of {sum(self.docs.values()):,} for val "
                f"(about {VAL_FRACTION:.0%}, {how}, seed {SEED})")


def units(src, splits, sep, counts=None, n_train=None):
    """(split, Piece) in corpus order: every piece, and a separator between the documents of a
    split (a token id, or text). counts/n_train: a single document's pieces' character counts
    from the scan, and where its train part ends."""
    seen = set()
    for i, doc in enumerate(src.docs()):
        if splits.single:
            done = 0
            for p, k in zip(doc.pieces, counts):
                if done + k <= n_train:
                    yield "train", p
                elif done >= n_train:
                    yield "val", p
                else:  # the piece the split falls in: cut it at that character
                    t = p.text()
                    yield "train", Piece(t[:n_train - done])
                    yield "val", Piece(t[n_train - done:])
                done += k
            continue
        split = splits.of(i, doc)
        splits.docs[split] += 1
        if split == "val" and len(splits.val_names) < 1000:
            splits.val_names.append(doc.name)
        if split in seen and sep is not None:
            yield split, sep
        seen.add(split)
        yield from ((split, p) for p in doc.pieces)


def write_splits(src, kind, out, *, vocab_size, dtype, use, sample_mb, quiet, log):
    """The passes; writes out/train.bin and out/val.bin and returns the meta.json fields."""
    splits = Splits(src)
    total = src.nbytes()
    chars, counts, n_train = None, None, None
    if (kind == "char" and use is None) or splits.single:  # pass 1: scan
        chars, counts, any_text = set(), [], False
        with bar("scanning", total, quiet) as b:
            for doc in src.docs():
                for (cs, k, text), p in ordered_map(lambda p: (scan(p), p), doc.pieces):
                    chars |= cs
                    counts.append(k)
                    any_text |= text
                    b.update(p.nbytes())
        if splits.single:
            if not any_text:
                raise DataError(f"{src.where} is empty; give a text file with something in it")
            n_train = int(sum(counts) * (1 - VAL_FRACTION))  # nanoGPT's split, in characters
        chars |= set(src.sep)
    multi = not splits.single
    if use is not None:
        tok = use
    elif kind == "char":  # vocab from the whole text, as nanoGPT, so val has no unknown chars
        tok = KINDS["char"](chars)
    elif kind == "bpe":  # trained on train only: val stays unseen
        tok = train_bpe(src, splits, counts, n_train, vocab_size, sample_mb, multi, total, quiet, log)
    else:
        tok = KINDS[kind].train("")
    dt = pick_dtype(tok.vocab_size, dtype)
    sep = (tok.eot if tok.eot is not None else Piece(src.sep)) if multi else None

    encode = encoder(tok)
    sizes = {s: {"tokens": 0, "chars": 0, "bytes": 0} for s in ("train", "val")}

    def work(unit):
        split, p = unit
        if isinstance(p, int):  # the end-of-text token: no characters, no bytes of text
            return split, np.array([p]), 0, 0
        ids, n = encode(p)
        return split, ids, n, p.nbytes()

    with open(out / "train.bin", "wb") as train_f, open(out / "val.bin", "wb") as val_f, \
            bar("tokenizing", total, quiet) as b:
        files = {"train": train_f, "val": val_f}
        for split, ids, n, nbytes in ordered_map(work, units(src, splits, sep, counts, n_train)):
            ids.astype(DTYPES[dt]).tofile(files[split])
            s = sizes[split]
            s["tokens"], s["chars"], s["bytes"] = s["tokens"] + len(ids), s["chars"] + n, s["bytes"] + nbytes
            b.update(nbytes)
        for f in files.values():
            f.flush()
            os.fsync(f.fileno())
    for s in ("train", "val"):
        if sizes[s]["tokens"] == 0:
            raise DataError(f"the {s} split of {src.name} is empty; the text is too short "
                            f"({sizes['train']['chars'] + sizes['val']['chars']} characters), give more text")
    meta = {"split": splits.words(src)}
    if multi and not splits.given:
        meta["val_docs"] = splits.val_names  # the first 1000
    for s in ("train", "val"):
        meta.update({f"{s}_tokens": sizes[s]["tokens"], f"{s}_chars": sizes[s]["chars"],
                     f"{s}_bytes": sizes[s]["bytes"]})
    meta.update(vocab_size=tok.vocab_size, dtype=dt, eot=tok.eot if multi else None, tokenizer=tok.to_dict())
    return meta


def train_bpe(src, splits, counts, n_train, vocab_size, sample_mb, eot, total, quiet, log):
    """A BPE trained on a seeded sample of the train split's pieces, at most sample_mb: each
    piece is taken with the probability that fills the sample; all of them from a smaller corpus."""
    limit = sample_mb * 10 ** 6
    expect = total * (1 - VAL_FRACTION) if total else None
    p_take = 1.0 if expect is None or expect <= limit else limit / expect
    rng = np.random.default_rng(SEED)
    sample, size = [], 0
    with bar("sampling", total, quiet) as b:
        for split, p in units(src, splits, None, counts, n_train):
            b.update(p.nbytes() if isinstance(p, Piece) else 0)
            if split != "train" or not isinstance(p, Piece) or (p_take < 1 and rng.random() >= p_take):
                continue
            sample.append(p.text())
            size += len(sample[-1])
            if size >= limit:
                break
    splits.reset()  # the encode pass counts them again
    log(f"training a {vocab_size}-token BPE on {size:,} characters"
        + (f" (a seeded sample of the train split, at most {sample_mb} MB)" if p_take < 1 else ""))
    t0 = time.perf_counter()
    with bar("training bpe", None, quiet, unit="merge") as b:
        def progress(done, total):
            b.total = total
            b.update(done - b.n)  # update(), not refresh(): it keeps tqdm's frame rate
        tok = KINDS["bpe"].train(sample, vocab_size, progress=None if b.disable else progress, eot=eot)
    log(f"trained the BPE in {time.perf_counter() - t0:.1f}s")
    if tok.vocab_size < vocab_size:
        log(f"note: the text only supports {tok.vocab_size - 256 - eot} merges: the vocab is {tok.vocab_size}")
    return tok
