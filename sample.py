"""Read what a trained model writes: load a checkpoint, stream its text to stdout.

    python sample.py --out_dir=out                              # out/ckpt.pt, from a newline
    python sample.py --out_dir=out --prompt="ROMEO:" --num_samples=3 --max_new_tokens=300
    python sample.py --out_dir=out --temperature=0              # greedy: the same text every run
    python sample.py --init_from=gpt2 --prompt="Hello, I am"   # OpenAI's GPT-2 (pip install -e ".[gpt2]")

Everything comes from the checkpoint: the model's shape, its weights and its tokenizer.
Three ways to decode, the same tokens, past block_size too (one policy for all three:
visible_context in model/generate.py):
  --use_cache=false   recompute the whole context for every token (nanoGPT's way, the reference)
  --fast=false        the KV cache: only the new token runs through the model each step
  --fast=auto         on CUDA, a static cache and a decode step replayed as a CUDA graph
                      (model/fast_decode.py); elsewhere the same as --fast=false
  --speculate=K       guesses K tokens ahead (the text's own repeats, then an n-gram table of the
                      training text) and checks them in one forward (model/speculative.py): the
                      same tokens as without it, greedy or sampled, in fewer forwards; with the
                      fast path, that forward is the static step of K+1 tokens (a CUDA graph)
The fast path checks itself before the first token (StaticDecoder.verify); if it fails, one
`warning:` line says so and the plain KV cache decodes instead: the same text, only slower.
The samples go to stdout, one after another, each followed by a line of dashes; the figures
(prompt length, tokens generated, tokens/s) go to stderr, so `> out.txt` keeps only the text.
"""

import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch

from common.device import native_bf16, resolve_device, resolve_dtype
from common.errors import ConfigError, UserError
from configs import parse_config
from data import DataError
from data.prepare import DEFAULT_ROOT, load_meta
from data.tokenizers import HUB_NAMES
from model.checkpoint import load_run
from model.pretrained import load_pretrained
from model.fast_decode import DecodeCheckError, StaticDecoder, fastest_dtype
from model.quantize import quantize_int8
from model.speculative import NGramDraft, SpeculativeDecoder
from model.generate import check_sampling, decode, visible_context
from viz.attention_page import write_attention_page

SEPARATOR = "---------------"


@dataclass
class SampleConfig:
    # -- what to sample from --
    out_dir: str = "out"             # the training run's folder (train.py --out_dir)
    ckpt: str = "ckpt.pt"            # checkpoint in out_dir: ckpt.pt (best val loss) or last.pt (latest)
    init_from: str | None = field(default=None, metadata={"help": f"instead of a run: GPT-2's weights, {', '.join(HUB_NAMES)} or a Hugging Face GPT-2 folder"})
    # -- the prompt --
    prompt: str = ""                 # text to continue; empty = start from a newline
    prompt_file: str | None = None   # read the prompt from this UTF-8 file instead
    # -- sampling --
    num_samples: int = 1             # continuations of the prompt, generated together as one batch
    max_new_tokens: int = 500        # tokens per sample; more than block_size is fine
    temperature: float = 0.8         # 0 = greedy (argmax); below 1 safer, above 1 wilder
    top_k: int | None = 200          # sample among the k likeliest tokens only (none = all)
    top_p: float | None = None       # nucleus: the likeliest tokens holding this much probability, in (0, 1]
    seed: int = 1337                 # same seed, same settings: same text
    # -- decoding and system --
    device: str = "auto"             # auto (cuda, then mps, then cpu), cpu, cuda, cuda:N or mps
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"  # auto: on a CPU that computes bf16, float32 or bf16, whichever decodes this model faster (measured); else the device's rule (common/device.py)
    int8: bool = False               # int8 weights, one scale per output channel (model/quantize.py): fewer bytes per token, slightly different numbers
    use_cache: bool = True           # false: recompute the whole context for every token (slow reference)
    fast: Literal["auto", "true", "false"] = "auto"  # static cache + CUDA graph; auto = on CUDA only
    compile: bool = False            # torch.compile the fast decode step (faster steps, slow start)
    speculate: int = 0               # guess this many tokens ahead and check them in one forward (0 = off); same text
    draft_data: str | None = None    # --speculate's n-gram table: a prepared train.bin (default: the run's, by its tokenizer)
    # -- output --
    attention_html: str | None = None  # also write the attention page of the first sample to this file


# -----------------------------------------------------------------------------
# settings

