"""Our decode paths against Hugging Face generate and CTranslate2, on the same weights, tokens/s.

    OMP_NUM_THREADS=2 python bench/bench_peers.py --shape=gpt2     # GPT-2 small, prompt 16, 128 new
    OMP_NUM_THREADS=2 python bench/bench_peers.py --shape=char     # shakespeare_char, prompt 1, 255 new
    python bench/bench_peers.py --shape=char --out_dir=out-char    # a trained checkpoint's weights

Needs the peers: pip install -e ".[peers]" (transformers, safetensors, ctranslate2). Our model
(random weights, seeded, or --out_dir's) is exported with model.pretrained.export_hf; transformers
loads that folder and CTranslate2 converts it (float32 and int8 weights). Every path decodes
greedily from the same prompts (random tokens, the same for all) at batch 1 and 16, timed as one
whole generate call (prefill included), best of --repeats after a warm-up; tokens/s counts every
row. Each row says how many of its tokens equal our float32 greedy's. Our paths: the plain KV
cache (model/generate.py) in float32, bfloat16 and with int8 weights, and the same three through
the compiled static step (model/fast_decode.py, sample.py --compile; float32 activations over
the int8 weights there), built and self-checked once per batch size before the warm-up.

CTranslate2 runs last, in a child process of its own: once its thread pool has run in a process,
torch's decode steps there run at less than half their speed (measured on the 2-core EPYC VM),
so in one process the race would measure that, not the engines.

The limit: decoding reads every weight once per forward, so tokens/s <= bandwidth / weight bytes
x batch, bandwidth measured here as a 1 GiB sum. Each row gives the fraction of that it reaches.
Speculation (our int8 with --speculate's guesses) is shown apart: its speed depends on the text
(random weights write very repetitive text), so the ratio on the last line leaves it out.
"""

import argparse
import copy
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from anywhere in a checkout
from model import GPT, GPTConfig  # noqa: E402
from model.fast_decode import StaticDecoder  # noqa: E402
from model.generate import decode  # noqa: E402
from model.quantize import Int8Linear, quantize_int8  # noqa: E402
from model.speculative import SpeculativeDecoder  # noqa: E402

SHAPES = {  # GPTConfig keywords GPT-2 can hold, prompt length, new tokens
    "gpt2": (dict(vocab_size=50257, block_size=1024, n_layer=12, n_head=12, n_embd=768, bias=True,
                  mlp_act="gelu_tanh"), 16, 128),
    "char": (dict(vocab_size=65, block_size=256, n_layer=6, n_head=6, n_embd=384, bias=False,
                  mlp_act="gelu"), 1, 255),
}
BYTES = {"float32": 4, "bfloat16": 2, "int8": 1}


def need(name):
    try:
        return __import__(name)
    except ImportError:
        sys.exit(f'error: bench/bench_peers.py needs {name}: pip install -e ".[peers]"')


def bandwidth(gib: int = 1, repeats: int = 3) -> float:
    """Bytes per second a sum over a gib-GiB tensor reads, best of repeats."""
    x = torch.ones(gib << 28)                                          # float32: 4 bytes each
    best = float("inf")
    for _ in range(repeats + 1):
        t0 = time.perf_counter()
        x.sum()
        best = min(best, time.perf_counter() - t0)
    return x.numel() * 4 / best


def weight_count(model) -> int:
    """Weights read per forward: every linear layer's and the head's (one embedding row is not)."""
    return sum(m.weight.numel() for m in model.modules() if isinstance(m, (torch.nn.Linear, Int8Linear)))


def best_of(fn, repeats):
    fn()                                                               # warm-up
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return min(times), out


def ours(model, prompts, new):
    return torch.stack([t for _, t in decode(model, prompts, new, temperature=0)], 1)  # (B, new)


def compiled(model, new):
    """generate(prompts) through the compiled static step: one decoder per batch size, built,
    compiled and verified at its first call (the warm-up)."""
    decoders = {}

    def generate(prompts):
        b = prompts.size(0)
        if b not in decoders:
            decoders[b] = StaticDecoder(model, b, compile=True)
            decoders[b].verify()
        return torch.stack([t for _, t in decoders[b].decode(prompts, new, temperature=0)], 1)
    return generate


