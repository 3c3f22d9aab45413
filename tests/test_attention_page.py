"""The attention page (viz/attention_page.py) without a browser: the weights it embeds are
the model's own, the window and the caps are said on the page, the loss curve comes from the
metrics log, the page is self-contained, and bad input gets a clear error."""

import json
import math
import os
import re
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import viz.attention_page as ap
import viz.loss_plot as lp
from data import tokenizer_from_dict
from model import GPT, GPTConfig, causal_mask
from viz.attention_page import AttentionPageError, SCALE, write_attention_page
from viz.metrics import read_metrics
from model.checkpoint import save_checkpoint

TEXT = "To be, or not to be: that is"  # 28 characters, inside block_size 32
TOK = tokenizer_from_dict({"kind": "char", "chars": " ,:.!?\nTabehinorstw"})
TOL = 0.5 / SCALE + 1e-6  # the page stores weights rounded to 1/SCALE


def tiny_model(**kw):
    torch.manual_seed(0)
    cfg = dict(vocab_size=TOK.vocab_size, block_size=32, n_layer=2, n_head=4, n_kv_head=2, n_embd=32)
    model = GPT(GPTConfig(**{**cfg, **kw}))
    with torch.no_grad():
        # large random weights give peaked attention that differs between heads; GPT's own
        # init is near uniform, where a mixed-up head or layer would go unnoticed
        for p in model.parameters():
            p.normal_(0.0, 0.3)
    return model.eval()


def embedded(path) -> dict:
    """The JSON the page carries, read back out of the HTML."""
    text = path.read_text(encoding="utf-8")
    m = re.search(r'<script id="attn-data" type="application/json">(.*?)</script>', text, re.S)
    assert m, "no data script in the page"
    # no "<" at all inside: no token text can close the script or open a comment there
    assert "<" not in m.group(1)
    return json.loads(m.group(1))


def check_weights(data, maps):
    """Every embedded row equals the model's weights; the masked part of the model's is 0."""
    T = len(data["tokens"])
    assert len(data["weights"]) == len(maps)
    for layer, w in zip(data["weights"], maps):
        assert w.shape[1] == len(layer) and w.shape[2:] == (T, T)
        for h, rows in enumerate(layer):
            for i, row in enumerate(rows):
                assert len(row) == i + 1  # the causal lower triangle only
                got = torch.tensor(row, dtype=torch.float64) / SCALE
                assert torch.allclose(got, w[0, h, i, :i + 1].double(), atol=TOL, rtol=0), (h, i)
                assert abs(got.sum().item() - 1) <= (i + 1) * TOL  # each row sums to 1 (rounded)
        assert torch.all(w[0].masked_select(~causal_mask(T, T)) == 0)
        assert torch.allclose(w[0].sum(-1), torch.ones(w.shape[1:3]), atol=1e-5)


@pytest.mark.parametrize("kw", [dict(), dict(n_kv_head=4), dict(n_kv_head=1, pos_emb="rope"),
                                dict(attn_impl="explicit", qk_norm=True)],
                         ids=["gqa", "mha", "mqa-rope", "explicit-qknorm"])
def test_page_weights_are_the_models(tmp_path, kw):
    model = tiny_model(**kw)
    tokens = TOK.encode(TEXT)
    path = write_attention_page(tmp_path / "page.html", model, TOK, tokens)
    data = embedded(path)
    maps = model.attention_maps(torch.tensor([tokens]))
    check_weights(data, maps)
    # the test can tell heads and layers apart: they really differ
    assert (maps[0][0, 0] - maps[0][0, 1]).abs().max() > 0.05
    assert (maps[0][0, 0] - maps[1][0, 0]).abs().max() > 0.05
    assert data["tokens"] == [TOK.decode([t]) for t in tokens] and "".join(data["tokens"]) == TEXT
    assert data["n_layer"] == 2 and data["n_head"] == 4 and data["first"] == 0


def test_layer0_weights_match_a_hand_computation(tmp_path):
    """Independent of attention_maps: embeddings -> norm -> q, k -> scaled, masked softmax."""
    model = tiny_model(n_kv_head=4)
    tokens = TOK.encode(TEXT)
    data = embedded(write_attention_page(tmp_path / "p.html", model, TOK, tokens))
    idx = torch.tensor(tokens)
    with torch.no_grad():
        x = model.wte(idx) + model.wpe(torch.arange(len(tokens)))      # (T, C)
        x = model.blocks[0].ln_1(x)
        attn = model.blocks[0].attn
        for h in range(4):
            sl = slice(h * attn.head_size, (h + 1) * attn.head_size)
            q, k = attn.q_proj(x)[:, sl], attn.k_proj(x)[:, sl]          # (T, hs)
            scores = q @ k.T / math.sqrt(attn.head_size)
            w = F.softmax(scores.masked_fill(~causal_mask(len(tokens), len(tokens)), float("-inf")), -1)
            for i, row in enumerate(data["weights"][0][h]):
                assert torch.allclose(torch.tensor(row) / SCALE, w[i, :i + 1], atol=TOL, rtol=0)


def test_long_input_shows_the_last_window_and_says_why(tmp_path):
    model = tiny_model()
    tokens = TOK.encode((TEXT + "\n") * 3)                           # 87 tokens > block_size 32
    path = write_attention_page(tmp_path / "p.html", model, TOK, tokens, prompt_len=40)
    data, page = embedded(path), path.read_text()
    assert len(data["tokens"]) == 32 and data["first"] == len(tokens) - 32 and data["total"] == len(tokens)
    check_weights(data, model.attention_maps(torch.tensor([tokens[-32:]])))
    assert "Showing the last 32 of 87 tokens" in page and "block_size = 32" in page
    assert data["prompt_len"] == 0 and "The prompt lies before this window" in page

    data = embedded(write_attention_page(tmp_path / "q.html", model, TOK, tokens, max_tokens=10))
    check_weights(data, model.attention_maps(torch.tensor([tokens[-10:]])))
    assert "the page shows at most max_tokens = 10" in (tmp_path / "q.html").read_text()


def test_deep_wide_model_is_capped_by_the_weight_budget(tmp_path, monkeypatch):
    monkeypatch.setattr(ap, "MAX_WEIGHTS", 2 * 4 * 55)     # 2 layers x 4 heads x (10 * 11 / 2)
    model = tiny_model()
    tokens = TOK.encode(TEXT)
    path = write_attention_page(tmp_path / "p.html", model, TOK, tokens)
    data = embedded(path)
    assert len(data["tokens"]) == 10
    check_weights(data, model.attention_maps(torch.tensor([tokens[-10:]])))
    assert "fits 10 tokens in the page's budget" in path.read_text()


def test_all_tokens_shown_and_prompt_marked(tmp_path):
    model = tiny_model()
    tokens = TOK.encode(TEXT)
    path = write_attention_page(tmp_path / "p.html", model, TOK, tokens, prompt_len=6)
    assert embedded(path)["prompt_len"] == 6
    page = path.read_text()
    assert f"All {len(tokens)} tokens are shown" in page and "the prompt (6 tokens shown)" in page
    assert embedded(write_attention_page(tmp_path / "q.html", model, TOK, tokens))["prompt_len"] is None


def test_training_mode_and_dropout_do_not_change_the_weights(tmp_path):
    model = tiny_model(dropout=0.5).train()
    tokens = TOK.encode(TEXT)
    data = embedded(write_attention_page(tmp_path / "p.html", model, TOK, tokens))
    assert model.training, "the caller's train/eval mode must be restored"
    check_weights(data, tiny_model(dropout=0.5).eval().attention_maps(torch.tensor([tokens])))


def test_bfloat16_model(tmp_path):
    """sample.py runs bf16 on GPUs: the page shows the bf16 model's own weights, as floats."""
    model = tiny_model().to(torch.bfloat16)
    tokens = TOK.encode(TEXT)
    data = embedded(write_attention_page(tmp_path / "p.html", model, TOK, tokens))
    maps = model.attention_maps(torch.tensor([tokens]))
    for layer, w in zip(data["weights"], maps):
        for h, rows in enumerate(layer):
            for i, row in enumerate(rows):
                assert torch.allclose(torch.tensor(row) / SCALE, w[0, h, i, :i + 1].float(), atol=TOL, rtol=0)


def test_a_windowed_models_band(tmp_path):
    """attn_window = 5: the embedded weights are the model's, exactly 0 outside the band (the
    page hatches those keys), and the summary line says the window."""
    model = tiny_model(attn_window=5)
    tokens = TOK.encode(TEXT)
    path = write_attention_page(tmp_path / "p.html", model, TOK, tokens)
    data, page = embedded(path), path.read_text(encoding="utf-8")
    check_weights(data, model.attention_maps(torch.tensor([tokens])))
    assert data["attn_window"] == 5
    for layer in data["weights"]:
        for rows in layer:
            for i, row in enumerate(rows):
                assert all(w == 0 for w in row[:max(0, i - 4)]) and all(w > 0 for w in row[max(0, i - 4):])
    assert ("Sliding-window attention, attn_window = 5: each token sees itself and the 4 before it; "
            "keys further back are masked, hatched like the future.") in page
    assert "or 5 or more tokens back: outside its window" in page               # the legend
    plain = write_attention_page(tmp_path / "q.html", tiny_model(), TOK, tokens).read_text(encoding="utf-8")
    assert "Sliding-window" not in plain and "masked (a key in the query's future: weight 0)" in plain


