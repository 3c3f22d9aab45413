"""GPT-2's published weights in our model, and our model back out in GPT-2's format.

OpenAI's GPT-2 is the model in gpt.py with GPT-2's options (config_from_hf: learned positions,
biases, LayerNorm, the tanh GELU, a tied head, plain multi-head attention), so loading it is
only renaming and reshaping tensors.

Hugging Face's files name the tensors like this (folders written by save_pretrained put
"transformer." in front; the original uploads do not), for each block i, with C = n_embd:

    theirs, shape                         ours, shape
    wte.weight (V, C)                     wte.weight (V, C)
    wpe.weight (n_positions, C)           wpe.weight (block_size, C)   its first block_size rows
    h.i.ln_1.weight, .bias (C,)           blocks.i.ln_1.weight, .bias
    h.i.attn.c_attn.weight (C, 3C)        blocks.i.attn.q_proj/k_proj/v_proj.weight (C, C): split, transpose
    h.i.attn.c_attn.bias (3C,)            blocks.i.attn.q_proj/k_proj/v_proj.bias (C,): split
    h.i.attn.c_proj.weight (C, C)         blocks.i.attn.o_proj.weight (C, C): transpose
    h.i.ln_2.weight, .bias (C,)           blocks.i.ln_2.weight, .bias
    h.i.mlp.c_fc.weight (C, 4C)           blocks.i.mlp.fc.weight (4C, C): transpose
    h.i.mlp.c_proj.weight (4C, C)         blocks.i.mlp.proj.weight (C, 4C): transpose
    (every c_* bias keeps its shape)
    ln_f.weight, .bias (C,)               ln_f.weight, .bias
    lm_head.weight (V, C), if stored      tied: it is wte.weight (HF ignores a stored copy, so do we)

Why transpose: GPT-2's layers are "Conv1D", a Linear that stores its weight as (in, out) and
computes x @ W + b; nn.Linear stores (out, in). Why split: c_attn computes q, k and v with one
matmul, its 3C outputs side by side in that order.

    model = from_pretrained("gpt2")                 # or a larger size (HUB_NAMES), or a local folder
    model, tokenizer = load_pretrained("gpt2")      # with its tokenizer, from the same folder
    export_hf(model, "out/hf")                      # config.json + model.safetensors for transformers

A name is downloaded once into Hugging Face's cache (huggingface_hub) and read from there after,
offline too. Reading a folder needs safetensors (or only torch, for a pytorch_model.bin). Both are
the optional extra: pip install -e ".[gpt2]".
"""

import importlib
import json
import re
from dataclasses import fields
from pathlib import Path

import torch

from common.errors import UserError
from common.files import atomic_write
from data.tokenizers import HUB_NAMES  # the four sizes' names, and where the hub keeps them
from .attention import NORM_EPS
from .config import GPTConfig, ModelSettings
from .gpt import GPT

INSTALL = 'pip install -e ".[gpt2]"'
HUB_FILES = ["config.json", "model.safetensors", "vocab.json", "merges.txt"]
WEIGHT_FILES = ["model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json"]  # the first one present is read
# config.json's activation names for the two GELUs our MLP computes (gelu_new, gelu_pytorch_tanh
# and gelu_fast are the same tanh formula, written three ways)
ACTIVATIONS = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu_fast": "gelu_tanh",
               "gelu": "gelu"}
# GPT2Config's defaults, for config.json files that leave a field out (older ones do)
HF_DEFAULTS = dict(vocab_size=50257, n_positions=1024, n_embd=768, n_layer=12, n_head=12, n_inner=None,
                   activation_function="gelu_new", layer_norm_epsilon=1e-5, scale_attn_weights=True,
                   scale_attn_by_inverse_layer_idx=False, add_cross_attention=False, tie_word_embeddings=True)
# buffers older checkpoints saved beside the weights: the causal mask and the -1e4 it filled in
IGNORED = re.compile(r"h\.\d+\.attn\.(bias|masked_bias)")


class PretrainedError(UserError):
    """GPT-2's files missing, unreachable, or describing a model ours does not compute."""


def _need(module: str):
    """Import an optional package's module, or say in one line how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        package = module.split(".")[0]
        raise PretrainedError(f"GPT-2's files need the {package} package, part of the optional "
                              f"gpt2 extra: {INSTALL}") from None


# ---------------------------------------------------------------- name or folder -> folder

def resolve(name_or_path) -> Path:
    """A local folder as it is; one of HUB_NAMES from Hugging Face's cache, downloading it there
    first if needed (and a network is there)."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path
    repo_id = HUB_NAMES.get(str(name_or_path), str(name_or_path))
    if repo_id in HUB_NAMES.values():
        return _download(repo_id)
    if path.exists():
        raise PretrainedError(f"{path} is a file; give the folder that holds config.json and model.safetensors")
    raise PretrainedError(f"{name_or_path!r} is neither a folder nor one of {', '.join(HUB_NAMES)}; "
                          f"give a Hugging Face GPT-2 folder (config.json + model.safetensors)")


