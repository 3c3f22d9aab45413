"""sample.py end to end, on a tiny char-level checkpoint trained here (no train.py, no network).

Most tests call sample.main(argv) in-process (fast); two run the real command line."""

import os
import re
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import pytest
import torch

import sample as sample_mod
from conftest import help_groups
from data import BPETokenizer, CharTokenizer
from model import GPT, GPTConfig
from model.checkpoint import save_checkpoint
from model.fast_decode import DecodeCheckError, StaticDecoder

REPO = Path(__file__).resolve().parent.parent
TEXT = ("The cat sat upon the warm grey stone,\nand watched the river run alone.\n"
        "The wind came down the hill at noon,\nand sang the cat a quiet tune.\n") * 4
BLOCK = 16


def save(path, model, tokenizer):
    save_checkpoint(path, {"model": model.state_dict(), "model_config": asdict(model.config),
                           "tokenizer": tokenizer.to_dict(), "config": {}, "iter_num": 0,
                           "best_val_loss": 0.0})


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def trained_dir(tmp_path_factory, **kw):
    """out_dir with ckpt.pt: a 2-layer char model after 60 AdamW steps on TEXT, so its greedy
    choices are clear-cut rather than near-ties of random weights."""
    tok = CharTokenizer.train(TEXT)
    data = torch.tensor(tok.encode(TEXT))
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=BLOCK, n_layer=2, n_head=2, n_embd=32, **kw))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(60):
        ix = torch.randint(len(data) - BLOCK - 1, (16,), generator=g)
        x = torch.stack([data[i:i + BLOCK] for i in ix])
        y = torch.stack([data[i + 1:i + BLOCK + 1] for i in ix])
        _, loss = model(x, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    d = tmp_path_factory.mktemp("run")
    save(d / "ckpt.pt", model, tok)
    return d


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return trained_dir(tmp_path_factory)


@pytest.fixture(scope="module")
def window_dir(tmp_path_factory):
    """The same, with a sliding window of 6 tokens and rotary positions: a rolling model."""
    return trained_dir(tmp_path_factory, pos_emb="rope", attn_window=6)


@pytest.fixture
def run(run_dir, capsys):
    """run(*args) -> (exit code, stdout, stderr) of `python sample.py --out_dir=run_dir *args`."""
    def go(*args, out_dir=run_dir):
        # float32 unless asked: dtype=auto times float32 against bf16 at start, and under load
        # that choice (and so the text) could differ between two runs that are compared
        dtype = [] if any(a.startswith("--dtype") for a in args) else ["--dtype=float32"]
        rc = sample_mod.main([f"--out_dir={out_dir}", "--device=cpu", *dtype, *args])
        out, err = capsys.readouterr()
        return rc, out, err
    return go


def samples(out):
    """stdout -> the samples, without their separator lines."""
    parts = out.split("\n" + sample_mod.SEPARATOR + "\n")
    assert parts[-1] == "", "every sample ends with a separator line"
    return parts[:-1]


# --- the three decode paths agree -------------------------------------------------------------

def test_greedy_cached_equals_uncached_past_block_size(run):
    # 40 new tokens from a 4-token prompt: the window (16) fills and is cut twice
    args = ["--prompt=The ", "--temperature=0", "--max_new_tokens=40"]
    outs = {}
    for path in ("--use_cache=false", "--fast=false", "--fast=true"):
        rc, out, err = run(*args, path)
        assert rc == 0, err
        outs[path] = out
    (text,) = samples(outs["--use_cache=false"])
    assert text.startswith("The ") and len(text) == 4 + 40   # char-level: one token per character
    assert outs["--fast=false"] == outs["--use_cache=false"]
    assert outs["--fast=true"] == outs["--use_cache=false"]


@pytest.mark.parametrize("sampling", [["--temperature=0"], ["--temperature=1.0", "--top_k=5", "--seed=3"]],
                         ids=["greedy", "sampled"])
def test_a_windowed_rope_model_decodes_past_block_size_without_cutting(run, window_dir, sampling):
    """attn_window + RoPE: the rolling cache by default, the whole prompt (longer than block_size)
    read, 4 x block_size new tokens never cut; uncached (the whole text every step) and the
    static ring write the same text, and so does each of 2 samples decoded together."""
    prompt = "and watched the river run alone. The cat"                       # 40 > BLOCK
    args = [f"--prompt={prompt}", f"--max_new_tokens={4 * BLOCK}", *sampling]
    outs = {}
    for flag in ("--fast=auto", "--use_cache=false", "--fast=true"):
        rc, out, err = run(*args, flag, out_dir=window_dir)
        assert rc == 0, err
        assert "longer than block_size" not in err                           # nothing was cut
        outs[flag] = (out, err)
    (text,) = samples(outs["--fast=auto"][0])
    assert text.startswith(prompt) and len(text) == len(prompt) + 4 * BLOCK
    assert "decode: rolling KV cache (a ring of 6 slots per layer)" in outs["--fast=auto"][1]
    assert "decode: static ring cache" in outs["--fast=true"][1]
    assert outs["--use_cache=false"][0] == outs["--fast=auto"][0] == outs["--fast=true"][0]
    if sampling == ["--temperature=0"]:
        assert len(set(text[len(prompt):])) > 5                               # not one letter
        two = samples(run(*args, "--num_samples=2", out_dir=window_dir)[1])
        assert two == [text, text]


def test_paths_are_named_on_stderr(run):
    for flag, name in [("--use_cache=false", "uncached"), ("--fast=false", "KV cache"),
                       ("--fast=true", "static cache")]:
        rc, _, err = run("--max_new_tokens=3", flag)
        assert rc == 0 and f"decode: {name}" in err


def test_seed_reproducible(run):
    args = ["--prompt=The", "--temperature=1.0", "--max_new_tokens=30"]
    a, b, c = run(*args, "--seed=1")[1], run(*args, "--seed=1")[1], run(*args, "--seed=2")[1]
    assert a == b
    assert a != c


def test_sampling_matches_across_paths_with_a_seed(run):
    args = ["--prompt=The", "--temperature=1.0", "--top_k=5", "--top_p=0.9", "--max_new_tokens=30"]
    assert run(*args, "--fast=false")[1] == run(*args, "--use_cache=false")[1] == run(*args, "--fast=true")[1]


# --- the fast path checks itself and falls back ------------------------------------------------

def _replay_raises(dec):
    raise RuntimeError("boom")


def _replay_negated(dec):
    dec._run(dec._slots())
    dec.logits.neg_()              # the likeliest token becomes the least likely: other text


def _compile_fails(fn, **kw):
    raise RuntimeError("no C++ compiler found")


def _compiled_step_raises(fn, **kw):
    def step(dec, slots):
        raise RuntimeError("inductor failed")
    return step


def _compiled_step_negated(fn, **kw):
    def step(dec, slots):
        fn(dec, slots)
        dec.logits.neg_()
    return step


def warnings(err):
    return [line for line in err.splitlines() if line.startswith("warning:")]


# what breaks -> (what to patch, its stand-in, sample.py flags, the cause the warning names)
BROKEN = {
    "graph replay raises": (StaticDecoder, "_replay", _replay_raises, [], "raised RuntimeError: boom"),
    "graph replay wrong": (StaticDecoder, "_replay", _replay_negated, [], "gives logits off by"),
    "compile fails": (torch, "compile", _compile_fails, ["--compile"], "to build: RuntimeError: no C++"),
    "compiled step raises": (torch, "compile", _compiled_step_raises, ["--compile"],
                             "the compiled step raised RuntimeError: inductor failed"),
    "compiled step wrong": (torch, "compile", _compiled_step_negated, ["--compile"],
                            "the compiled step gives logits off by"),
}


@pytest.mark.parametrize("broken", BROKEN)
def test_a_failing_fast_path_falls_back_to_the_plain_cache(run, monkeypatch, broken):
    """--fast runs code that never ran before on the user's GPU; if its self-check fails, the
    sample comes from the plain KV cache, the same text, after one warning line."""
    owner, name, fault, flags, cause = BROKEN[broken]
    args = ["--prompt=The", "--max_new_tokens=30", "--num_samples=2"]   # sampled, sample.py's defaults
    rc, plain, plain_err = run(*args, "--fast=false")
    assert rc == 0 and warnings(plain_err) == []
    monkeypatch.setattr(owner, name, fault)
    rc, out, err = run(*args, "--fast=true", *flags)
    assert rc == 0 and out == plain
    (warning,) = warnings(err)
    assert cause in warning and warning.endswith("decoding with the plain KV cache instead")
    assert "decode: KV cache on cpu" in err


def test_a_healthy_fast_path_passes_its_check_silently(run, monkeypatch):
    args = ["--prompt=The", "--max_new_tokens=30", "--num_samples=2"]
    plain = run(*args, "--fast=false")[1]
    real_compile = torch.compile  # the compiled step through the eager backend: no C++ build
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: real_compile(fn, backend="eager", **kw))
    for flags in (["--fast=true"], ["--fast=true", "--compile"]):
        rc, out, err = run(*args, *flags)
        assert rc == 0 and out == plain and warnings(err) == [], err
        assert "decode: static cache" in err
    torch._dynamo.reset()


