"""
data: corpora, tokenizers and a batch loader for qkvgpt.

    from data import prepare, load_meta, tokenizer_from_dict, BatchLoader
    d = prepare("shakespeare", "char")             # -> data/prepared/shakespeare-char-<key>/
    meta = load_meta(d)                            # sizes, dtype, split, tokenizer.to_dict()
    tok = tokenizer_from_dict(meta["tokenizer"])   # the same thing a checkpoint stores
    x, y = BatchLoader(d / "train.bin", block_size=256, batch_size=64).next_batch()

Command line: python -m data prepare --help
"""

from common.errors import DataError
from .corpora import DATASETS, load_corpus
from .tokenizers import BPETokenizer, CharTokenizer, GPT2Tokenizer, tokenizer_from_dict
from .prepare import DEFAULT_DATASET, load_meta, prepare
from .loader import BatchLoader, read_split


__all__ = ["DataError", "DEFAULT_DATASET", "DATASETS", "prepare", "load_meta", "load_corpus",
           "tokenizer_from_dict", "CharTokenizer", "GPT2Tokenizer", "BPETokenizer", "BatchLoader",
           "read_split"]