def check_settings(cfg: SampleConfig):
    """Nonsense values stop here, before anything is loaded."""
    try:  # the library's own checks (model/generate.py), in the command line's words
        check_sampling(cfg.max_new_tokens, cfg.temperature, cfg.top_k, cfg.top_p, cfg.num_samples)
    except ValueError as e:
        raise ConfigError(f"--{e}") from None
    if cfg.prompt and cfg.prompt_file:
        raise ConfigError("give --prompt or --prompt_file, not both")
    if cfg.compile and (not cfg.use_cache or cfg.fast == "false"):
        raise ConfigError("--compile compiles the fast cached decode step; it does nothing with "
                          "--use_cache=false or --fast=false: drop one of them")
    if cfg.speculate < 0:
        raise ConfigError(f"--speculate={cfg.speculate}: must be an integer >= 0 (0 = off)")
    if cfg.speculate and cfg.num_samples > 1:
        raise ConfigError("--speculate decodes one sample at a time; drop --num_samples or --speculate")
    if cfg.speculate and (not cfg.use_cache or cfg.compile):
        raise ConfigError("--speculate checks its guesses over the KV cache; drop --use_cache=false "
                          "and --compile, or --speculate")
    if cfg.attention_html is not None and Path(cfg.attention_html).is_dir():
        raise ConfigError(f"--attention_html={cfg.attention_html} is a folder; give a file path, "
                          f"e.g. {Path(cfg.attention_html) / 'attention.html'}")


# -----------------------------------------------------------------------------
# the prompt

def read_prompt(cfg: SampleConfig, tokenizer) -> tuple[str, list[int]]:
    """(text to echo, token ids). An empty prompt starts from a newline, as nanoGPT does."""
    text = cfg.prompt
    if cfg.prompt_file is not None:
        try:
            text = Path(cfg.prompt_file).read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ConfigError(f"--prompt_file={cfg.prompt_file} does not exist") from None
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(f"--prompt_file={cfg.prompt_file} cannot be read as UTF-8 text: {e}") from None
    if text:
        try:
            return text, tokenizer.encode(text)
        except DataError as e:
            raise UserError(f"the prompt cannot be encoded: {e}") from None
    # no prompt: the model needs one token to start from; a newline is the natural start of a
    # text, and any tokenizer without one (a char vocabulary lacking it) starts from token 0
    try:
        return "", tokenizer.encode("\n")
    except DataError:
        return "", [0]


# -----------------------------------------------------------------------------
# streaming

class Stream:
    """Writes one sample's tokens as text as they arrive. A byte-level BPE may split one
    character over several tokens; such an unfinished tail (U+FFFD) waits for the next tokens."""

    def __init__(self, tokenizer, out):
        self.tokenizer, self.out, self.pending = tokenizer, out, []

    def write(self, ids: list[int], final: bool = False):
        self.pending += ids
        text = self.tokenizer.decode(self.pending) if self.pending else ""
        if text.endswith("\ufffd") and len(self.pending) < 8 and not final:
            return  # an unfinished UTF-8 character (at most 4 bytes): wait for the rest
        self.out.write(text)
        self.out.flush()
        self.pending = []


def training_tokens(cfg: SampleConfig, tokenizer) -> Path | None:
    """The train.bin --speculate's n-gram table reads: --draft_data, else a prepared dataset
    written with this model's tokenizer (the same ids), else None."""
    if cfg.draft_data is not None:
        path = Path(cfg.draft_data)
        path = path / "train.bin" if path.is_dir() else path
        if not path.is_file() or not (path.parent / "meta.json").is_file():
            raise ConfigError(f"--draft_data={cfg.draft_data} is not a prepared dataset's train.bin "
                              f"(python -m data prepare writes one)")
        return path
    for meta in sorted(DEFAULT_ROOT.glob("*/meta.json")):
        try:
            if load_meta(meta)["tokenizer"] == tokenizer.to_dict() and (meta.parent / "train.bin").is_file():
                return meta.parent / "train.bin"
        except (DataError, KeyError):
            continue
    return None