# --- what the user sees -------------------------------------------------------------------------

def test_streams_before_generation_ends(run_dir, monkeypatch):
    """Text reaches stdout while tokens are still being generated: each write is tagged with the
    number of decode steps taken so far, and the first sample's text arrives over many steps."""
    steps = [0]
    real_decode = sample_mod.decode

    def counting_decode(*args, **kwargs):
        for item in real_decode(*args, **kwargs):
            steps[0] += 1
            yield item

    class Recorder:
        def __init__(self):
            self.writes = []

        def write(self, s):
            self.writes.append((steps[0], s))

        def flush(self):
            pass

    monkeypatch.setattr(sample_mod, "decode", counting_decode)
    out = Recorder()
    cfg = sample_mod.SampleConfig(out_dir=str(run_dir), device="cpu", fast="false",
                                  prompt="The", max_new_tokens=20)
    rows = sample_mod.sample(cfg, out=out, err=Recorder())
    during = [s for n, s in out.writes if 0 < n < 20 and s]
    assert len(during) >= 10, out.writes          # one write per token on CPU
    text = "".join(s for _, s in out.writes)
    assert text == "The" + CharTokenizer.train(TEXT).decode(rows[0]) + "\n" + sample_mod.SEPARATOR + "\n"


def test_stderr_reports_prompt_length_tokens_and_speed(run):
    rc, out, err = run("--prompt=The cat", "--max_new_tokens=12", "--num_samples=2")
    assert rc == 0
    assert "prompt: 7 tokens" in err
    assert "generated: 2 x 12 = 24 tokens" in err and "tokens/s" in err
    assert "tokens/s" not in out


