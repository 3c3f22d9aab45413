"""Corpora of any size and kind: streamed pieces, content-keyed folders a run can rely on, rows
from Parquet / JSON lines, the hub offline, and what training does with them (short splits
refused at setup, a subset of a big val split, bits per byte, resident data only where it fits)."""

import importlib
import json
import math
import os
from dataclasses import replace

import numpy as np
import pytest

import train
from data import BatchLoader, DataError, load_meta, prepare, sources, tokenizer_from_dict
from data.__main__ import main as data_main
from data.stream import ordered_map
from training.env import RunEnv
from training.evaluate import ValWindows, val_label

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

POEM = ("ROMEO:\nBut, soft! what light through yonder window breaks?\nIt is the east, and Juliet is the sun.\n\n"
        "JULIET:\nO Romeo, Romeo! wherefore art thou Romeo? Ünïcødé 😀\n\n") * 40


def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def tokens(d, split):
    return np.fromfile(d / f"{split}.bin", dtype=load_meta(d)["dtype"])


def decoded(d, split):
    return tokenizer_from_dict(load_meta(d)["tokenizer"]).decode(tokens(d, split).tolist())


# -----------------------------------------------------------------------------
# streaming: pieces, threads, bounded reading

@pytest.mark.parametrize("kind", ["char", "bpe"])
def test_small_pieces_on_two_threads_give_the_same_tokens(tmp_path, monkeypatch, kind):
    """Cut into pieces of 100 bytes (beside multi-byte characters) the text encodes as in one
    piece: pieces end where the tokenizers cut anyway, never inside a character."""
    src = write(tmp_path / "poem.txt", POEM)
    vocab = 300 if kind == "bpe" else None
    whole = prepare(src, kind, vocab_size=vocab, root=tmp_path / "a", quiet=True)
    use = tokenizer_from_dict(load_meta(whole)["tokenizer"]) if kind == "bpe" else None  # the same merges
    monkeypatch.setattr(sources, "PIECE", 100)
    small = prepare(src, kind, vocab_size=vocab, root=tmp_path / "b", quiet=True, use=use)
    for split in ("train", "val"):
        assert np.array_equal(tokens(whole, split), tokens(small, split))
    assert decoded(small, "train") + decoded(small, "val") == POEM


def test_ordered_map_keeps_order_and_reads_ahead_by_a_bounded_amount():
    taken = []

    def items():
        for i in range(100):
            taken.append(i)
            yield i
    for i, r in enumerate(ordered_map(lambda x: x * x, items(), threads=2)):
        assert r == i * i and len(taken) <= i + 1 + 4  # at most 2 a thread in flight


def test_a_killed_preparation_leaves_nothing_a_run_would_take(tmp_path, monkeypatch):
    src = write(tmp_path / "poem.txt", POEM)
    stream = importlib.import_module("data.stream")
    real = stream.encoder

    def dies_midway(tok):
        enc, calls = real(tok), []

        def encode(piece):
            calls.append(1)
            if len(calls) > 2:
                raise KeyboardInterrupt  # as Ctrl-C, or a kill, half-way through
            return enc(piece)
        return encode
    monkeypatch.setattr(importlib.import_module("data.prepare"), "encoder", dies_midway)
    monkeypatch.setattr(sources, "PIECE", 200)
    with pytest.raises(KeyboardInterrupt):
        prepare(src, root=tmp_path / "out", quiet=True)
    assert list((tmp_path / "out").glob("*/meta.json")) == []
    assert [p.name for p in (tmp_path / "out").iterdir() if p.is_dir()] == []  # its temp folder is gone
    # a temp folder of a process killed outright (kill -9) goes at the next preparation
    stale = tmp_path / "out" / f".poem-char-x.{os.uname().nodename.replace('.', '_')}.999999999.tmp"
    stale.mkdir()
    monkeypatch.undo()
    d = prepare(src, root=tmp_path / "out", quiet=True)
    assert not stale.exists() and [p for p in (tmp_path / "out").iterdir() if p.is_dir()] == [d]


def test_a_folder_of_one_file_splits_as_the_file(tmp_path):
    src = write(tmp_path / "one" / "poem.txt", POEM)
    d = prepare(tmp_path / "one", root=tmp_path / "out", quiet=True)
    n = int(len(POEM) * 0.9)
    assert decoded(d, "train") == POEM[:n] and decoded(d, "val") == POEM[n:]
    assert load_meta(d)["split"].startswith("one document") and src.exists()