def test_a_rolling_model_is_not_cut_at_block_size(tmp_path):
    """Window + RoPE runs past block_size, so the page shows more than block_size tokens (up to
    its own caps); with learned positions the block_size limit stays."""
    tokens = TOK.encode((TEXT + "\n") * 3)                           # 87 tokens > block_size 32
    rolling = tiny_model(pos_emb="rope", attn_window=8)
    data = embedded(write_attention_page(tmp_path / "p.html", rolling, TOK, tokens, max_tokens=60))
    assert len(data["tokens"]) == 60 and data["window_reason"] == "the page shows at most max_tokens = 60"
    check_weights(data, rolling.attention_maps(torch.tensor([tokens[-60:]])))
    data = embedded(write_attention_page(tmp_path / "q.html", tiny_model(attn_window=8), TOK, tokens))
    assert len(data["tokens"]) == 32 and "block_size = 32" in data["window_reason"]


def write_metrics(path):
    lines = [{"kind": "train", "iter": i, "loss": 4.0 - i / 100, "lr": 1e-3, "tok_per_s": 1.0, "mfu": 0.0}
             for i in range(0, 200, 10)]
    lines += [{"kind": "eval", "iter": i, "train_loss": 4.0 - i / 100, "val_loss": 4.1 - i / 100}
              for i in (0, 100, 190)]
    lines.append({"kind": "train", "iter": 50, "loss": 1.5, "lr": 1e-3, "tok_per_s": 1.0, "mfu": 0.0})  # resumed
    text = "\n".join(json.dumps(x) for x in lines)
    path.write_text(text + '\n\n{"kind": "train", "iter": 190, "lo')  # a blank and a cut-off line


def test_loss_curve_from_the_metrics_log(tmp_path):
    metrics = tmp_path / "metrics.jsonl"
    write_metrics(metrics)
    train, evals, bad = read_metrics(metrics)
    assert len(train) == 20 and dict(train)[50] == 1.5 and bad == 1     # later line wins
    assert evals[-1] == (190, pytest.approx(2.1), pytest.approx(2.2))
    page = write_attention_page(tmp_path / "p.html", tiny_model(), TOK, TOK.encode(TEXT),
                                metrics_path=metrics).read_text()
    svg = page[page.index('<svg id="loss-svg"'):page.index("</svg>")]
    assert svg.count("<polyline") == 3
    assert "last eval: iter 190, val loss 2.2000" in page and "1 unreadable line(s)" in page


def test_missing_or_empty_metrics_say_so(tmp_path):
    model, tokens = tiny_model(), TOK.encode(TEXT)
    page = write_attention_page(tmp_path / "a.html", model, TOK, tokens,
                                metrics_path=tmp_path / "nope.jsonl").read_text()
    assert "no metrics log at" in page and "<svg" not in page
    (tmp_path / "empty.jsonl").write_text('{"kind": "train", "iter": 0, "loss": NaN}\n')
    page = write_attention_page(tmp_path / "b.html", model, TOK, tokens,
                                metrics_path=tmp_path / "empty.jsonl").read_text()
    assert "holds no train or eval losses" in page and "<svg" not in page
    page = write_attention_page(tmp_path / "c.html", model, TOK, tokens).read_text()
    assert 'id="loss"' not in page


def test_page_is_self_contained(tmp_path):
    metrics = tmp_path / "metrics.jsonl"
    write_metrics(metrics)
    page = write_attention_page(tmp_path / "p.html", tiny_model(), TOK, TOK.encode(TEXT),
                                metrics_path=metrics).read_text()
    assert "Content-Security-Policy" in page and "default-src 'none'" in page
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:|//)""", page, re.I)
    assert not re.search(r"<script[^>]*\bsrc\b|<link[^>]*stylesheet|@import|url\(", page, re.I)
    assert "http://" not in page and "https://" not in page


class OddTokenizer:
    """Tokens whose text would break a naively written page."""
    pieces = ["</script><script>alert(1)</script>", "&amp;", "__DATA__", "\n", " ", "\u2028", "é"]
    vocab_size = len(pieces)

    def decode(self, ids):
        return "".join(self.pieces[i] for i in ids)


