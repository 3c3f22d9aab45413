"""
python -m data prepare [--dataset=NAME|PATH|hf:OWNER/NAME] [--tokenizer=char|gpt2|bpe] [--vocab_size=N]
                       [--bpe_sample_mb=MB] [--hf_column=C] [--hf_split=S] [--hf_config=C]
                       [--source=PATH] [--root=DIR] [--force] [--quiet]

Prepares a dataset (see data/corpora.py) and prints where it went and its sizes. The options
also answer to train.py's names for the same settings (--tokenizer_vocab_size, --data_source,
--data_root), so a train.py command line's data part can be pasted here. A UserError (a
DataError, or a file that cannot be written) is printed as "error: <message>" with exit
status 1, never as a traceback.
"""

import argparse
import os
import sys

from common.errors import UserError
from . import load_meta, prepare
from .corpora import DATASETS
from .prepare import DEFAULT_BPE_SAMPLE_MB, DEFAULT_BPE_VOCAB, DEFAULT_DATASET


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m data", description="Prepare token datasets for qkvgpt.")
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("prepare", help="tokenize a corpus into train.bin / val.bin / meta.json",
                       description="Tokenize a corpus into train.bin / val.bin / meta.json.")
    p.add_argument("--dataset", default=DEFAULT_DATASET,
                   help=f"{' or '.join(DATASETS)}; a path to a .txt file, a folder of .txt files, or "
                        f"Parquet / JSON-lines files (a glob); or hf:OWNER/NAME, a Hugging Face dataset "
                        f"(default: {DEFAULT_DATASET}, works offline)")
    p.add_argument("--tokenizer", default="char",
                   help="char, gpt2 (needs a network once) or bpe (default: char)")
    # the second name of each is train.py's name for the same setting
    p.add_argument("--vocab_size", "--tokenizer_vocab_size", dest="vocab_size", type=int, default=None,
                   metavar="N",
                   help=f"bpe only: vocabulary size to train (default: {DEFAULT_BPE_VOCAB})")
    p.add_argument("--bpe_sample_mb", type=int, default=DEFAULT_BPE_SAMPLE_MB, metavar="MB",
                   help=f"bpe only: train it on a seeded sample of at most this much of the train split "
                        f"(default: {DEFAULT_BPE_SAMPLE_MB})")
    p.add_argument("--hf_column", default=None, help="rows: the text column (default: text)")
    p.add_argument("--hf_split", default=None, help="hf: the dataset's split to read (default: train)")
    p.add_argument("--hf_config", default=None, help="hf: the dataset's configuration, where it has several")
    p.add_argument("--source", "--data_source", dest="source", default=None, metavar="PATH",
                   help="tinyshakespeare only: a local copy of input.txt instead of downloading")
    p.add_argument("--root", "--data_root", dest="root", default=None, metavar="DIR",
                   help="where prepared datasets go (default: data/prepared)")
    p.add_argument("--dtype", default=None,
                   help="uint16 or uint32 (default: the smallest that fits the vocab)")
    p.add_argument("--force", action="store_true", help="redo it even if already prepared")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    args = ap.parse_args(argv)
    try:
        out = prepare(args.dataset, args.tokenizer, vocab_size=args.vocab_size, source=args.source,
                      root=args.root, force=args.force, quiet=args.quiet, dtype=args.dtype,
                      bpe_sample_mb=args.bpe_sample_mb, hf_column=args.hf_column, hf_split=args.hf_split,
                      hf_config=args.hf_config)
        m = load_meta(out)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    rel = os.path.relpath(out)
    print(f"prepared {rel if not rel.startswith('..') else out}\n"
          f"  dataset    {m['dataset']}: {m['source']}\n"
          f"  split      {m['split']}\n"
          f"  tokenizer  {m['tokenizer']['kind']}, vocab {m['vocab_size']:,}, stored as {m['dtype']}\n"
          f"  tokens     train {m['train_tokens']:,}, val {m['val_tokens']:,} "
          f"(from {m['train_chars']:,} / {m['val_chars']:,} characters)")
    if m.get("val_docs") is not None:
        print(f"  val docs   {', '.join(m['val_docs'][:5])}" + (", ..." if len(m["val_docs"]) > 5 else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
