"""Tokenizers: exact round trips, JSON-safe to_dict, rebuild from dict, clear errors. No network."""

import io
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from data import BPETokenizer, CharTokenizer, DataError, GPT2Tokenizer, tokenizer_from_dict
from data import tokenizers

TEXT = ("First Citizen:\nBefore we proceed any further, hear me speak.\n\n"
        "All:\nSpeak, speak.\n\n" * 20 + "Ünïcødé, emoji 😀, tabs\tand CRLF\r\n<|endoftext|>\n")
UNSEEN = "Zebras qué? 漢字 \x00 \r\n\n\n   trailing spaces   \U0001F600<|endoftext|>"


def rebuilt(tok):
    """to_dict -> JSON -> torch.save/load(weights_only=True) -> tokenizer_from_dict."""
    d = json.loads(json.dumps(tok.to_dict()))
    buf = io.BytesIO()
    torch.save({"tokenizer": d}, buf)
    buf.seek(0)
    return tokenizer_from_dict(torch.load(buf, weights_only=True)["tokenizer"])


def test_char_round_trip_and_vocab():
    tok = CharTokenizer.train(TEXT)
    assert tok.kind == "char" and tok.vocab_size == len(set(TEXT))
    assert list(tok.chars) == sorted(set(TEXT))  # ids ordered by code point, as nanoGPT
    ids = tok.encode(TEXT)
    assert tok.decode(ids) == TEXT and max(ids) == tok.vocab_size - 1
    tok2 = rebuilt(tok)
    assert tok2.encode(TEXT) == ids and tok2.vocab_size == tok.vocab_size


def test_char_unknown_characters_named():
    tok = CharTokenizer.train("abc \n")
    with pytest.raises(DataError, match=r"not in the vocabulary: 'é', '€'"):
        tok.encode("abé€ é")


def test_bpe_round_trip_exact():
    tok = BPETokenizer.train(TEXT, 300)
    assert tok.kind == "bpe" and 256 < tok.vocab_size <= 300
    for s in (TEXT, UNSEEN, "", "a"):
        ids = tok.encode(s)
        assert all(0 <= i < tok.vocab_size for i in ids)
        assert tok.decode(ids) == s
    assert len(tok.encode(TEXT)) < len(TEXT.encode("utf-8"))  # it did learn merges
    tok2 = rebuilt(tok)
    assert tok2.encode(TEXT) == tok.encode(TEXT) and tok2.decode(tok.encode(UNSEEN)) == UNSEEN
    # to_dict is plain JSON: str / list of str, no bytes
    d = tok.to_dict()
    assert d["kind"] == "bpe" and isinstance(d["pattern"], str) and all(isinstance(r, str) for r in d["ranks"])


def test_bpe_training_is_deterministic():
    assert BPETokenizer.train(TEXT, 280).to_dict() == BPETokenizer.train(TEXT, 280).to_dict()


@pytest.mark.parametrize("bad", [0, 100, 256, 259, 10**9, "2048", 2048.0, True])
def test_bpe_vocab_size_out_of_range(bad):
    with pytest.raises(DataError, match="vocab_size"):
        BPETokenizer.train(TEXT, bad)


def test_gpt2_round_trip():
    if not tokenizers.gpt2_cached():
        pytest.skip(f"tiktoken's gpt2 files are not cached in {tokenizers.gpt2_cache_dir()} (needs a network once)")
    tok = GPT2Tokenizer()
    assert tok.vocab_size == 50257
    for s in (TEXT, UNSEEN):
        assert tok.decode(tok.encode(s)) == s
    assert rebuilt(tok).encode(TEXT) == tok.encode(TEXT)
    assert tok.encode("<|endoftext|>") != [50256]  # special tokens are ordinary text here


def test_gpt2_offline_is_a_clear_error(tmp_path, monkeypatch):
    # an empty cache and unreachable (local, missing) URLs: must fail fast, without the network
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(tokenizers, "GPT2_FILES", {(tmp_path / "nope.bpe").as_uri(): "0" * 64})
    with pytest.raises(DataError, match="needs a network the first time.*TIKTOKEN_CACHE_DIR"):
        GPT2Tokenizer()
    with pytest.raises(DataError, match="needs a network"):
        tokenizer_from_dict({"kind": "gpt2"})
    assert not any((tmp_path / "cache").glob("*"))  # nothing half-written in the cache


@pytest.mark.parametrize("d", [None, {}, {"kind": "word"}, "char", {"kind": "char"},
                               {"kind": "bpe", "pattern": ".", "ranks": ["!!!"]},
                               {"kind": "bpe", "pattern": ".", "ranks": ["YQ=="]},  # lacks the 256 bytes
                               {"kind": "bpe", "ranks": []}])
def test_tokenizer_from_dict_rejects_junk(d):
    with pytest.raises(DataError):
        tokenizer_from_dict(d)


def test_bpe_training_reports_its_merges():
    calls = []
    BPETokenizer.train(TEXT, 300, progress=lambda done, total: calls.append((done, total)))
    assert calls[0] == (0, 300 - 256) and calls[-1] == (44, 44)
    assert [d for d, _ in calls] == sorted(d for d, _ in calls)
    calls.clear()  # a text that runs out of pairs early: the bar still ends full, at fewer merges
    tok = BPETokenizer.train("abcabc abd\n" * 5, 300, progress=lambda done, total: calls.append((done, total)))
    assert calls[0] == (0, 44) and calls[-1] == (tok.vocab_size - 256,) * 2 and tok.vocab_size < 270


def test_rustbpe_log_lines_go_to_the_bar_only(caplog):
    log = logging.getLogger("rustbpe")
    log.setLevel(logging.WARNING)  # as a user who silenced it would have it
    try:
        before = (log.level, log.propagate, list(log.handlers))
        caplog.set_level(logging.DEBUG)  # the root logger takes everything: none of it may be rustbpe's
        BPETokenizer.train(TEXT, 280, progress=lambda done, total: None)
        BPETokenizer.train(TEXT, 280)
        assert not [r for r in caplog.records if r.name == "rustbpe"]
        assert (log.level, log.propagate, list(log.handlers)) == before
    finally:
        log.setLevel(logging.NOTSET)


def test_a_quiet_bpe_training_does_not_mute_a_later_bar():
    # pyo3-log remembers the first answer to "is INFO on for rustbpe?": a fresh process shows it
    code = ("from data import BPETokenizer\n"
            f"BPETokenizer.train({TEXT!r}, 280)\n"
            "calls = []\n"
            f"BPETokenizer.train({TEXT!r}, 280, progress=lambda d, t: calls.append(d))\n"
            "assert calls, 'no progress after a quiet training'\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       cwd=Path(__file__).parents[1], env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr
