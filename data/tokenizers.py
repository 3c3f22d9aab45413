"""
Tokenizers that travel with the model: to_dict() is plain JSON (str/int/list/dict) that goes into
meta.json and into every checkpoint, and tokenizer_from_dict() rebuilds the tokenizer from it
with nothing else on disk (except GPT-2, whose 50k ranks tiktoken keeps in its own cache).

- CharTokenizer: one token per character, vocabulary = the corpus's sorted characters.
- GPT2Tokenizer: OpenAI's GPT-2 BPE via tiktoken (50257 tokens). The ranks are downloaded once
  into tiktoken's cache; offline without that cache it fails with a DataError saying so.
  GPT2Tokenizer.from_files builds it offline from a Hugging Face folder's vocab.json + merges.txt.
- BPETokenizer: a byte-level BPE trained on our own train split with rustbpe (GPT-4 style split
  pattern), run by tiktoken. Byte-level, so encode -> decode is exact for any text. Training
  reports its merges to a progress callback, read from rustbpe's log lines (its only hook).
All three encode "<|endoftext|>" as ordinary text. GPT-2's end-of-text token (50256), and a BPE's
own one where its corpus has many documents, are written only between documents by prepare().
"""

import base64
import contextlib
import hashlib
import importlib.metadata
import json
import logging
import os
import re
import tempfile

import tiktoken
from tiktoken_ext.openai_public import r50k_pat_str as GPT2_PATTERN  # GPT-2's pre-split regex

from common.errors import DataError

MIN_BPE_VOCAB = 260  # 256 byte tokens + a few merges; less is not a BPE worth the name
MAX_BPE_VOCAB = 1 << 20
GPT2_FILES = {  # what tiktoken.get_encoding("gpt2") downloads, with its sha256
    "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/vocab.bpe":
        "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5",
    "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/encoder.json":
        "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783",
}
# OpenAI's four GPT-2 sizes, by the names Hugging Face's hub knows them (the short names are
# redirects). model/pretrained.py downloads their weights from there; each download also holds
# the vocabulary all four share, which GPT2Tokenizer can then build itself from offline.
HUB_NAMES = {
    "gpt2": "openai-community/gpt2",                # 124M parameters
    "gpt2-medium": "openai-community/gpt2-medium",  # 350M
    "gpt2-large": "openai-community/gpt2-large",    # 774M
    "gpt2-xl": "openai-community/gpt2-xl",          # 1558M
}


class CharTokenizer:
    kind = "char"
    eot = None  # documents are joined by their source's separator text instead

    def __init__(self, chars):
        self.chars = "".join(sorted(set(chars)))
        self.stoi = {c: i for i, c in enumerate(self.chars)}
        self.vocab_size = len(self.chars)

    @classmethod
    def train(cls, text):
        return cls(set(text))

    def encode(self, text):
        try:
            return [self.stoi[c] for c in text]
        except KeyError:
            unknown = sorted(set(text) - self.stoi.keys())
            shown = ", ".join(repr(c) for c in unknown[:10]) + (", ..." if len(unknown) > 10 else "")
            raise DataError(f"text has characters not in the vocabulary: {shown}; this char-level "
                            f"tokenizer knows only the {self.vocab_size} characters of its corpus") from None

    def decode(self, ids):
        return "".join(self.chars[i] for i in ids)

    def to_dict(self):
        return {"kind": "char", "chars": self.chars}


class _TiktokenTokenizer:
    """Shared by GPT-2 and our BPE: both are tiktoken Encodings with no special tokens."""

    def encode(self, text):
        return self.enc.encode_ordinary(text)

    def decode(self, ids):
        return self.enc.decode(list(ids))

    @property
    def eot(self):
        """The end-of-text token's id, or None where the vocabulary has none."""
        if "<|endoftext|>" not in self.enc.special_tokens_set:
            return None
        return self.enc.encode_single_token("<|endoftext|>")


def gpt2_cache_dir():
    """The folder tiktoken caches its downloads in (same rule as tiktoken.load)."""
    return os.environ.get("TIKTOKEN_CACHE_DIR") or os.environ.get("DATA_GYM_CACHE_DIR") or \
        os.path.join(tempfile.gettempdir(), "data-gym-cache")