def test_gpt2_puts_its_end_of_text_token_between_documents(tmp_path):
    """GPT-2's format offline: a byte-level vocabulary with no merges and <|endoftext|> as id 256,
    written as a Hugging Face folder's vocab.json / merges.txt."""
    from data.tokenizers import GPT2Tokenizer, gpt2_byte_decoder
    vocab = {c: b for c, b in gpt2_byte_decoder().items()} | {"<|endoftext|>": 256}
    write(tmp_path / "vocab.json", json.dumps(vocab))
    write(tmp_path / "merges.txt", "#version: 0.2\n")
    tok = GPT2Tokenizer.from_files(tmp_path / "vocab.json", tmp_path / "merges.txt")
    for i in range(10):
        write(tmp_path / "docs" / f"d{i}.txt", f"document {i}\n")
    d = prepare(tmp_path / "docs", "gpt2", root=tmp_path / "out", quiet=True, use=tok)
    meta = load_meta(d)
    assert meta["eot"] == 256 and tokens(d, "train").tolist().count(256) == 8  # 9 documents, 8 between
    assert decoded(d, "train").split("<|endoftext|>") == [f"document {i}\n" for i in range(10)
                                                          if f"d{i}.txt" not in meta["val_docs"]]


# -----------------------------------------------------------------------------
# keyed by content: never shared, never rewritten under a run

def test_same_named_files_prepare_apart_and_a_run_keeps_reading_its_own(tmp_path):
    a = write(tmp_path / "a" / "input.txt", "abcd" * 500)
    b = write(tmp_path / "b" / "input.txt", "wxyz" * 500)
    da = prepare(a, root=tmp_path / "data", quiet=True)
    loader = BatchLoader(da / "train.bin", block_size=8, batch_size=4, seed=0)
    first = loader.next_batch()[0]
    db = prepare(b, root=tmp_path / "data", quiet=True)
    assert da != db and da.name.startswith("input-char-") and db.name.startswith("input-char-")
    tok = tokenizer_from_dict(load_meta(da)["tokenizer"])
    for _ in range(5):  # the run on a goes on reading a's tokens, with a's vocabulary
        x, _ = loader.next_batch()
        assert set(tok.decode(x.flatten().tolist())) == set("abcd")
    assert set(tok.decode(first.flatten().tolist())) == set("abcd")
    assert prepare(a, root=tmp_path / "data", quiet=True) == da  # and a again is found, not redone


# -----------------------------------------------------------------------------
# rows: Parquet and JSON lines through one reader; the hub offline

ROWS = [{"id": i, "text": f"story {i}: " + "once upon a time " * (i % 7 + 1)} for i in range(30)]


def write_rows(tmp_path):
    pa, pq = pytest.importorskip("pyarrow"), pytest.importorskip("pyarrow.parquet")
    (tmp_path / "pq").mkdir()
    half = len(ROWS) // 2
    for name, rows in (("p1.parquet", ROWS[:half]), ("p2.parquet", ROWS[half:])):
        pq.write_table(pa.Table.from_pylist(rows), tmp_path / "pq" / name)
    write(tmp_path / "rows.jsonl", "".join(json.dumps(r) + "\n" for r in ROWS))