def test_num_samples_one_batch_separated(run):
    rc, out, err = run("--prompt=The", "--temperature=1.0", "--max_new_tokens=25", "--num_samples=3")
    assert rc == 0, err
    texts = samples(out)
    assert len(texts) == 3
    assert all(t.startswith("The") and len(t) == 3 + 25 for t in texts)
    assert len(set(texts)) > 1                     # independent samples, not copies
    # greedy: every sample continues the shared prefill identically, and equals a single sample
    greedy = ["--prompt=The", "--temperature=0", "--max_new_tokens=25"]
    for flag in ("--fast=false", "--fast=true", "--use_cache=false"):
        many = samples(run(*greedy, "--num_samples=3", flag)[1])
        assert many == samples(run(*greedy, flag)[1]) * 3


def test_long_generation_and_long_prompt(run):
    # 3x block_size new tokens, and a prompt longer than the window (cut to its last 16 tokens)
    prompt = "and watched the river run alone. The cat"
    for flag in ("--fast=false", "--fast=true"):
        rc, out, err = run(f"--prompt={prompt}", "--temperature=0", "--max_new_tokens=48", flag)
        assert rc == 0, err
        assert len(samples(out)[0]) == len(prompt) + 48
        assert f"prompt: {len(prompt)} tokens (longer than block_size {BLOCK}" in err
    assert run(f"--prompt={prompt}", "--temperature=0", "--max_new_tokens=48", "--use_cache=false")[1] == out