def gpt2_cached():
    """True if tiktoken can build GPT-2 without a network (its two files are in the cache)."""
    d = gpt2_cache_dir()
    return all(os.path.exists(os.path.join(d, hashlib.sha1(u.encode()).hexdigest())) for u in GPT2_FILES)


def gpt2_files_in_hf_cache():
    """(vocab.json, merges.txt) of GPT-2 in Hugging Face's cache, where downloading GPT-2's
    weights (--init_from=gpt2) put them, or None."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # the optional gpt2 extra is not installed
        return None
    for repo in HUB_NAMES.values():
        files = [try_to_load_from_cache(repo, name) for name in ("vocab.json", "merges.txt")]
        if all(isinstance(f, str) for f in files):
            return files
    return None


# GPT-2's 50256 mergeable ranks, written as tiktoken writes ranks ("base64(token) rank" lines in
# rank order), hash to this: it is tiktoken's r50k_base file, the same ranks as get_encoding("gpt2").
GPT2_RANKS_SHA256 = "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930"
GPT2_SPECIAL = {"<|endoftext|>": 50256}


def ranks_sha256(ranks: dict) -> str:
    lines = (base64.b64encode(b) + b" %d\n" % r for b, r in sorted(ranks.items(), key=lambda br: br[1]))
    return hashlib.sha256(b"".join(lines)).hexdigest()


def gpt2_byte_decoder() -> dict:
    """GPT-2's files write every byte as one visible character: the bytes that print (! to ~, ¡ to ¬,
    ® to ÿ) as themselves, the other 68 (space, newline, control codes, ...) as chr(256 + n), in byte
    order. So a space is 'Ġ' (chr(256 + 32)) and a newline 'Ċ'. This maps those characters back."""
    shown = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    decoder = {chr(b): b for b in shown}
    hidden = [b for b in range(256) if b not in decoder.values()]
    decoder.update({chr(256 + n): b for n, b in enumerate(hidden)})
    return decoder


def gpt2_ranks_from_files(vocab_json, merges_txt):
    """A GPT-2 style BPE's two files -> (ranks {token bytes: id}, special tokens {text: id}).

    vocab.json maps each token (bytes written as gpt2_byte_decoder's characters) to its id, and
    merges.txt lists the merges in priority order, "a b" per line. tiktoken merges the pair whose
    result has the lowest rank, so it needs merge i's token to have id 256 + i, the 256 single bytes
    below them: GPT-2's layout (OpenAI's encoder.json and vocab.bpe are the same two files)."""
    decoder = gpt2_byte_decoder()
    try:
        with open(vocab_json, encoding="utf-8") as f:
            vocab = json.load(f)
        with open(merges_txt, encoding="utf-8") as f:
            lines = [line for line in f.read().split("\n") if line and not line.startswith("#version")]
        merges = [tuple(line.split(" ")) for line in lines]
        if not isinstance(vocab, dict) or any(len(m) != 2 for m in merges):
            raise ValueError("not a token -> id map, or a merge line that is not two tokens")

        def to_bytes(token):
            return bytes(decoder[c] for c in token)

        ranks = {to_bytes(c): vocab[c] for c in decoder}                      # the 256 single bytes
        if sorted(ranks.values()) != list(range(256)):
            raise ValueError("the 256 single bytes must have the ids 0..255")
        for i, (a, b) in enumerate(merges):
            if vocab.get(a + b) != 256 + i:
                raise ValueError(f"merge {i + 1} ({a} {b}) must give id {256 + i}, vocab.json has "
                                 f"{vocab.get(a + b)}")
            ranks[to_bytes(a) + to_bytes(b)] = 256 + i
    except (OSError, ValueError, KeyError, TypeError) as e:  # JSONDecodeError is a ValueError
        raise DataError(f"cannot build a GPT-2 tokenizer from {vocab_json} and {merges_txt} "
                        f"({type(e).__name__}: {e}); use the tokenizer files that came with the model") from None
    # whatever else vocab.json holds is special, e.g. GPT-2's <|endoftext|> (id 50256)
    special = {t: i for t, i in vocab.items() if i >= len(ranks)}
    return ranks, special


class GPT2Tokenizer(_TiktokenTokenizer):
    kind = "gpt2"

    def __init__(self, ranks=None, special=None):
        """No arguments: OpenAI's GPT-2 from tiktoken's cache (a network once). With ranks
        {token bytes: id} and special tokens {text: id}, e.g. from gpt2_ranks_from_files: that
        vocabulary, split with GPT-2's pattern, no network."""
        self.own = None  # (ranks, special) when they are not GPT-2's own, for to_dict
        if ranks is None and not gpt2_cached() and (files := gpt2_files_in_hf_cache()):
            ranks, special = gpt2_ranks_from_files(*files)  # the same vocabulary, no network
        if ranks is not None:
            special = dict(special or {})
            self.enc = tiktoken.Encoding(name="gpt2-files", pat_str=GPT2_PATTERN, mergeable_ranks=ranks,
                                         special_tokens=special)
            self.vocab_size = self.enc.n_vocab
            if not (special == GPT2_SPECIAL and ranks_sha256(ranks) == GPT2_RANKS_SHA256):
                self.own = (ranks, special)
            return
        if not gpt2_cached():
            # fetch the files ourselves, with a timeout (tiktoken's own fetch has none and can
            # hang on a firewalled network), into the very cache path tiktoken reads from
            from .corpora import download
            try:
                for url, sha in GPT2_FILES.items():
                    download(url, os.path.join(gpt2_cache_dir(), hashlib.sha1(url.encode()).hexdigest()), sha)
            except DataError as e:
                raise DataError(f"the gpt2 tokenizer needs a network the first time: {e}; connect once, "
                                "or set TIKTOKEN_CACHE_DIR to a folder holding tiktoken's cached gpt2 files, "
                                "or use --tokenizer=char or --tokenizer=bpe") from None
        self.enc = tiktoken.get_encoding("gpt2")
        self.vocab_size = self.enc.n_vocab  # 50257: 50256 merges + <|endoftext|>

    @classmethod
    def train(cls, text):
        return cls()

    @classmethod
    def from_files(cls, vocab_json, merges_txt):
        """From a Hugging Face GPT-2 folder's vocab.json and merges.txt, without a network."""
        return cls(*gpt2_ranks_from_files(vocab_json, merges_txt))

    def to_dict(self):
        if self.own is None:  # GPT-2's own vocabulary: rebuilt from tiktoken's cache
            return {"kind": "gpt2"}
        ranks, special = self.own  # another vocabulary in GPT-2's format: stored whole, as bpe does
        return {"kind": "gpt2", "special": special,
                "ranks": [base64.b64encode(b).decode("ascii") for b in sorted(ranks, key=ranks.get)]}