def _download(repo_id: str) -> Path:
    hub, constants = _need("huggingface_hub"), _need("huggingface_hub.constants")
    try:
        # with HF_HUB_OFFLINE=1, or when the hub cannot be reached, this returns the cached copy
        return Path(hub.snapshot_download(repo_id=repo_id, allow_patterns=HUB_FILES))
    except Exception as e:  # offline and not cached, hub down, proxy, ...: the fix is the same
        if constants.HF_HUB_OFFLINE:
            why = "HF_HUB_OFFLINE is set"
        elif isinstance(e, FileNotFoundError):  # huggingface_hub's LocalEntryNotFoundError
            why = "the hub could not be reached"
        else:
            why = f"{type(e).__name__}: {(str(e).splitlines() or [''])[0][:200]}"
        raise PretrainedError(
            f"{repo_id} is not in Hugging Face's cache ({constants.HF_HUB_CACHE}) and cannot be "
            f"downloaded ({why}); run once with a network (and HF_HUB_OFFLINE unset) to cache it, or "
            f"download {', '.join(HUB_FILES)} from https://huggingface.co/{repo_id} into a folder "
            f"and pass that folder's path instead of the name") from None


# ---------------------------------------------------------------- folder -> config and tensors

def read_folder(folder) -> tuple[dict, dict]:
    """(config.json as a dict, {name: tensor}) of a Hugging Face GPT-2 folder."""
    folder = Path(folder)
    what = "a Hugging Face GPT-2 folder holds config.json and model.safetensors (or pytorch_model.bin)"
    if not (folder / "config.json").is_file():
        raise PretrainedError(f"no config.json in {folder}: {what}")
    try:
        hf = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise PretrainedError(f"{folder / 'config.json'} is not readable JSON ({e})") from None
    weights = next((folder / n for n in WEIGHT_FILES if (folder / n).is_file()), None)
    if weights is None:
        raise PretrainedError(f"no weights in {folder} (looked for {', '.join(WEIGHT_FILES)}): {what}")
    files = [weights]
    if weights.name.endswith(".index.json"):  # sharded: the index maps each tensor to its file
        try:
            shards = json.loads(weights.read_text(encoding="utf-8"))["weight_map"].values()
        except (OSError, ValueError, KeyError, AttributeError) as e:
            raise PretrainedError(f"{weights} is not a readable shard index ({e!r})") from None
        files = [folder / f for f in sorted(set(shards))]
    tensors = {}
    for f in files:
        tensors.update(_read_tensors(f))
    return hf, tensors


def _read_tensors(path: Path) -> dict:
    if not path.is_file():
        raise PretrainedError(f"{path} is missing; the folder's shard index lists it")
    try:
        if path.suffix == ".safetensors":
            return _need("safetensors.torch").load_file(str(path))
        state = torch.load(path, map_location="cpu", weights_only=True)  # cannot run code
    except PretrainedError:
        raise
    except Exception as e:  # truncated, corrupt, or a pickle holding code
        raise PretrainedError(f"{path} is not a readable weights file ({type(e).__name__}); "
                              f"download it again") from None
    if not isinstance(state, dict):
        raise PretrainedError(f"{path} holds no state dict of tensors")
    return state