def test_empty_prompt_starts_from_a_newline(run):
    rc, out, err = run("--max_new_tokens=10")
    assert rc == 0, err
    assert "prompt: 1 tokens" in err and len(samples(out)[0]) == 10


def test_prompt_file(run, tmp_path):
    f = tmp_path / "p.txt"
    f.write_text("The cat", encoding="utf-8")
    a = run(f"--prompt_file={f}", "--temperature=0", "--max_new_tokens=8")[1]
    assert a == run("--prompt=The cat", "--temperature=0", "--max_new_tokens=8")[1]


def test_zero_new_tokens_prints_the_prompt(run):
    rc, out, err = run("--prompt=The", "--max_new_tokens=0")
    assert rc == 0 and samples(out) == ["The"]


def test_last_pt_and_bpe_checkpoint(run, run_dir, tmp_path):
    # a byte-level BPE checkpoint (random weights): any text encodes, output decodes back
    tok = BPETokenizer.train(TEXT + "café naïve €uro\n", 300)
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=BLOCK, n_layer=1, n_head=2, n_embd=16))
    save(tmp_path / "last.pt", model, tok)
    rc, out, err = run("--ckpt=last.pt", "--prompt=Zoë €", "--max_new_tokens=20", "--num_samples=2",
                       out_dir=tmp_path)
    assert rc == 0, err
    texts = samples(out)
    assert len(texts) == 2 and all(t.startswith("Zoë €") for t in texts)
    assert "generated: 2 x 20 = 40 tokens" in err


def test_attention_page_is_wired(run, run_dir, tmp_path, monkeypatch):
    """--attention_html hands the first sample (prompt + new tokens) to the page writer."""
    calls = []
    monkeypatch.setattr(sample_mod, "write_attention_page",
                        lambda path, model, tok, tokens, **kw: calls.append((path, tokens, kw)))
    (run_dir / "metrics.jsonl").write_text('{"kind": "train", "iter": 0, "loss": 3.0}\n')
    try:
        rc, out, err = run("--prompt=The", "--temperature=0", "--max_new_tokens=6", "--num_samples=2",
                           f"--attention_html={tmp_path / 'a.html'}")
    finally:
        (run_dir / "metrics.jsonl").unlink()
    assert rc == 0, err
    (path, tokens, kw), = calls
    tok = CharTokenizer.train(TEXT)
    assert path == str(tmp_path / "a.html") and tok.decode(tokens) == samples(out)[0]
    assert kw["metrics_path"] == run_dir / "metrics.jsonl" and kw["prompt_len"] == 3


# --- bad input: one clear line, exit 1 ----------------------------------------------------------

BAD = [
    (["--max_new_tokens=-1"], "--max_new_tokens=-1: must be an integer >= 0"),
    (["--top_p=0"], "--top_p=0.0: must be a number in (0, 1]"),
    (["--top_p=1.5"], "--top_p=1.5: must be a number in (0, 1]"),
    (["--top_p=nan"], "--top_p must be a finite number, got 'nan'"),
    (["--top_k=0"], "--top_k=0: must be an integer >= 1"),
    (["--temperature=-1"], "--temperature=-1.0: must be a finite number >= 0"),
    (["--temperature=nan"], "--temperature must be a finite number, got 'nan'"),
    (["--temperature=inf"], "--temperature must be a finite number, got 'inf'"),
    (["--num_samples=0"], "--num_samples=0: must be an integer >= 1"),
    (["--max_new_tokens=ten"], "--max_new_tokens must be an int"),
    (["--temprature=0.5"], "did you mean temperature"),
    (["--prompt=Zoo €"], "not in the vocabulary: 'Z', '€'"),
    (["--prompt=a", "--prompt_file=p.txt"], "not both"),
    (["--prompt_file=/no/such/prompt.txt"], "does not exist"),
    (["--ckpt=last.pt"], "no checkpoint last.pt in"),
    (["--use_cache=false", "--compile"], "--compile compiles the fast"),
    (["--device=tpu"], "--device=tpu"),
]