def bpe_trainer():
    """"rustbpe==X.Y.Z": the library that trains our BPEs and its version. meta.json records it,
    since another version may learn other merges from the same text (pyproject.toml pins it)."""
    try:
        return f"rustbpe=={importlib.metadata.version('rustbpe')}"
    except importlib.metadata.PackageNotFoundError:
        raise DataError("--tokenizer=bpe needs the rustbpe package; run: pip install -e . "
                        "(pyproject.toml pins its version)") from None


class BPETokenizer(_TiktokenTokenizer):
    kind = "bpe"

    def __init__(self, ranks, pattern, eot=False):
        """ranks: the token byte strings in rank order (token id = index); pattern: split regex;
        eot: one more token after them, <|endoftext|>, to mark where a document ends."""
        self.ranks, self.pattern, self.has_eot = list(ranks), pattern, eot
        # byte-level: all 256 single bytes must be tokens, or some text could not be encoded
        if len(set(self.ranks)) != len(self.ranks) or \
                set(self.ranks[:256]) != {bytes([i]) for i in range(256)}:
            raise DataError("bpe ranks must start with the 256 single bytes and have no duplicates")
        self.enc = tiktoken.Encoding(name=f"qkvgpt-bpe-{len(self.ranks)}", pat_str=pattern,
                                     mergeable_ranks={b: i for i, b in enumerate(self.ranks)},
                                     special_tokens={"<|endoftext|>": len(self.ranks)} if eot else {})
        self.vocab_size = len(self.ranks) + eot

    @classmethod
    def train(cls, text, vocab_size, progress=None, eot=False):
        """text: a str, or an iterable of them (a sample of a corpus); vocab_size counts the
        end-of-text token if eot. progress(merges done, merges in all), if given, is called as
        training goes."""
        import rustbpe
        check_bpe_vocab(vocab_size)
        tok = rustbpe.Tokenizer()
        texts = [text] if isinstance(text, str) else text
        # feed it speech-sized pieces, each keeping its closing blank line (so ".\n\n" can merge):
        # rustbpe counts the regex chunks of the pieces in parallel
        with rustbpe_progress(progress):
            tok.train_from_iterator((p for t in texts for p in re.split(r"(?<=\n\n)", t)), vocab_size - eot)
        ranks = sorted(tok.get_mergeable_ranks(), key=lambda br: br[1])
        assert [r for _, r in ranks] == list(range(len(ranks))), "rustbpe ranks are not 0..n-1"
        return cls([b for b, _ in ranks], tok.get_pattern(), eot)

    def to_dict(self):
        # JSON has no bytes: base64 each token, in rank order
        return {"kind": "bpe", "pattern": self.pattern, **({"eot": True} if self.has_eot else {}),
                "ranks": [base64.b64encode(b).decode("ascii") for b in self.ranks]}