def config_from_hf(hf: dict, *, block_size: int | None = None, dropout: float = 0.0,
                   attn_impl: str = "sdpa") -> GPTConfig:
    """Our GPTConfig for a GPT-2 config.json. Every field that would change the arithmetic is
    checked: what our model does not compute is refused, not silently computed differently."""
    get = lambda key: hf.get(key, HF_DEFAULTS[key])  # noqa: E731
    if hf.get("model_type", "gpt2") != "gpt2":
        raise PretrainedError(f"config.json says model_type {hf['model_type']!r}; only GPT-2 ('gpt2') "
                              f"checkpoints map onto this model")
    refusals = [
        (get("activation_function") not in ACTIVATIONS,
         f"activation_function={get('activation_function')!r}: the MLP computes {', '.join(ACTIVATIONS)}"),
        (abs(get("layer_norm_epsilon") - NORM_EPS) > 1e-12,
         f"layer_norm_epsilon={get('layer_norm_epsilon')!r}: our LayerNorms use {NORM_EPS}"),
        (get("n_inner") not in (None, 4 * get("n_embd")),
         f"n_inner={get('n_inner')!r}: our MLP's hidden layer is 4 * n_embd = {4 * get('n_embd')}"),
        (not get("scale_attn_weights"),
         "scale_attn_weights=false: our attention always divides the scores by sqrt(head_size)"),
        (get("scale_attn_by_inverse_layer_idx"),
         "scale_attn_by_inverse_layer_idx=true: our attention does not scale scores by 1/(layer+1)"),
        (get("add_cross_attention"),
         "add_cross_attention=true: our blocks have no cross-attention to an encoder"),
    ]
    # reorder_and_upcast_attn is accepted: it scales q.k in fp32 in another order, the same numbers
    # in fp32 (it matters under fp16 autocast only)
    for refused, why in refusals:
        if refused:
            raise PretrainedError(f"config.json has {why}; this GPT-2 variant cannot be loaded here")
    n_positions = get("n_positions")
    block_size = n_positions if block_size is None else block_size
    if not isinstance(block_size, int) or not 1 <= block_size <= n_positions:
        raise PretrainedError(f"block_size={block_size!r}: it must be 1..{n_positions}, the positions "
                              f"GPT-2 learned (a smaller one keeps the first rows of its position table)")
    return GPTConfig(vocab_size=get("vocab_size"), block_size=block_size, n_layer=get("n_layer"),
                     n_head=get("n_head"), n_embd=get("n_embd"), dropout=dropout, bias=True,
                     pos_emb="learned", norm="layernorm", mlp_act=ACTIVATIONS[get("activation_function")],
                     tie_embeddings=bool(get("tie_word_embeddings")), attn_impl=attn_impl)


# ---------------------------------------------------------------- their tensors -> ours

def state_dict_from_hf(theirs: dict, config: GPTConfig, n_positions: int) -> dict:
    """GPT-2's tensors renamed and reshaped into our state_dict (see the table at the top).
    Every tensor must be used and have the shape config.json implies."""
    theirs = {k.removeprefix("transformer."): v for k, v in theirs.items()}
    C, V = config.n_embd, config.vocab_size

    def take(name, shape):
        if name not in theirs:
            raise PretrainedError(f"the weights have no {name}: the file is incomplete, or is not "
                                  f"the model its config.json describes")
        t = theirs.pop(name)
        if tuple(t.shape) != shape:
            raise PretrainedError(f"{name} has shape {tuple(t.shape)}, config.json implies {shape}: "
                                  f"the weights and config.json do not belong together")
        return t

    ours = {"wte.weight": take("wte.weight", (V, C)),
            "wpe.weight": take("wpe.weight", (n_positions, C))[:config.block_size]}
    for i in range(config.n_layer):
        h, b = f"h.{i}.", f"blocks.{i}."
        for ln in ("ln_1", "ln_2"):
            ours[f"{b}{ln}.weight"] = take(f"{h}{ln}.weight", (C,))
            ours[f"{b}{ln}.bias"] = take(f"{h}{ln}.bias", (C,))
        # c_attn: x (.., C) @ W (C, 3C) = [q | k | v], so q's weight is W's first C columns
        w, bias = take(h + "attn.c_attn.weight", (C, 3 * C)), take(h + "attn.c_attn.bias", (3 * C,))
        for j, role in enumerate(("q", "k", "v")):
            ours[f"{b}attn.{role}_proj.weight"] = w[:, j * C:(j + 1) * C].t()    # (in, out) -> (out, in)
            ours[f"{b}attn.{role}_proj.bias"] = bias[j * C:(j + 1) * C]
        ours[b + "attn.o_proj.weight"] = take(h + "attn.c_proj.weight", (C, C)).t()
        ours[b + "attn.o_proj.bias"] = take(h + "attn.c_proj.bias", (C,))
        ours[b + "mlp.fc.weight"] = take(h + "mlp.c_fc.weight", (C, 4 * C)).t()     # -> (4C, C)
        ours[b + "mlp.fc.bias"] = take(h + "mlp.c_fc.bias", (4 * C,))
        ours[b + "mlp.proj.weight"] = take(h + "mlp.c_proj.weight", (4 * C, C)).t()  # -> (C, 4C)
        ours[b + "mlp.proj.bias"] = take(h + "mlp.c_proj.bias", (C,))
    ours["ln_f.weight"], ours["ln_f.bias"] = take("ln_f.weight", (C,)), take("ln_f.bias", (C,))
    if config.tie_embeddings:
        theirs.pop("lm_head.weight", None)  # HF ties it to wte on load, whatever was stored
        ours["lm_head.weight"] = ours["wte.weight"]
    else:
        ours["lm_head.weight"] = take("lm_head.weight", (V, C))  # an nn.Linear already: (out, in)
    left = sorted(k for k in theirs if not IGNORED.fullmatch(k))
    if left:
        raise PretrainedError(f"the weights hold tensors a GPT-2 language model has no place for: "
                              f"{', '.join(left[:5])}{' ...' if len(left) > 5 else ''}")
    return ours