def test_parquet_and_json_lines_rows_are_documents(tmp_path, capsys):
    write_rows(tmp_path)
    pq = prepare(str(tmp_path / "pq" / "*.parquet"), root=tmp_path / "out", quiet=True)
    js = prepare(tmp_path / "rows.jsonl", root=tmp_path / "out", quiet=True)
    val = [int(i) for i in load_meta(pq)["val_docs"]]  # rows held out whole, the same draw for both
    assert len(val) == 3 and load_meta(js)["val_docs"] == load_meta(pq)["val_docs"]
    assert "3 of 30 for val" in load_meta(js)["split"]
    assert decoded(pq, "val") == decoded(js, "val") == "\n\n".join(ROWS[i]["text"] for i in sorted(val))
    assert decoded(pq, "train") == "\n\n".join(r["text"] for i, r in enumerate(ROWS) if i not in val)
    assert data_main(["prepare", f"--dataset={tmp_path / 'rows.jsonl'}", "--hf_column=body",
                      f"--root={tmp_path / 'out'}", "--quiet"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "no column 'body' (it has id, text)" in err and err.count("\n") == 1


def test_a_hub_dataset_offline_is_one_error_line(tmp_path, monkeypatch, capsys):
    for k, v in {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}.items():
        monkeypatch.setenv(k, v)  # before the import: the libraries read them once
    config = pytest.importorskip("datasets").config
    monkeypatch.setattr(config, "HF_HUB_OFFLINE", True)  # in case another test imported it first
    assert data_main(["prepare", "--dataset=hf:nobody/nothing", f"--root={tmp_path / 'out'}"]) == 1
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and err.startswith("error: cannot read hf:nobody/nothing")
    assert "--dataset='path/*.parquet'" in err
    assert data_main(["prepare", "--dataset=hf:nobody", f"--root={tmp_path / 'out'}"]) == 1
    assert "hf:OWNER/NAME" in capsys.readouterr().err


class FakeStream(list):
    """What datasets.load_dataset(..., streaming=True) gives, as far as Rows reads it: rows, and
    a card that may not know how many there are."""
    class info:
        splits = {}


def test_a_hub_stream_of_unknown_length_holds_out_rows_by_a_seeded_hash(tmp_path, monkeypatch):
    rows = FakeStream([{"text": f"row {i} " * 5} for i in range(200)] + [{"text": ""}])
    monkeypatch.setattr(sources.Rows, "_hub", lambda self: rows)
    d = prepare("hf:someone/stories", root=tmp_path, quiet=True)
    meta = load_meta(d)
    val = [int(i) for i in meta["val_docs"]]
    assert d.name.startswith("someone_stories-char-") and "seeded hash" in meta["split"]
    assert 5 <= len(val) <= 40 and decoded(d, "val") == "\n\n".join(rows[i]["text"] for i in val)
    assert prepare("hf:someone/stories", root=tmp_path, quiet=True) == d  # keyed by name: found again
    assert prepare("hf:someone/stories", root=tmp_path, quiet=True, hf_split="test") != d


# -----------------------------------------------------------------------------
# training on it

def run_train(tmp_path, text, *extra):
    src = write(tmp_path / "tiny.txt", text)
    return train.main(["cpu", f"--dataset={src}", f"--data_root={tmp_path / 'data'}",
                       f"--out_dir={tmp_path / 'out'}", *extra])


@pytest.mark.parametrize("full_val", ["true", "false"])
def test_a_split_too_short_for_block_size_is_refused_before_the_first_step(tmp_path, capsys, full_val):
    """499 characters with the CPU default (block_size 64, eval_at_start false): val has 50."""
    text = ("to be or not to be, that is the question\n" * 13)[:499]
    assert run_train(tmp_path, text, f"--eval_full_val={full_val}") == 1
    out, err = capsys.readouterr()
    assert err.count("error:") == 1 and "Traceback" not in err, err
    assert "the val split of" in err and "has 50 tokens, too few for one window of block_size+1 = 65" in err
    assert "--block_size=49 or less" in err
    assert "iter 0" not in out and not (tmp_path / "out" / "metrics.jsonl").exists()


def test_bits_per_byte_is_logged_beside_the_val_loss(tmp_path, capsys):
    text = "".join(f"línea {i}: {'ab' * (i % 5)} ünï\n" for i in range(3000))
    assert run_train(tmp_path, text, "--max_iters=2", "--eval_interval=2", "--n_layer=1", "--n_embd=32",
                     "--n_head=2", "--block_size=32", "--eval_iters=2") == 0
    out = capsys.readouterr().out
    meta = load_meta(next((tmp_path / "data").glob("tiny-char-*")))
    assert meta["val_bytes"] == len(text[int(len(text) * 0.9):].encode()) > meta["val_tokens"]
    ev = [json.loads(line) for line in (tmp_path / "out" / "metrics.jsonl").open() if '"eval"' in line][-1]
    assert ev["val_bpb"] == pytest.approx(ev["val_loss"] / math.log(2) * meta["val_tokens"] / meta["val_bytes"])
    assert f"val loss {ev['val_loss']:.4f}, {ev['val_bpb']:.4f} bits/byte" in out
    assert "this run trains on 768 tokens, " in out  # 2 steps x 12 x 32, against the split's


def test_a_big_val_split_is_evaluated_on_a_fixed_seeded_subset(tmp_path):
    src = write(tmp_path / "t.txt", "".join(chr(97 + i % 26) for i in range(20_000)))
    d = prepare(src, root=tmp_path, quiet=True)
    cfg = train.TrainConfig(block_size=16, batch_size=4, eval_val_tokens=320, seed=1)
    env = RunEnv(__import__("torch").device("cpu"), __import__("torch").float32, False)
    w = ValWindows(d, load_meta(d), cfg, env)
    assert (w.count, w.total) == (20, (2000 - 1) // 16)
    assert val_label(w, cfg, env) == "a seeded subset of 320 of the 1,984 val tokens"
    again = ValWindows(d, load_meta(d), cfg, env)
    assert (w.x == again.x).all() and (w.y[:w.count, :-1] == w.x[:w.count, 1:]).all()
    every = ValWindows(d, load_meta(d), replace(cfg, eval_val_tokens=0), env)
    assert every.count == every.total and val_label(every, cfg, env).startswith("all 1,984 val tokens")
    with pytest.raises(DataError, match="val split of .* has 2,000 tokens, too few .* = 2049"):
        ValWindows(d, load_meta(d), replace(cfg, block_size=2048), env)  # no windows: an error, not 1/0


def test_resident_data_only_where_it_fits(tmp_path, monkeypatch, capsys):
    src = write(tmp_path / "t.txt", "abc" * 2000)
    d = prepare(src, root=tmp_path, quiet=True)
    state = importlib.import_module("training.state")
    env = RunEnv(__import__("torch").device("cpu"), __import__("torch").float32, False)
    cfg = train.TrainConfig(block_size=16, batch_size=4, data_on_device=True)
    assert state.train_streams(d, cfg, env, [0])[0].tokens is not None
    monkeypatch.setattr(importlib.import_module("data.loader"), "free_memory", lambda device: 1000)
    assert state.train_streams(d, cfg, env, [0])[0].tokens is None  # 43 kB of int64 > a quarter of 1 kB
    assert "warning: data_on_device: the train split (0.00 GB as int64" in capsys.readouterr().err
    assert state.train_streams(d, replace(cfg, data_on_device=None), env, [0])[0].tokens is None
    assert capsys.readouterr().err == ""  # unset: chosen quietly