def speculative(model, prompts, new, k):
    spec = SpeculativeDecoder(model, None, k)
    out = torch.stack([t for _, t in spec.decode(prompts, new, temperature=0)], 1)
    return out, spec


def hf_generate(hf, prompts, new):
    with torch.no_grad():
        out = hf.generate(prompts, attention_mask=torch.ones_like(prompts), max_new_tokens=new,
                          min_new_tokens=new, do_sample=False, pad_token_id=0)
    return out[:, prompts.size(1):]


class _Vocab:
    """What CTranslate2's GPT-2 converter reads of a tokenizer: token strings by id. Ours has
    none in the exported folder (the ids are what matter): token i is "<i>"."""

    def __init__(self, n):
        self.n = n
        self.bos_token = self.eos_token = self.unk_token = f"<{n - 1}>"

    def get_vocab(self):
        return {f"<{i}>": i for i in range(self.n)}


def ct2_run(folder, vocab_size, out_root, threads, prompts_by_batch, new, repeats):
    """In a child process: convert, load and race CTranslate2 float32 and int8 at each batch.
    Returns {(name, batch): (seconds, tokens)}."""
    models = ct2_models(folder, vocab_size, out_root, threads)
    out = {}
    for batch, prompts in prompts_by_batch.items():
        for quant, gen in models.items():
            out[(f"CTranslate2 {quant}", batch)] = best_of(lambda: ct2_generate(gen, prompts, new), repeats)
    return out


def ct2_models(folder, vocab_size, out_root, threads):
    ctranslate2 = need("ctranslate2")

    class Converter(ctranslate2.converters.TransformersConverter):
        def load_tokenizer(self, tokenizer_class, model_name_or_path, **kwargs):
            return _Vocab(vocab_size)

    models = {}
    for quant in ("float32", "int8"):
        out = Path(out_root) / f"ct2-{quant}"
        Converter(str(folder)).convert(str(out), quantization=quant, force=True)
        models[quant] = ctranslate2.Generator(str(out), device="cpu", compute_type=quant,
                                              intra_threads=threads)
    return models