def test_token_text_cannot_break_the_page(tmp_path):
    model = tiny_model(vocab_size=OddTokenizer.vocab_size)
    tokens = [0, 1, 2, 3, 4, 5, 6, 0]
    path = write_attention_page(tmp_path / "p.html", model, OddTokenizer(), tokens)
    page = path.read_text(encoding="utf-8")
    assert page.count("</script>") == 2                  # the data script's and the code's own
    assert embedded(path)["tokens"] == [OddTokenizer.pieces[t] for t in tokens]


def test_bad_input_gets_a_clear_error(tmp_path):
    model = tiny_model()
    with pytest.raises(AttentionPageError, match="no tokens to show"):
        write_attention_page(tmp_path / "p.html", model, TOK, [])
    with pytest.raises(AttentionPageError, match="outside the model's vocabulary"):
        write_attention_page(tmp_path / "p.html", model, TOK, [1, 2, 999])
    with pytest.raises(AttentionPageError, match="max_tokens must be a positive integer"):
        write_attention_page(tmp_path / "p.html", model, TOK, [1, 2], max_tokens=0)
    with pytest.raises(AttentionPageError, match="is a folder"):
        write_attention_page(tmp_path, model, TOK, [1, 2])
    (tmp_path / "file").write_text("x")
    with pytest.raises(AttentionPageError, match="cannot write the attention page"):
        write_attention_page(tmp_path / "file" / "p.html", model, TOK, [1, 2])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]   # nothing half-written


def test_rewriting_replaces_the_page_and_leaves_no_temp_files(tmp_path):
    model = tiny_model()
    path = tmp_path / "sub" / "page.html"                  # missing folders are created
    write_attention_page(path, model, TOK, TOK.encode("To be"))
    write_attention_page(path, model, TOK, TOK.encode(TEXT))
    assert "".join(embedded(path)["tokens"]) == TEXT
    assert [p.name for p in path.parent.iterdir()] == ["page.html"]


def test_nice_ticks_cover_the_range_with_round_steps():
    assert lp.nice_ticks(0, 1000) == [0, 200, 400, 600, 800, 1000]
    ticks = lp.nice_ticks(1.37, 4.21)
    assert ticks[0] <= 1.37 and ticks[-1] >= 4.21 and len(ticks) <= 8
    assert lp.nice_ticks(3.0, 3.0)[0] <= 3.0 <= lp.nice_ticks(3.0, 3.0)[-1]


# -----------------------------------------------------------------------------
# end to end: the sample.py flag, as the README shows it

REPO = Path(__file__).resolve().parent.parent


def run_sample(*args):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}   # a tiny model: threads only fight over cores
    return subprocess.run([sys.executable, "sample.py", "--device=cpu", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)


def test_sample_cli_writes_the_page(tmp_path):
    model = tiny_model(n_kv_head=4)
    save_checkpoint(tmp_path / "ckpt.pt", {"model": model.state_dict(), "model_config": asdict(model.config),
                                           "tokenizer": TOK.to_dict(), "iter_num": 0, "best_val_loss": 0.0})
    write_metrics(tmp_path / "metrics.jsonl")
    page = tmp_path / "attention.html"
    r = run_sample(f"--out_dir={tmp_path}", "--prompt=To be", "--max_new_tokens=12", "--temperature=0",
                   f"--attention_html={page}", "--dtype=float32")  # the float32 model's weights, below
    assert r.returncode == 0, r.stderr
    assert f"attention page: {page}" in r.stderr
    data = embedded(page)
    text = r.stdout.split("\n---")[0]                  # the prompt and the sample, as printed
    assert "".join(data["tokens"]) == text and len(data["tokens"]) == 5 + 12 and data["prompt_len"] == 5
    check_weights(data, model.attention_maps(torch.tensor([data["ids"]])))
    assert '<svg id="loss-svg"' in page.read_text(encoding="utf-8")

    # a page that cannot be written: one clear line, exit 1, and the samples were still printed
    (tmp_path / "file").write_text("x")
    r = run_sample(f"--out_dir={tmp_path}", "--prompt=To be", "--max_new_tokens=3",
                   f"--attention_html={tmp_path / 'file' / 'a.html'}")
    assert r.returncode == 1 and r.stdout.startswith("To be")
    assert r.stderr.strip().splitlines()[-1].startswith("error: --attention_html: cannot write")
    assert "Traceback" not in r.stderr