def speculative_steps(cfg, model, tokenizer, idx, generator, err):
    """(the SpeculativeDecoder, its steps, its name). Without training data for the table, the
    guesses come from the text's own repeats alone (one `warning:` line says so)."""
    path = training_tokens(cfg, tokenizer)
    if path is None:
        print("warning: --speculate found no prepared training data with this model's tokenizer "
              "(give --draft_data=PATH/train.bin); guessing from the text's own repeats only",
              file=err)
    draft = NGramDraft.from_file(path) if path is not None else None
    # the guesses checked in the static step (a CUDA graph there) as decode_steps takes it; a
    # ring has no such step (its later guesses would overwrite keys the earlier ones see)
    static = None
    if uses_fast_path(cfg, idx.device) and not model.config.rolling:
        static = checked_static_decoder(cfg, model, 1, err, tokens=cfg.speculate + 1)
    spec = SpeculativeDecoder(model, draft, cfg.speculate, static=static)
    steps = spec.decode(idx, cfg.max_new_tokens, temperature=cfg.temperature, top_k=cfg.top_k,
                        top_p=cfg.top_p, generator=generator)
    table = f" + the {draft.order}-gram table of {path}" if draft is not None else ""
    where = static_name(cfg, static) if static is not None else cache_name(model)
    return spec, steps, f"speculative, {cfg.speculate} guesses a forward (text lookup{table}), {where}"


def uses_fast_path(cfg, device) -> bool:
    return cfg.fast == "true" or cfg.compile or (cfg.fast == "auto" and device.type == "cuda")


def checked_static_decoder(cfg, model, rows, err, tokens=1):
    """A StaticDecoder (CUDA graph, compiled step) that passed its self-check, or None after one
    `warning:` line: the caller decodes with the plain KV cache then, so a user's sample is never
    lost to the fast path."""
    try:
        dec = StaticDecoder(model, rows, compile=cfg.compile, tokens=tokens)
        dec.verify()  # the graph / compiled step against the eager step, before any token
        return dec
    except Exception as e:  # noqa: BLE001 - any failure here (capture, compile, check) has a fallback
        if isinstance(e, DecodeCheckError):
            what = f"its self-check: {e}"
        else:  # building it: capture or compile; the first line of the message is enough here
            what = f"to build: {type(e).__name__}: {(str(e).strip().splitlines() or [''])[0][:200]}"
        print(f"warning: the fast decode path failed {what}; decoding with the plain KV cache "
              f"instead", file=err or sys.stderr)
        return None


def static_name(cfg, dec) -> str:
    return ("static ring cache" if dec.ring else "static cache") + \
        (" + CUDA graph" if dec.graph is not None else "" if cfg.compile else " (eager, no CUDA graph)") + \
        (" + torch.compile" if cfg.compile else "")


def decode_steps(cfg, model, idx, device, generator, err=None):
    """(generator of (logits, token) steps, path name, setup seconds). If the fast path cannot
    be built or fails its self-check, one `warning:` line goes to err and the plain KV cache
    decodes instead: a user's sample is never lost to the fast path."""
    kw = dict(temperature=cfg.temperature, top_k=cfg.top_k, top_p=cfg.top_p,
              generator=generator, num_samples=cfg.num_samples)
    if not cfg.use_cache:
        return decode(model, idx, cfg.max_new_tokens, use_cache=False, **kw), "uncached", 0.0
    if not uses_fast_path(cfg, device):
        return decode(model, idx, cfg.max_new_tokens, use_cache=True, **kw), cache_name(model), 0.0
    t0 = time.perf_counter()
    dec = checked_static_decoder(cfg, model, idx.size(0) * cfg.num_samples, err)
    setup_s = time.perf_counter() - t0
    if dec is None:
        return decode(model, idx, cfg.max_new_tokens, use_cache=True, **kw), cache_name(model), setup_s
    return dec.decode(idx, cfg.max_new_tokens, **kw), static_name(cfg, dec), setup_s


def decode_weights(cfg: SampleConfig, model, device, dtype):
    """(model, dtype, what the decode line says of them). --dtype=auto on a CPU that computes
    bf16 times both and keeps the faster (fastest_dtype); --int8 quantizes the weights after
    the cast, over bf16 activations there (torch's int8 kernel takes bf16), or float32 ones
    with --compile (its one-row step widens int8 weights itself: model/matvec.py)."""
    how = str(dtype).removeprefix("torch.")
    if cfg.dtype == "auto" and device.type == "cpu" and native_bf16("cpu"):
        if cfg.int8 and cfg.compile:
            dtype, how = torch.float32, "float32"
        elif cfg.int8:
            dtype, how = torch.bfloat16, "bfloat16"
        else:
            dtype, times = fastest_dtype(model)
            how = (f"{str(dtype).removeprefix('torch.')} (measured per step: " + ", ".join(
                f"{str(d).removeprefix('torch.')} {t * 1e3:.2f} ms" for d, t in times.items()) + ")")
    model = model.to(dtype)
    if cfg.int8:
        model, how = quantize_int8(model), f"int8 weights, {how} activations"
    return model, dtype, how