def ct2_generate(gen, prompts, new):
    start = [[f"<{t}>" for t in row] for row in prompts.tolist()]
    res = gen.generate_batch(start, max_length=new, min_length=new, sampling_topk=1,
                             include_prompt_in_result=False)
    return torch.tensor([r.sequences_ids[0][:new] for r in res])


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--shape", choices=SHAPES, default="gpt2")
    p.add_argument("--out_dir", help="a training run whose ckpt.pt to race (its shape, not --shape's)")
    p.add_argument("--batches", default="1,16")
    p.add_argument("--new_tokens", type=int, help="default: the shape's (128 for gpt2, 255 for char)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--compile", type=int, default=1, help="1: also race the compiled static step (a minute of compiling); 0: not")
    p.add_argument("--speculate", type=int, default=8, help="guesses per forward of the speculative row; 0 = no row")
    args = p.parse_args()
    need("transformers")
    from transformers import GPT2LMHeadModel
    from model.pretrained import export_hf

    threads = torch.get_num_threads()
    kw, prompt_len, new = SHAPES[args.shape]
    new = args.new_tokens or new
    if args.out_dir:
        from model.checkpoint import load_run
        model, _ = load_run(args.out_dir)
        what = f"{args.out_dir}/ckpt.pt"
    else:
        torch.manual_seed(0)
        model, what = GPT(GPTConfig(**kw)).eval(), f"{args.shape} shape, random weights (seed 0)"
    cfg = model.config
    bw = bandwidth()
    n_w = weight_count(model)
    print(f"{what}: {model.num_params() / 1e6:.1f}M parameters, {n_w / 1e6:.1f}M weights read per "
          f"forward; torch {torch.__version__}, {threads} threads; prompt {prompt_len}, {new} new "
          f"tokens, greedy, best of {args.repeats}")
    print(f"memory bandwidth (1 GiB sum): {bw / 1e9:.1f} GB/s; batch-1 limit {bw / (4 * n_w):.0f} tok/s "
          f"float32, {bw / (2 * n_w):.0f} bfloat16, {bw / n_w:.0f} int8")

    tmp = tempfile.TemporaryDirectory()
    folder = export_hf(model, Path(tmp.name) / "hf")
    hf = GPT2LMHeadModel.from_pretrained(folder, torch_dtype=torch.float32).eval()
    paths = {  # name -> (bytes per weight, generate(prompts) -> (B, new) tokens)
        "ours float32": (4, lambda x: ours(model, x, new)),
    }
    bf16 = copy.deepcopy(model).to(torch.bfloat16)
    paths["ours bfloat16"] = (2, lambda x: ours(bf16, x, new))
    int8 = quantize_int8(copy.deepcopy(model).to(torch.bfloat16))
    paths["ours int8"] = (1, lambda x: ours(int8, x, new))
    if args.compile:
        paths["ours float32 compiled"] = (4, compiled(model, new))
        paths["ours bfloat16 compiled"] = (2, compiled(bf16, new))
        paths["ours int8 compiled"] = (1, compiled(quantize_int8(copy.deepcopy(model)), new))
    paths["HF generate float32"] = (4, lambda x: hf_generate(hf, x, new))

    prompts_by_batch = {b: torch.randint(0, cfg.vocab_size, (b, prompt_len), generator=torch.Generator().manual_seed(b))
                        for b in [int(b) for b in args.batches.split(",")]}
    results = {}  # (name, batch) -> (seconds, tokens)
    for batch, prompts in prompts_by_batch.items():
        for name, (_, fn) in paths.items():
            results[(name, batch)] = best_of(lambda: fn(prompts), args.repeats)
        if batch == 1 and args.speculate:
            seconds, (tokens, spec) = best_of(lambda: speculative(int8, prompts, new, args.speculate), args.repeats)
            results[(f"ours int8 speculate={args.speculate}", batch)] = seconds, tokens
            accepted = f"{spec.acceptance:.0%} of {spec.proposed} guesses kept"
    import multiprocessing
    with multiprocessing.get_context("spawn").Pool(1) as pool:  # see the docstring: a process of its own
        results.update(pool.apply(ct2_run, (folder, cfg.vocab_size, tmp.name, threads, prompts_by_batch, new, args.repeats)))
    paths["CTranslate2 float32"], paths["CTranslate2 int8"] = (4, None), (1, None)

    best = {}
    print(f"{'path':24s} {'batch':>5s} {'tok/s':>8s} {'of limit':>8s}  same tokens as ours float32")
    for batch in prompts_by_batch:
        reference = results[("ours float32", batch)][1]
        for (name, b), (seconds, tokens) in results.items():
            if b != batch:
                continue
            rate = batch * new / seconds
            same = f"{int((tokens == reference).sum())}/{reference.numel()}"
            if "speculate" in name:
                print(f"{name:24s} {batch:5d} {rate:8.1f} {'':>8s}  {same} ({accepted}; not in the ratio below)")
                continue
            limit = batch * bw / (paths[name][0] * n_w)
            best[(name, batch)] = rate
            print(f"{name:24s} {batch:5d} {rate:8.1f} {rate / limit:8.0%}  {same}", flush=True)
    for batch in sorted({b for _, b in best}):
        o = max(r for (n, b), r in best.items() if b == batch and n.startswith("ours"))
        c = max(r for (n, b), r in best.items() if b == batch and n.startswith("CTranslate2"))
        print(f"batch {batch}: ours fastest {o:.1f} tok/s, CTranslate2 fastest {c:.1f}: {o / c:.2f}x")
    o = max(r for (n, b), r in best.items() if b == 1 and n.startswith("ours"))
    c = max(r for (n, b), r in best.items() if b == 1 and n.startswith("CTranslate2"))
    print(f"ours fastest / CTranslate2 fastest = {o / c:.2f}")


if __name__ == "__main__":
    main()