class _MergeCounter(logging.Handler):
    """rustbpe has no progress callback; it logs its progress through Python's logging (pyo3-log,
    logger "rustbpe"): "Starting BPE training: N merges to compute", "Progress: P% (k/N merges)
    ...", "Finished training: k merges completed" (k < N when the text runs out of pairs)."""

    def __init__(self, progress):
        super().__init__()
        self.progress = progress

    def emit(self, record):
        if self.progress is None:
            return
        msg = record.getMessage()
        if m := re.match(r"Starting BPE training: (\d+) merges", msg):
            self.progress(0, int(m[1]))
        elif m := re.match(r"Progress: \d+% \((\d+)/(\d+) merges\)", msg):
            self.progress(int(m[1]), int(m[2]))
        elif m := re.match(r"Finished training: (\d+) merges", msg):
            self.progress(int(m[1]), int(m[1]))


@contextlib.contextmanager
def rustbpe_progress(progress):
    """Route rustbpe's progress log lines to progress(done, total), and nowhere else, while
    one training runs. INFO is turned on even without a progress: pyo3-log remembers whether a
    level was enabled the first time it logged, so a first quiet training would mute later bars."""
    log = logging.getLogger("rustbpe")
    handler, level, propagate = _MergeCounter(progress), log.level, log.propagate
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False  # these INFO lines are ours: not for the root logger's handlers
    try:
        yield
    finally:
        log.removeHandler(handler)
        log.setLevel(level)
        log.propagate = propagate


KINDS = {"char": CharTokenizer, "gpt2": GPT2Tokenizer, "bpe": BPETokenizer}


def check_kind(kind):
    if kind not in KINDS:
        raise DataError(f"unknown tokenizer {kind!r}; choose one of {', '.join(KINDS)}")


def check_bpe_vocab(vocab_size):
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or \
            not MIN_BPE_VOCAB <= vocab_size <= MAX_BPE_VOCAB:
        raise DataError(f"--tokenizer_vocab_size={vocab_size} is out of range; a bpe vocabulary needs "
                        f"{MIN_BPE_VOCAB} to {MAX_BPE_VOCAB} tokens (256 bytes + merges), e.g. 2048")


def tokenizer_from_dict(d):
    """Rebuild a tokenizer from its to_dict() (from meta.json or a checkpoint)."""
    if not isinstance(d, dict) or d.get("kind") not in KINDS:
        raise DataError(f"not a tokenizer description: {str(d)[:80]!r}; expected a dict with kind "
                        f"in {', '.join(KINDS)}")
    try:
        if d["kind"] == "char":
            return CharTokenizer(d["chars"])
        if d["kind"] == "gpt2" and "ranks" in d:
            return GPT2Tokenizer({base64.b64decode(r, validate=True): i for i, r in enumerate(d["ranks"])},
                                 d["special"])
        if d["kind"] == "gpt2":
            return GPT2Tokenizer()
        return BPETokenizer([base64.b64decode(r, validate=True) for r in d["ranks"]], d["pattern"],
                            bool(d.get("eot")))
    except (KeyError, TypeError, ValueError) as e:
        raise DataError(f"corrupt {d['kind']} tokenizer description ({type(e).__name__}: {e})") from None