def from_pretrained(name_or_path, *, block_size: int | None = None, dropout: float = 0.0,
                    attn_impl: str = "sdpa") -> GPT:
    """GPT-2's weights in our GPT, float32, in eval mode.

    name_or_path: one of HUB_NAMES (from Hugging Face's cache, downloaded once), or a local
    folder with config.json + model.safetensors (or pytorch_model.bin).
    block_size: keep only this many positions (default all, 1024): less memory for the KV cache.
    dropout: 0 for sampling; GPT-2 trained with 0.1, a fine-tune may want it back.
    """
    return _load(resolve(name_or_path), block_size=block_size, dropout=dropout, attn_impl=attn_impl)


def pretrained_config(name_or_path, **options) -> GPTConfig:
    """The GPTConfig of a GPT-2 folder or name, from its config.json alone (no weights read)."""
    folder = resolve(name_or_path)
    try:
        hf = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise PretrainedError(f"cannot read {folder / 'config.json'} ({type(e).__name__}: {e}); "
                              f"a GPT-2 folder needs config.json beside its weights") from None
    return config_from_hf(hf, **options)


def _load(folder: Path, **options) -> GPT:
    hf, theirs = read_folder(folder)
    config = config_from_hf(hf, **options)
    n_positions = hf.get("n_positions", HF_DEFAULTS["n_positions"])
    ours = state_dict_from_hf(theirs, config, n_positions)
    model = GPT(config)  # its random init is overwritten below: every tensor is loaded
    model.load_state_dict(ours)  # copies, converting fp16/bf16 files to our float32
    return model.eval()


def tokenizer_from_pretrained(name_or_path):
    """The tokenizer for a GPT-2 folder or name: built from its vocab.json + merges.txt without a
    network when they are there, else tiktoken's GPT-2 (its cache, or a network once). Its
    to_dict() is {"kind": "gpt2"} when the files are GPT-2's own vocabulary (tokenizer_from_dict then
    rebuilds it from tiktoken's cache), else the whole vocabulary."""
    from data import GPT2Tokenizer
    folder = resolve(name_or_path)
    vocab, merges = folder / "vocab.json", folder / "merges.txt"
    if vocab.is_file() and merges.is_file():
        return GPT2Tokenizer.from_files(vocab, merges)
    return GPT2Tokenizer()


def load_pretrained(name_or_path, **options):
    """(model, tokenizer) of a GPT-2 folder or name, resolved once; options as from_pretrained."""
    folder = resolve(name_or_path)
    model, tokenizer = _load(folder, **options), tokenizer_from_pretrained(folder)
    if tokenizer.vocab_size > model.config.vocab_size:
        raise PretrainedError(f"{folder}'s tokenizer has {tokenizer.vocab_size} tokens, more than the "
                              f"model's vocab_size {model.config.vocab_size}: they do not belong together")
    return model, tokenizer


# ---------------------------------------------------------------- ours -> Hugging Face's

# The settings transformers' GPT2LMHeadModel computes, each with the values it computes them for.
# A ModelSettings field not named here must keep its default to be exported: a setting added
# later is refused until it is added here, never exported as something else.
EXPORTABLE = {
    "block_size": "any", "n_layer": "any", "n_head": "any", "n_embd": "any",
    "dropout": "any",          # training only
    "attn_impl": "any",        # the same math either way
    "zero_init": "any",        # the initial weights only
    "bias": "any",             # bias=False is GPT-2 with every bias 0: export writes those zeros
    "tie_embeddings": "any",   # tie_word_embeddings
    "n_kv_head": lambda c: c.n_kv_head == c.n_head,     # GPT-2 is multi-head: one K/V per head
    "mlp_act": lambda c: c.mlp_act in ("gelu", "gelu_tanh"),
}


def export_refusals(config: GPTConfig) -> list[str]:
    """The settings of `config` that transformers' GPT-2 does not compute, as `name=value`."""
    defaults = ModelSettings()
    out = []
    for f in fields(ModelSettings):
        rule, value = EXPORTABLE.get(f.name), getattr(config, f.name)
        ok = rule == "any" or (rule(config) if rule else value == getattr(defaults, f.name))
        if not ok:
            out.append(f"{f.name}={value!r}")
    return out


