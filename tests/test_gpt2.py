"""GPT-2's weights in our model (model/pretrained.py), checked against Hugging Face's own GPT-2.

No network and no download: the reference is a small GPT2LMHeadModel with random weights built
here and saved the ways GPT-2 folders come (safetensors from save_pretrained, a pytorch_model.bin,
and the original uploads' layout: no "transformer." prefix, the attention mask buffers stored).
The real download path (a name, fetched into Hugging Face's cache) is exercised offline only:
a name that is not cached is one clear error, a cached one loads."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")  # a guard only: the dev extra installs it
from transformers import GPT2Config, GPT2LMHeadModel  # noqa: E402
from transformers import GPT2Tokenizer as HFTokenizer  # noqa: E402

from data import DataError, GPT2Tokenizer, tokenizer_from_dict  # noqa: E402
from data import tokenizers  # noqa: E402
from model import GPT, GPTConfig  # noqa: E402
from model.fast_decode import decode_static  # noqa: E402
from model.generate import decode  # noqa: E402
from model.pretrained import (PretrainedError, export_hf, from_pretrained, load_pretrained,  # noqa: E402
                              tokenizer_from_pretrained)

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py
REPO = Path(__file__).resolve().parents[1]

# a tiny GPT-2 BPE in Hugging Face's file format: the 256 bytes, then these merges ("a b": a+b),
# then <|endoftext|>; a space is written 'Ġ' and a newline 'Ċ', as in GPT-2's own files
MERGES = ["Ġ t", "h e", "Ġt he", "i n", "Ġ a", "e r", "o u", "Ġ s", "r e", "Ġ w", "o n", "in g",
          "' s", "Ċ Ċ", "Ġ 1", "Ġ Ġ"]
VOCAB = 256 + len(MERGES) + 1
SHAPE = dict(n_layer=2, n_head=4, n_embd=64, n_positions=64, vocab_size=VOCAB)
TEXT = ("the weather in the north: it's ringing, we're sure.\n\nThe ONE 1234 ones,  spaces   "
        "and\ttabs\r\nÜnïcødé 😀 漢字 on and on")


def make_hf(**kw):
    """A random GPT-2 from transformers. Its own init leaves biases at 0 and LayerNorm gains at 1,
    so every tensor is redrawn here: a bias or gain loaded into the wrong place then shows. Seed
    and scale chosen so that greedy decoding makes varied, clear-cut choices (checked below)."""
    torch.manual_seed(3)
    cfg = GPT2Config(**{**SHAPE, **kw}, resid_pdrop=0, embd_pdrop=0, attn_pdrop=0,
                     bos_token_id=None, eos_token_id=None)
    model = GPT2LMHeadModel(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            gain = ".ln_" in name and name.endswith(".weight")
            p.copy_(float(gain) + 0.3 * torch.randn_like(p))
    return model


def write_tokenizer(folder):
    chars = list(tokenizers.gpt2_byte_decoder())  # GPT-2's byte order: ids 0..255
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({m.replace(" ", ""): 256 + i for i, m in enumerate(MERGES)})
    vocab["<|endoftext|>"] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(MERGES) + "\n", encoding="utf-8")


@pytest.fixture(scope="module")
def hf():
    return make_hf()


@pytest.fixture(scope="module")
def folders(hf, tmp_path_factory):
    """The same weights in the three layouts GPT-2 folders come in."""
    root = tmp_path_factory.mktemp("gpt2")
    st, bin_, orig = root / "safetensors", root / "bin", root / "original"
    hf.save_pretrained(st)  # config.json + model.safetensors, "transformer." prefix, no lm_head
    write_tokenizer(st)
    sd = hf.state_dict()
    for d in (bin_, orig):
        d.mkdir()
        shutil.copy(st / "config.json", d)
    torch.save(sd, bin_ / "pytorch_model.bin")  # lm_head.weight stored too, sharing wte's storage
    # the original uploads: no prefix, no lm_head, and each layer's causal mask and masked_bias
    old = {k.removeprefix("transformer."): v for k, v in sd.items() if k != "lm_head.weight"}
    T = SHAPE["n_positions"]
    for i in range(SHAPE["n_layer"]):
        old[f"h.{i}.attn.bias"] = torch.tril(torch.ones(T, T)).view(1, 1, T, T)
        old[f"h.{i}.attn.masked_bias"] = torch.tensor(-1e4)
    torch.save(old, orig / "pytorch_model.bin")
    return {"safetensors": st, "bin": bin_, "original": orig}


def logits_of(model, idx):
    with torch.no_grad():
        out = model(idx)
    return out.logits if hasattr(out, "logits") else out[0]


# ---------------------------------------------------------------- same numbers as transformers

@pytest.mark.parametrize("layout", ["safetensors", "bin", "original"])
@pytest.mark.parametrize("impl", ["explicit", "sdpa"])
def test_logits_match_transformers(hf, folders, layout, impl):
    ours = from_pretrained(folders[layout], attn_impl=impl)
    assert ours.config.mlp_act == "gelu_tanh" and ours.config.bias and not ours.training
    idx = torch.randint(0, VOCAB, (2, SHAPE["n_positions"]), generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(logits_of(ours, idx), logits_of(hf, idx), atol=1e-5, rtol=1e-5)


@pytest.fixture(scope="module")
def prompt_and_greedy(hf):
    prompt = torch.randint(0, VOCAB, (1, 5), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        out = hf.generate(prompt, do_sample=False, max_new_tokens=40, pad_token_id=0)
        best2 = hf(out).logits[0, 4:-1].topk(2).values  # the logits each pick was made from
    # no near-ties: each pick wins by far more than fp32 rounding could move it
    assert (best2[:, 0] - best2[:, 1]).min() > 0.01
    assert len(set(out[0, 5:].tolist())) > 10  # a varied sequence, not one token repeated
    return prompt, out[:, 5:], hf(out).logits[0, 4:-1]


@pytest.mark.parametrize("path", ["cached", "uncached", "static"])
def test_greedy_tokens_match_transformers_generate(folders, prompt_and_greedy, path):
    prompt, want, want_logits = prompt_and_greedy
    model = from_pretrained(folders["safetensors"])
    if path == "static":
        steps = decode_static(model, prompt, 40, temperature=0)
    else:
        steps = decode(model, prompt, 40, temperature=0, use_cache=path == "cached")
    logits, got = zip(*steps)
    assert torch.equal(torch.stack(got, dim=1), want)
    # and each step's logits are transformers' for the same tokens (a full forward of the sequence)
    torch.testing.assert_close(torch.cat(logits), want_logits, atol=1e-4, rtol=1e-4)


def test_shorter_block_size_keeps_the_first_positions(hf, folders):
    ours = from_pretrained(folders["safetensors"], block_size=16)
    assert ours.config.block_size == 16 and ours.wpe.weight.shape == (16, 64)
    idx = torch.randint(0, VOCAB, (1, 16))
    torch.testing.assert_close(logits_of(ours, idx), logits_of(hf, idx), atol=1e-5, rtol=1e-5)
    with pytest.raises(PretrainedError, match="block_size=65: it must be 1..64"):
        from_pretrained(folders["safetensors"], block_size=65)


def test_untied_head(tmp_path):
    hf = make_hf(tie_word_embeddings=False)
    hf.save_pretrained(tmp_path)
    ours = from_pretrained(tmp_path)
    assert not ours.config.tie_embeddings and ours.lm_head.weight is not ours.wte.weight
    idx = torch.randint(0, VOCAB, (2, 20))
    torch.testing.assert_close(logits_of(ours, idx), logits_of(hf, idx), atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------- export: ours -> transformers

def test_export_round_trip(hf, folders, tmp_path):
    ours = from_pretrained(folders["safetensors"])
    export_hf(ours, tmp_path / "export")
    assert sorted(p.name for p in (tmp_path / "export").iterdir()) == ["config.json", "model.safetensors"]
    back = GPT2LMHeadModel.from_pretrained(tmp_path / "export").eval()
    idx = torch.randint(0, VOCAB, (2, 64))
    torch.testing.assert_close(logits_of(back, idx), logits_of(ours, idx), atol=1e-5, rtol=1e-5)
    again = from_pretrained(tmp_path / "export")  # and our own loader reads our export exactly
    for (name, a), b in zip(ours.state_dict().items(), again.state_dict().values()):
        assert torch.equal(a, b), name


@pytest.mark.parametrize("options", [dict(bias=False, mlp_act="gelu"), dict(bias=True, tie_embeddings=False)])
def test_export_a_model_trained_here(tmp_path, options):
    """Our defaults (no biases, exact GELU) are GPT-2 with zero biases and activation "gelu"."""
    torch.manual_seed(0)
    ours = GPT(GPTConfig(vocab_size=50, block_size=32, n_layer=2, n_head=2, n_embd=32, **options)).eval()
    with torch.no_grad():
        for p in ours.parameters():
            p.add_(0.1 * torch.randn_like(p))  # biases and gains away from 0 and 1
    export_hf(ours, tmp_path)
    back = GPT2LMHeadModel.from_pretrained(tmp_path).eval()
    idx = torch.randint(0, 50, (2, 32))
    torch.testing.assert_close(logits_of(back, idx), logits_of(ours, idx), atol=1e-5, rtol=1e-5)


# a non-default value for every model setting, and whether transformers' GPT-2 computes it: the
# exporter must write exactly those and refuse the rest (on a 4-head, 32-wide, 2-layer model)
EXPORT_CASES = {
    "block_size": (8, True), "n_layer": (1, True), "n_head": (2, True), "n_embd": (64, True),
    "dropout": (0.1, True), "bias": (True, True), "attn_impl": ("explicit", True), "zero_init": (True, True),
    "tie_embeddings": (False, True), "mlp_act": ("gelu_tanh", True), "n_kv_head": (2, False),
    "pos_emb": ("rope", False), "rope_base": (500.0, False), "attn_window": (4, False),
    "norm": ("rmsnorm", False), "embed_norm": (True, False), "qk_norm": (True, False),
    "logit_softcap": (30.0, False), "x0_shortcut": (True, False),
}


def test_every_model_setting_has_an_export_case():
    """A setting added to ModelSettings fails here until its case says whether GPT-2 computes it."""
    from dataclasses import fields as dataclass_fields
    from model.config import ModelSettings
    assert set(EXPORT_CASES) == {f.name for f in dataclass_fields(ModelSettings)}


@pytest.mark.parametrize("name", sorted(EXPORT_CASES))
def test_export_writes_what_gpt2_computes_and_refuses_the_rest(tmp_path, name):
    value, computed = EXPORT_CASES[name]
    torch.manual_seed(0)
    shape = dict(vocab_size=50, block_size=16, n_layer=2, n_head=4, n_embd=32)
    model = GPT(GPTConfig(**{**shape, name: value})).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))  # every parameter away from its init (x0's scalars too)
    if not computed:
        with pytest.raises(PretrainedError, match=f"{name}={value!r}"):
            export_hf(model, tmp_path / "out")
        assert not (tmp_path / "out").exists()  # refused before anything was written
        return
    export_hf(model, tmp_path / "out")
    back = GPT2LMHeadModel.from_pretrained(tmp_path / "out").eval()
    idx = torch.randint(0, 50, (2, model.config.block_size))
    torch.testing.assert_close(logits_of(back, idx), logits_of(model, idx), atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------- the tokenizer

def test_tokenizer_from_files_matches_transformers(folders):
    st = folders["safetensors"]
    ours = tokenizer_from_pretrained(st)
    theirs = HFTokenizer(str(st / "vocab.json"), str(st / "merges.txt"))
    assert ours.vocab_size == VOCAB
    for text in (TEXT, "the the", "", " 1 11 111"):
        assert ours.encode(text) == theirs.encode(text), text
        assert ours.decode(ours.encode(text)) == text
    assert len(ours.encode("the weather")) < len("the weather")  # the merges are used
    # as everywhere here, <|endoftext|> typed in text is ordinary text (transformers: the special id)
    assert ours.decode(ours.encode("a<|endoftext|>")) == "a<|endoftext|>"
    assert ours.decode([VOCAB - 1]) == "<|endoftext|>"


def test_tokenizer_to_dict_round_trip(folders, monkeypatch):
    tok = tokenizer_from_pretrained(folders["safetensors"])
    d = json.loads(json.dumps(tok.to_dict()))  # not GPT-2's vocabulary: stored whole
    assert d["kind"] == "gpt2" and len(d["ranks"]) == VOCAB - 1 and d["special"] == {"<|endoftext|>": VOCAB - 1}
    assert tokenizer_from_dict(d).encode(TEXT) == tok.encode(TEXT)
    # GPT-2's own vocabulary (recognised by its ranks' hash) is stored by its kind alone
    monkeypatch.setattr(tokenizers, "GPT2_RANKS_SHA256", tokenizers.ranks_sha256(tok.enc._mergeable_ranks))
    monkeypatch.setattr(tokenizers, "GPT2_SPECIAL", {"<|endoftext|>": VOCAB - 1})
    assert tokenizer_from_pretrained(folders["safetensors"]).to_dict() == {"kind": "gpt2"}


def test_tokenizer_files_that_do_not_fit_together(folders, tmp_path):
    write_tokenizer(tmp_path)
    vocab = json.loads((tmp_path / "vocab.json").read_text(encoding="utf-8"))
    vocab["he"], vocab["Ġt"] = vocab["Ġt"], vocab["he"]  # ids no longer in merge order
    (tmp_path / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    with pytest.raises(DataError, match=r"merge 1 \(Ġ t\) must give id 256, vocab.json has 257"):
        GPT2Tokenizer.from_files(tmp_path / "vocab.json", tmp_path / "merges.txt")


def test_load_pretrained_gives_model_and_tokenizer(folders):
    model, tok = load_pretrained(folders["safetensors"], dropout=0.1)
    assert model.config.dropout == 0.1 and tok.vocab_size == model.config.vocab_size
    ids = torch.tensor([tok.encode("the weather")])
    assert tok.decode(model.generate(ids, 5, temperature=0)[0].tolist()).startswith("the weather")


# ---------------------------------------------------------------- one clear error each

def edited(folders, tmp_path, **fields):
    """A copy of the safetensors folder with config.json fields changed."""
    d = tmp_path / "edited"
    shutil.copytree(folders["safetensors"], d)
    cfg = json.loads((d / "config.json").read_text())
    cfg.update(fields)
    (d / "config.json").write_text(json.dumps(cfg))
    return d


@pytest.mark.parametrize("fields,match", [
    (dict(scale_attn_by_inverse_layer_idx=True), "scale_attn_by_inverse_layer_idx=true"),
    (dict(scale_attn_weights=False), "scale_attn_weights=false"),
    (dict(add_cross_attention=True), "add_cross_attention=true"),
    (dict(n_inner=100), "n_inner=100: our MLP's hidden layer is 4 \\* n_embd = 256"),
    (dict(activation_function="relu"), "activation_function='relu'"),
    (dict(layer_norm_epsilon=1e-6), "layer_norm_epsilon=1e-06"),
    (dict(model_type="llama"), "model_type 'llama'"),
])
def test_refuses_config_fields_our_model_does_not_compute(folders, tmp_path, fields, match):
    with pytest.raises(PretrainedError, match=match):
        from_pretrained(edited(folders, tmp_path, **fields))


def test_accepts_fields_that_do_not_change_the_math(hf, folders, tmp_path):
    d = edited(folders, tmp_path, reorder_and_upcast_attn=True, n_inner=256, activation_function="gelu_pytorch_tanh")
    idx = torch.randint(0, VOCAB, (1, 30))
    torch.testing.assert_close(logits_of(from_pretrained(d), idx), logits_of(hf, idx), atol=1e-5, rtol=1e-5)


def test_folder_errors(folders, tmp_path):
    with pytest.raises(PretrainedError, match=r"no config.json in .*config.json and model.safetensors"):
        from_pretrained(tmp_path)
    shutil.copy(folders["safetensors"] / "config.json", tmp_path)
    with pytest.raises(PretrainedError, match="no weights in .*looked for model.safetensors"):
        from_pretrained(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(PretrainedError, match="model.safetensors is not a readable weights file"):
        from_pretrained(tmp_path)
    with pytest.raises(PretrainedError, match="is a file; give the folder"):
        from_pretrained(tmp_path / "config.json")
    with pytest.raises(PretrainedError, match="'gpt3' is neither a folder nor one of gpt2, gpt2-medium"):
        from_pretrained("gpt3")


def test_weights_that_do_not_fit_the_config(folders, tmp_path):
    with pytest.raises(PretrainedError, match=r"wte.weight has shape \(273, 64\), config.json implies \(273, 32\)"):
        from_pretrained(edited(folders, tmp_path, n_embd=32))
    d = tmp_path / "extra"
    shutil.copytree(folders["bin"], d)
    sd = torch.load(d / "pytorch_model.bin", weights_only=True)
    sd["score.weight"] = torch.zeros(2, 64)  # a classification head: not a language model's
    torch.save(sd, d / "pytorch_model.bin")
    with pytest.raises(PretrainedError, match="no place for: score.weight"):
        from_pretrained(d)
    del sd["score.weight"], sd["transformer.h.1.mlp.c_fc.bias"]
    torch.save(sd, d / "pytorch_model.bin")
    with pytest.raises(PretrainedError, match="the weights have no h.1.mlp.c_fc.bias"):
        from_pretrained(d)


def test_missing_optional_package_names_the_install(folders, monkeypatch):
    monkeypatch.setitem(sys.modules, "safetensors.torch", None)  # import fails as if not installed
    with pytest.raises(PretrainedError, match=r'safetensors package, part of the optional gpt2 extra: '
                                              r'pip install -e "\.\[gpt2\]"'):
        from_pretrained(folders["safetensors"])
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)
    with pytest.raises(PretrainedError, match="huggingface_hub package"):
        from_pretrained("gpt2")


OFFLINE = """
import os, shutil, sys
from pathlib import Path
from model.pretrained import PretrainedError, from_pretrained
try:
    from_pretrained("gpt2")
