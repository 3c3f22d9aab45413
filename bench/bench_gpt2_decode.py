"""Decode speed of GPT-2's shape, batch 1: uncached vs KV cache vs the static cache, tokens/s.

    OMP_NUM_THREADS=2 python bench/bench_gpt2_decode.py                    # GPT-2 small, random weights
    OMP_NUM_THREADS=2 python bench/bench_gpt2_decode.py --new_tokens=256 --paths=cached,static
    python bench/bench_gpt2_decode.py --init_from=gpt2                      # the real weights (cached)

Random weights by default: speed does not depend on what was learned, and nothing is downloaded.
Each path decodes greedily from a --prompt-token prompt, timed end to end (prefill included),
after a short warm-up run; the best of --repeats runs is printed. Prints figures, asserts nothing.
  uncached  the whole context through the model for every new token (nanoGPT's way)
  cached    the plain KV cache (model/generate.py)
  static    the fixed-shape step of model/fast_decode.py (on CPU it runs eagerly, no CUDA graph)
"""

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from anywhere in a checkout
from model import GPT, GPTConfig  # noqa: E402
from model.fast_decode import decode_static  # noqa: E402
from model.generate import decode  # noqa: E402

SHAPES = {  # OpenAI's sizes: (n_layer, n_head, n_embd); all have 1024 positions and 50257 tokens
    "gpt2": (12, 12, 768), "gpt2-medium": (24, 16, 1024), "gpt2-large": (36, 20, 1280), "gpt2-xl": (48, 25, 1600),
}


def gpt2_shaped(size: str) -> GPT:
    n_layer, n_head, n_embd = SHAPES[size]
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=50257, block_size=1024, n_layer=n_layer, n_head=n_head, n_embd=n_embd,
                         bias=True, mlp_act="gelu_tanh")).eval()


def run(model, path, prompt, n):
    if path == "static":
        steps = decode_static(model, prompt, n, temperature=0)
    else:
        steps = decode(model, prompt, n, temperature=0, use_cache=path == "cached")
    for _ in steps:
        pass


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size", default="gpt2", choices=SHAPES, help="GPT-2's shape, random weights")
    p.add_argument("--init_from", help="a GPT-2 name or folder: its real weights (model/pretrained.py)")
    p.add_argument("--new_tokens", type=int, default=128)
    p.add_argument("--prompt", type=int, default=1, help="prompt length in tokens")
    p.add_argument("--paths", default="uncached,cached,static")
    p.add_argument("--repeats", type=int, default=1)
    args = p.parse_args()

    if args.init_from:
        from model.pretrained import from_pretrained
        model, name = from_pretrained(args.init_from), args.init_from
    else:
        model, name = gpt2_shaped(args.size), f"{args.size} shape, random weights"
    cfg = model.config
    prompt = torch.randint(0, cfg.vocab_size, (1, args.prompt), generator=torch.Generator().manual_seed(0))
    print(f"{name}: {model.num_params() / 1e6:.1f}M parameters, {cfg.n_layer} layers, C={cfg.n_embd}; "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch 1, prompt {args.prompt}, "
          f"{args.new_tokens} new tokens, greedy")
    for path in args.paths.split(","):
        run(model, path, prompt, 4)  # warm-up: allocator, kernels
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            run(model, path, prompt, args.new_tokens)
            times.append(time.perf_counter() - t0)
        best = min(times)
        print(f"  {path:9s} {args.new_tokens / best:8.1f} tokens/s  {1000 * best / args.new_tokens:8.1f} ms/token  "
              f"({best:.1f} s)", flush=True)


if __name__ == "__main__":
    main()