def hf_config(config: GPTConfig, dtype=torch.float32) -> dict:
    """config.json for our model, refusing what transformers' GPT2LMHeadModel does not compute
    (EXPORTABLE)."""
    c = config
    refused = export_refusals(c)
    if refused:
        raise PretrainedError(f"cannot export a model with {', '.join(refused)}: transformers' GPT-2 does not "
                              f"compute it (it has learned positions, LayerNorm, multi-head attention, GELU)")
    eot = {"bos_token_id": 50256, "eos_token_id": 50256} if c.vocab_size == 50257 else \
        {"bos_token_id": None, "eos_token_id": None}  # GPT-2's <|endoftext|> only in its vocabulary
    return {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2",
            "vocab_size": c.vocab_size, "n_positions": c.block_size, "n_embd": c.n_embd,
            "n_layer": c.n_layer, "n_head": c.n_head, "n_inner": None,
            "activation_function": "gelu_new" if c.mlp_act == "gelu_tanh" else "gelu",
            "layer_norm_epsilon": NORM_EPS, "scale_attn_weights": True,
            "scale_attn_by_inverse_layer_idx": False, "reorder_and_upcast_attn": False,
            "add_cross_attention": False, "tie_word_embeddings": c.tie_embeddings,
            "resid_pdrop": c.dropout, "embd_pdrop": c.dropout, "attn_pdrop": c.dropout,
            "initializer_range": 0.02, "use_cache": True, **eot,
            "dtype": str(dtype).removeprefix("torch.")}


def state_dict_to_hf(model: GPT) -> dict:
    """Our tensors in GPT-2's names and layouts (the table at the top, read right to left)."""
    cfg, sd = model.config, model.state_dict()
    C = cfg.n_embd

    def bias(name, n):  # bias=False is GPT-2 with zero biases
        return sd[name] if name in sd else torch.zeros(n, dtype=sd["wte.weight"].dtype)

    out = {"transformer.wte.weight": sd["wte.weight"], "transformer.wpe.weight": sd["wpe.weight"]}
    for i in range(cfg.n_layer):
        h, b = f"transformer.h.{i}.", f"blocks.{i}."
        for ln in ("ln_1", "ln_2"):
            out[f"{h}{ln}.weight"], out[f"{h}{ln}.bias"] = sd[f"{b}{ln}.weight"], bias(f"{b}{ln}.bias", C)
        roles = [f"{b}attn.{r}_proj" for r in ("q", "k", "v")]
        out[h + "attn.c_attn.weight"] = torch.cat([sd[r + ".weight"] for r in roles]).t()   # (C, 3C)
        out[h + "attn.c_attn.bias"] = torch.cat([bias(r + ".bias", C) for r in roles])
        out[h + "attn.c_proj.weight"] = sd[b + "attn.o_proj.weight"].t()
        out[h + "attn.c_proj.bias"] = bias(b + "attn.o_proj.bias", C)
        out[h + "mlp.c_fc.weight"] = sd[b + "mlp.fc.weight"].t()                          # (C, 4C)
        out[h + "mlp.c_fc.bias"] = bias(b + "mlp.fc.bias", 4 * C)
        out[h + "mlp.c_proj.weight"] = sd[b + "mlp.proj.weight"].t()                      # (4C, C)
        out[h + "mlp.c_proj.bias"] = bias(b + "mlp.proj.bias", C)
    out["transformer.ln_f.weight"], out["transformer.ln_f.bias"] = sd["ln_f.weight"], bias("ln_f.bias", C)
    if not cfg.tie_embeddings:  # tied, the head is wte: safetensors stores a tensor once
        out["lm_head.weight"] = sd["lm_head.weight"]
    return {k: v.detach().contiguous() for k, v in out.items()}


def export_hf(model: GPT, folder) -> Path:
    """Write config.json + model.safetensors into folder (each atomically) for
    transformers.GPT2LMHeadModel.from_pretrained(folder). Returns the folder."""
    safetensors_torch = _need("safetensors.torch")
    folder = Path(folder)
    dtype = model.wte.weight.dtype
    config = hf_config(model.config, dtype)  # refuses a shape GPT-2 cannot hold, before writing
    tensors = state_dict_to_hf(model)
    atomic_write(folder / "model.safetensors", safetensors_torch.save(tensors, metadata={"format": "pt"}))
    atomic_write(folder / "config.json", json.dumps(config, indent=2) + "\n")
    return folder