except PretrainedError as e:
    print("ERROR:", e)
# the layout huggingface_hub leaves in its cache: refs/main names a commit, snapshots/<commit>/ the files
repo = Path(os.environ["HF_HOME"]) / "hub" / "models--openai-community--gpt2"
(repo / "refs").mkdir(parents=True)
(repo / "refs" / "main").write_text("0" * 40)
shutil.copytree(sys.argv[1], repo / "snapshots" / ("0" * 40))
print("LOADED:", from_pretrained("gpt2").config.n_layer)
from data import GPT2Tokenizer  # tiktoken's cache is empty: GPT-2's tokenizer comes from the same files
print("TOKENIZER:", GPT2Tokenizer().vocab_size)
"""


def test_hub_name_offline(folders, tmp_path):
    """HF_HUB_OFFLINE=1 and an empty cache: one clear error naming both fixes; once the files
    are in the cache, the name loads offline. A fresh process: huggingface_hub reads both
    variables when it is imported."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_"))}
    env.update(HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf"), OMP_NUM_THREADS="1",
               TIKTOKEN_CACHE_DIR=str(tmp_path / "tiktoken"))
    run = subprocess.run([sys.executable, "-c", OFFLINE, str(folders["safetensors"])], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    error, loaded, tokenizer = run.stdout.strip().splitlines()
    assert tokenizer == f"TOKENIZER: {VOCAB}"
    assert error.startswith("ERROR: openai-community/gpt2 is not in Hugging Face's cache")
    assert "(HF_HUB_OFFLINE is set)" in error and "run once with a network" in error
    assert "https://huggingface.co/openai-community/gpt2 into a folder and pass that folder's path" in error
    assert loaded == "LOADED: 2"


# ---------------------------------------------------------------- fine-tune and sample from the command line

def finetune_args(folder, corpus, out, *extra):
    return [f"--init_from={folder}", "--tokenizer=gpt2", f"--dataset={corpus}", f"--data_root={out.parent / 'data'}",
            f"--out_dir={out}", "--device=cpu", "--block_size=32", "--batch_size=4", "--max_iters=6",
            "--eval_interval=3", "--eval_iters=2", "--log_interval=1", "--warmup_iters=0", "--dropout=0.0",
            "--learning_rate=1e-3", "--lr_decay_iters=6", *extra]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("ft") / "text.txt"
    path.write_text((TEXT + "\n\n") * 40, encoding="utf-8")
    return path


def test_finetune_starts_from_the_weights_then_resumes_and_samples(folders, corpus, tmp_path, capsys):
    import sample
    import train
    from model.checkpoint import load_checkpoint, load_run
    # learning rate 0: what is saved is exactly GPT-2's weights (the loop, not a random init)
    frozen = tmp_path / "frozen"
    assert train.main(finetune_args(folders["safetensors"], corpus, frozen, "--learning_rate=0")) == 0
    ref = from_pretrained(folders["safetensors"], block_size=32).state_dict()
    saved = load_checkpoint(frozen / "last.pt")
    assert saved["model_config"]["mlp_act"] == "gelu_tanh" and saved["model_config"]["n_layer"] == 2
    assert all(torch.equal(saved["model"][k], v) for k, v in ref.items())
    # a real fine-tune: the loss falls, it resumes exactly, and samples like any run
    out, straight = tmp_path / "out", tmp_path / "straight"
    assert train.main(finetune_args(folders["safetensors"], corpus, straight)) == 0
    assert train.main(finetune_args(folders["safetensors"], corpus, out, "--max_iters=3")) == 0
    assert train.main([f"--out_dir={out}", "--init_from=resume", "--max_iters=6"]) == 0
    logs = [[json.loads(line) for line in (d / "metrics.jsonl").read_text().splitlines()] for d in (out, straight)]
    losses = [[r["loss"] for r in log if r["kind"] == "train"] for log in logs]
    assert losses[0] == losses[1] and losses[0][-1] < losses[0][0]
    model, tok = load_run(out)
    assert model.config.mlp_act == "gelu_tanh" and tok.encode("the weather") == GPT2Tokenizer.from_files(
        folders["safetensors"] / "vocab.json", folders["safetensors"] / "merges.txt").encode("the weather")
    capsys.readouterr()
    assert sample.main([f"--out_dir={out}", "--prompt=the weather", "--max_new_tokens=8", "--temperature=0"]) == 0
    assert capsys.readouterr().out.startswith("the weather")


def test_finetune_needs_gpt2s_tokenizer(folders, corpus, tmp_path, capsys):
    import train
    args = [a for a in finetune_args(folders["safetensors"], corpus, tmp_path / "out") if a != "--tokenizer=gpt2"]
    assert train.main(args + ["--tokenizer=char"]) == 1
    assert "add --tokenizer=gpt2" in capsys.readouterr().err


def test_finetune_refuses_model_settings_the_weights_do_not_have(folders, corpus, tmp_path, capsys):
    """The weights decide the shape: a model setting asked for beside them is an error, not
    dropped; the ones a fine-tune may change (dropout, a shorter block) still apply."""
    import train
    args = finetune_args(folders["safetensors"], corpus, tmp_path / "out")
    assert train.main(args + ["--n_layer=6", "--qk_norm", "--attn_window=8"]) == 1
    err = capsys.readouterr().err
    assert "n_layer=6 (the weights have 2), attn_window=8 (the weights have 0), qk_norm=True" in err
    assert "Traceback" not in err and not (tmp_path / "out").exists()
    toml = tmp_path / "ft.toml"
    toml.write_text("pos_emb = 'rope'\n")
    assert train.main([str(toml)] + args) == 1
    assert "pos_emb=rope (the weights have learned)" in capsys.readouterr().err
    assert train.main(args + ["--n_layer=2", "--max_iters=1"]) == 0  # what the weights have is fine


@pytest.mark.parametrize("fast", ["false", "true"])
def test_sample_from_gpt2s_weights(hf, folders, capsys, fast):
    """sample.py --init_from=FOLDER streams what transformers' generate() gives, with our cache."""
    import sample
    tok = GPT2Tokenizer.from_files(folders["safetensors"] / "vocab.json", folders["safetensors"] / "merges.txt")
    text = "the weather in the north"
    with torch.no_grad():
        want = hf.generate(torch.tensor([tok.encode(text)]), do_sample=False, max_new_tokens=30, pad_token_id=0)
    capsys.readouterr()
    assert sample.main([f"--init_from={folders['safetensors']}", f"--prompt={text}", "--max_new_tokens=30",
                        "--temperature=0", "--device=cpu", "--dtype=float32", f"--fast={fast}"]) == 0
    out, err = capsys.readouterr()
    assert out.split("\n---------------")[0] == text + tok.decode(want[0, len(tok.encode(text)):].tolist())
    assert ("static cache" in err) == (fast == "true") and "warning" not in err