@pytest.mark.parametrize("args,message", BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_input_one_clear_message(run, args, message):
    rc, out, err = run(*args)
    assert rc == 1 and out == ""
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert message in err, err


@pytest.mark.parametrize("word", ["cpu", "shakespeare_char", "out"])
def test_a_config_or_other_word_is_refused_pointing_to_out_dir(run, word):
    # sample.py reads no training config: configs/cpu.toml's keys must not reach SampleConfig
    rc, out, err = run(word)
    assert rc == 1 and out == "" and err.count("\n") == 1, err
    assert err.startswith(f"error: sample.py takes --key=value (or --key value) settings only, not {word!r}")
    assert "--out_dir=DIR" in err and "unknown key" not in err


def test_help_lists_its_own_settings_only(capsys):
    with pytest.raises(SystemExit) as e:
        sample_mod.main(["--help"])
    out = capsys.readouterr().out
    assert e.value.code == 0 and out.startswith("usage: sample.py [--key=value ...]\n")
    assert "--out_dir=out" in out and "--temperature=0.8" in out and "--key value" in out
    assert "CONFIG" not in out and "configs/" not in out and "shakespeare_char" not in out
    groups = help_groups(out)
    assert list(groups) == ["what to sample from", "the prompt", "sampling", "decoding and system", "output"]
    assert sorted(k for keys in groups.values() for k in keys) == sorted(asdict(sample_mod.SampleConfig()))


def test_key_space_value(run):
    spaced = run("--prompt", "The ", "--temperature", "0", "--max_new_tokens", "12", "--fast", "false")
    joined = run("--prompt=The ", "--temperature=0", "--max_new_tokens=12", "--fast=false")
    assert spaced[:2] == joined[:2] and joined[0] == 0  # same exit code, same text


def test_missing_out_dir(run, tmp_path):
    rc, out, err = run(out_dir=tmp_path / "nope")
    assert rc == 1 and "does not exist: train first" in err and err.count("\n") == 1


def test_checkpoint_list_and_corrupt_checkpoint(run, run_dir, tmp_path):
    rc, _, err = run("--ckpt=last.pt")
    assert "it has ckpt.pt" in err
    (tmp_path / "ckpt.pt").write_bytes(b"not a checkpoint")
    rc, out, err = run(out_dir=tmp_path)
    assert rc == 1 and "not a readable checkpoint" in err and err.count("\n") == 1


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_cuda_without_a_gpu(run_dir, capsys):
    rc = sample_mod.main([f"--out_dir={run_dir}", "--device=cuda"])
    assert rc == 1 and "no CUDA GPU" in capsys.readouterr().err


# --- the real command line ----------------------------------------------------------------------

def cli(*args):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, str(REPO / "sample.py"), *args], capture_output=True,
                          text=True, cwd=REPO, env=env, timeout=120)


def test_command_line(run_dir):
    p = cli(f"--out_dir={run_dir}", "--device=cpu", "--prompt=The", "--temperature=0", "--max_new_tokens=10")
    assert p.returncode == 0, p.stderr
    assert samples(p.stdout)[0].startswith("The") and "tokens/s" in p.stderr
    p = cli(f"--out_dir={run_dir}", "--top_p=2")
    assert p.returncode == 1 and p.stderr.startswith("error: --top_p=2.0") and "Traceback" not in p.stderr