def cache_name(model) -> str:
    w = model.config.attn_window
    return f"rolling KV cache (a ring of {w} slots per layer)" if model.config.rolling else "KV cache"


def sample(cfg: SampleConfig, out=None, err=None) -> list[list[int]]:
    """Generate and print (to stdout and stderr by default); returns each sample's new token ids."""
    out, err = out or sys.stdout, err or sys.stderr
    check_settings(cfg)
    device = resolve_device(cfg.device)
    dtype = resolve_dtype(cfg.dtype, device, use="decode")
    if cfg.init_from is not None:  # OpenAI's GPT-2 (model/pretrained.py), with its own tokenizer
        model, tokenizer = load_pretrained(cfg.init_from)
        model = model.to(device=device).eval()
    else:
        model, tokenizer = load_run(cfg.out_dir, device=device, ckpt=cfg.ckpt)
    model, dtype, how = decode_weights(cfg, model, device, dtype)
    prompt_text, prompt_ids = read_prompt(cfg, tokenizer)
    bs = model.config.block_size
    idx = torch.tensor([prompt_ids], dtype=torch.long, device=device)           # (1, T)
    torch.manual_seed(cfg.seed)
    generator = torch.Generator(device=device).manual_seed(cfg.seed)
    spec = None
    if cfg.speculate:
        t0 = time.perf_counter()
        spec, steps, path = speculative_steps(cfg, model, tokenizer, idx, generator, err)
        setup_s = time.perf_counter() - t0
    else:
        steps, path, setup_s = decode_steps(cfg, model, idx, device, generator, err)

    # stream sample 0 as it is generated; the others are written when the batch is done. On a
    # GPU, reading a token back waits for the GPU, so tokens come back in small groups there.
    every = 1 if device.type == "cpu" else 8
    first = Stream(tokenizer, out)
    out.write(prompt_text)
    out.flush()
    new, shown = [], 0
    t0 = time.perf_counter()
    for _, nxt in steps:
        new.append(nxt)                                                          # (N,) each
        if len(new) - shown >= every:
            first.write(torch.stack(new[shown:], dim=1)[0].tolist())
            shown = len(new)
    rows = torch.stack(new, dim=1).tolist() if new else [[] for _ in range(cfg.num_samples)]
    elapsed = time.perf_counter() - t0                                           # .tolist() waited
    first.write(rows[0][shown:], final=True)
    out.write("\n" + SEPARATOR + "\n")
    for row in rows[1:]:
        out.write(prompt_text + tokenizer.decode(row) + "\n" + SEPARATOR + "\n")
    out.flush()

    n = cfg.num_samples * cfg.max_new_tokens
    cut, seen = "", visible_context(len(prompt_ids), model.config, bs)
    if seen < len(prompt_ids):
        cut = f" (longer than block_size {bs}: the model sees its last {seen})"
    print(f"prompt: {len(prompt_ids)} tokens{cut}", file=err)
    print(f"generated: {cfg.num_samples} x {cfg.max_new_tokens} = {n} tokens in {elapsed:.2f} s, "
          f"{n / max(elapsed, 1e-9):,.0f} tokens/s", file=err)
    setup = f", setup {setup_s:.2f} s" if setup_s else ""
    print(f"decode: {path} on {device}, {how}{setup}", file=err)
    if spec is not None:
        print(f"speculation: {spec.accepted} of {spec.proposed} guesses accepted ({spec.acceptance:.0%}), "
              f"{spec.forwards} forwards for {n} tokens", file=err)

    if cfg.attention_html is not None:
        metrics = Path(cfg.out_dir) / "metrics.jsonl"  # the run's loss curve, if it is a run
        try:
            write_attention_page(cfg.attention_html, model, tokenizer, prompt_ids + rows[0],
                                 metrics_path=metrics if metrics.is_file() and cfg.init_from is None else None,
                                 prompt_len=len(prompt_ids))
        except UserError as e:
            raise UserError(f"--attention_html: {e} (the samples above are complete)") from None
        print(f"attention page: {cfg.attention_html}", file=err)
    return rows


def main(argv=None) -> int:
    try:
        cfg = parse_config(SampleConfig, sys.argv[1:] if argv is None else argv, prog="sample.py",
                           description=__doc__.split("\n\n")[0],
                           no_config="pick the training run to sample with --out_dir=DIR")
        sample(cfg)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # `python sample.py | head`: the reader has what it wanted
        # point stdout at /dev/null so Python's final flush does not fail a second time
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
