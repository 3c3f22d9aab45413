"""
The per-piece work of a preparation (scan, encode) and a map that runs it on every core.

Threads, not processes: tiktoken's encoder and numpy's gathers release the GIL, so threads keep
all cores busy with no copying of pieces or tokenizers between processes, and no fork of a
process that may hold torch's threads.
"""

import os
import sys
from collections import deque
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from tqdm import tqdm

MAX_CODEPOINT = 0x110000


def workers() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS
        return os.cpu_count() or 1


def ordered_map(fn, items, threads=None):
    """fn(item) for every item, results in order, with at most 2 per thread in flight: the items
    are read no faster than they are used, so memory stays bounded whatever the corpus's size."""
    threads = threads or workers()
    if threads == 1:
        yield from map(fn, items)
        return
    with ThreadPoolExecutor(threads) as pool:
        pending = deque()
        for item in items:
            pending.append(pool.submit(fn, item))
            if len(pending) >= 2 * threads:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def bar(desc, total, quiet, unit="B"):
    """Bytes, MB/s and an ETA; only on a terminal (in a log file its \\r frames pile up on one
    line) and only when the work is big enough to wait for."""
    show = not quiet and sys.stderr.isatty() and (total is None or total >= 1 << 20)
    return tqdm(desc=desc, total=total, unit=unit, unit_scale=unit == "B", unit_divisor=1000, disable=not show)


def scan(piece):
    """(the piece's distinct characters, its character count, whether it holds any non-space)."""
    b = piece.data
    if isinstance(b, bytes) and b.isascii() and b"\x00" not in b:  # most text: no decoding needed
        codes = np.flatnonzero(np.bincount(np.frombuffer(b, np.uint8), minlength=128))
        return {chr(c) for c in codes}, len(b), bool(b.strip())
    t = piece.text()
    return set(t), len(t), bool(t.strip())


def encoder(tok):
    """encode(piece) -> (token ids, characters) for tok. The char tokenizer gathers from a table
    of every code point (numpy, no Python loop per character); the others are tiktoken's."""
    if tok.kind != "char":
        def encode(piece):
            t = piece.text()
            return np.asarray(tok.encode(t), dtype=np.int64), len(t)
        return encode
    table = np.full(MAX_CODEPOINT, -1, dtype=np.int32)
    table[[ord(c) for c in tok.chars]] = np.arange(tok.vocab_size)

    def encode(piece):
        b = piece.data
        if isinstance(b, bytes) and b.isascii() and b"\x00" not in b:
            ids = table[np.frombuffer(b, np.uint8)]
        else:
            ids = table[np.frombuffer(piece.text().encode("utf-32-le"), np.uint32)]
        if (ids < 0).any():
            tok.encode(piece.text())  # raises the DataError naming the unknown characters
        return ids, len(ids)
    return encode