@pytest.mark.cuda
def test_cuda_graph_path_prints_the_same_text(run_dir, capsys):
    args = [f"--out_dir={run_dir}", "--device=cuda", "--dtype=float32", "--prompt=The",
            "--temperature=0", "--max_new_tokens=40", "--num_samples=2"]
    outs = []
    for flag in ("--fast=auto", "--fast=false", "--use_cache=false"):
        assert sample_mod.main([*args, flag]) == 0
        out, err = capsys.readouterr()
        outs.append(out)
        if flag == "--fast=auto":
            assert "static cache + CUDA graph" in err and warnings(err) == []  # verify() passed
    assert outs[0] == outs[1] == outs[2]


# --- speculative decoding ---------------------------------------------------------------------

def test_speculate_prints_the_same_greedy_text_and_its_acceptance(run, tmp_path):
    # 40 tokens past block_size 16: the same text as the plain cache, guessed from the text's own
    # repeats alone (no prepared data has this tokenizer: one warning), then also from the
    # n-gram table of a train.bin given with --draft_data
    args = ["--prompt=The ", "--temperature=0", "--max_new_tokens=40"]
    _, plain, _ = run(*args, "--fast=false")
    rc, out, err = run(*args, "--speculate=4")
    assert rc == 0 and out == plain, err
    assert warnings(err) == ["warning: --speculate found no prepared training data with this model's "
                             "tokenizer (give --draft_data=PATH/train.bin); guessing from the text's "
                             "own repeats only"]
    assert "decode: speculative, 4 guesses a forward (text lookup), KV cache on cpu" in err
    assert re.search(r"speculation: \d+ of \d+ guesses accepted \(\d+%\), \d+ forwards for 40 tokens", err), err
    from data.prepare import prepare
    (tmp_path / "text.txt").write_text(TEXT)
    data = prepare(str(tmp_path / "text.txt"), "char", root=tmp_path / "prepared", quiet=True)
    rc, out, err = run(*args, "--speculate=4", f"--draft_data={data}")
    assert rc == 0 and out == plain and "warning" not in err, err
    assert f"(text lookup + the 4-gram table of {data / 'train.bin'})" in err
    rc, out, err = run("--prompt=The ", "--max_new_tokens=40", "--speculate=4")  # sampling
    assert rc == 0 and len(samples(out)[0]) == 44, err


def test_speculate_checks_its_guesses_in_the_static_step_and_falls_back(run, monkeypatch):
    """--fast=true (what --fast=auto is on a GPU): the guesses are checked in the static step,
    the same text; a step that fails its self-check costs one warning and the plain cache."""
    args = ["--prompt=The ", "--temperature=0", "--max_new_tokens=40", "--speculate=4"]
    _, plain, _ = run(*args[:3], "--fast=false")
    rc, out, err = run(*args, "--fast=true")
    assert rc == 0 and out == plain, err
    assert "guesses a forward (text lookup), static cache (eager, no CUDA graph) on cpu" in err, err

    def broken(self):
        raise DecodeCheckError("the step gives logits off by 1")
    monkeypatch.setattr(StaticDecoder, "verify", broken)
    rc, out, err = run(*args, "--fast=true")
    assert rc == 0 and out == plain, err
    assert "warning: the fast decode path failed its self-check: the step gives logits off by 1; " \
           "decoding with the plain KV cache instead" in warnings(err)
    assert "guesses a forward (text lookup), KV cache on cpu" in err, err


@pytest.mark.parametrize("args,message", [
    (["--speculate=-1"], "--speculate=-1: must be an integer >= 0"),
    (["--speculate=2", "--num_samples=2"], "--speculate decodes one sample at a time"),
    (["--speculate=2", "--use_cache=false"], "--speculate checks its guesses over the KV cache"),
    (["--speculate=2", "--draft_data=/no/such/train.bin"], "is not a prepared dataset's train.bin"),
])
def test_speculate_bad_settings_one_clear_message(run, args, message):
    rc, out, err = run(*args)
    assert rc == 1 and out == "" and err.count("\n") == 1 and message in err, err
