"""Speculative decoding (model/speculative.py) against plain decoding: the same greedy tokens over
every cache kind, the model's own distribution when sampling, and the drafts' tables."""

import collections
import random

import pytest
import torch

from model import GPT, GPTConfig
from model.fast_decode import StaticDecoder
from model.generate import decode, next_probs, prefill
from model.speculative import NGramDraft, SpeculativeDecoder, TextLookup, accept
from tests.test_fast_decode import CONFIGS, make

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


class Script:
    """Guesses from a script of the whole text (prompt + tokens), a wrong one at every third
    position; the decoder asks with the text so far (TextLookup.text)."""
    order = 10 ** 6

    def __init__(self, script):
        self.script = script

    def propose(self, text, k):
        i = len(text)
        out = []
        for j in range(i, min(i + k, len(self.script))):
            out.append(self.script[j] if j % 3 else (self.script[j] + 1) % 48)
        return out


def static_for(model, k, static):
    """The static check step for k guesses (eager here: the CUDA graph replays this very step),
    or None: the model's forward over the KV cache."""
    return StaticDecoder(model, 1, tokens=k + 1) if static else None


@pytest.mark.parametrize("static", [False, True], ids=["KV cache", "static step"])
@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize("k", [1, 4])
def test_speculative_greedy_equals_plain_greedy(name, k, static):
    """40 tokens past block_size 16 (cuts and re-prefills; a window of 5: a ring of 5 slots), the
    guesses partly right: the same tokens and logits as the plain KV cache, in fewer forwards.
    Checked in the static step too (not a ring: StaticDecoder refuses, sample.py falls back),
    whose fixed k+1 tokens pad fewer guesses, also at the window's end."""
    model = make(**CONFIGS[name])
    if static and model.config.rolling:
        with pytest.raises(ValueError, match="needs a plain cache"):
            static_for(model, k, static)
        return
    idx = torch.tensor([[1, 2, 3]])
    logits, tokens = zip(*decode(model, idx, 40, temperature=0))
    want = torch.cat(tokens).tolist()
    spec = SpeculativeDecoder(model, Script(idx[0].tolist() + want), k, lookup_n=10 ** 6,
                              static=static_for(model, k, static))
    got_logits, got = zip(*spec.decode(idx, 40, temperature=0))
    assert torch.cat(got).tolist() == want
    torch.testing.assert_close(torch.cat(got_logits), torch.cat(logits), atol=1e-4, rtol=1e-4)
    assert 0 < spec.accepted < spec.proposed
    assert spec.forwards < 40 - spec.accepted + 4  # one forward per kept run, plus cuts


def test_a_rejected_guess_leaves_the_ring_as_it_was():
    """A rolling model (window 5, a ring of 5 slots): after a forward whose every guess is
    wrong, the ring holds exactly what one plain step leaves in it."""
    model = make(**CONFIGS["window-rope-gqa"])
    idx = torch.tensor([[1, 2, 3, 4, 5, 6, 7]])                          # the ring is full
    plain = model.new_cache(1)
    with torch.no_grad():
        prefill(model, idx, plain)
        model(torch.tensor([[9]]), cache=plain)
        ring = model.new_cache(1)
        prefill(model, idx, ring)
        start = ring.pos
        saved = SpeculativeDecoder._save_ring(ring, start, 5)
        model(torch.tensor([[9, 1, 1, 1, 1]]), cache=ring)                 # 4 guesses, all dropped
        SpeculativeDecoder._roll_back(ring, start + 1, saved)
    assert ring.pos == plain.pos
    torch.testing.assert_close(ring.k, plain.k, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ring.v, plain.v, atol=1e-5, rtol=1e-5)


LOGITS = torch.tensor([0.5, 1.0, 2.0, 3.0, -1.0])


@pytest.mark.parametrize("kw", [dict(temperature=1.0), dict(temperature=0.7, top_k=3),
                                dict(temperature=1.0, top_p=0.9)], ids=repr)
@pytest.mark.parametrize("guess", [3, 1, 4])   # the likeliest, an unlikely one, a filtered one
def test_the_acceptance_rule_draws_from_the_models_distribution(kw, guess):
    """100k rows, one guess each: the token emitted (kept guess, or a draw from p without it)
    has frequencies within 6 standard deviations of p, and the guess is kept at rate p(guess)."""
    n = 100_000
    p = next_probs(LOGITS[None], **kw)[0].double()
    kept, token = accept(LOGITS.repeat(n, 1), torch.full((n,), guess), generator=torch.Generator().manual_seed(0), **kw)
    freq = torch.bincount(token, minlength=5).double() / n
    tol = 6 * (p * (1 - p) / n).sqrt()
    assert ((freq - p).abs() <= tol).all(), (freq, p)
    assert (freq[p == 0] == 0).all()
    assert abs(kept.double().mean() - p[guess]) <= tol[guess] + 1e-12


def test_the_acceptance_rule_is_argmax_when_greedy():
    kept, token = accept(LOGITS.repeat(2, 1), torch.tensor([3, 2]), temperature=0)
    assert kept.tolist() == [True, False] and token.tolist() == [3, 3]


@pytest.mark.parametrize("static", [False, True], ids=["KV cache", "static step"])
def test_speculative_sampling_has_the_models_distribution(static):
    """Three tokens sampled 1,200 times, the second guessed (always token 2): the triple's
    frequencies match the model's own joint distribution p(a) p(b | a) p(c | a, b), computed
    exactly (6 standard deviations), and the guess was both kept and rejected."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=4, block_size=8, n_layer=1, n_head=2, n_embd=16)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(3)
    prompt = [1, 2]
    with torch.no_grad():
        def p_next(context):
            return torch.softmax(model(torch.tensor([prompt + context]))[0][0, -1], -1).double()
        joint = torch.tensor([p_next([])[a] * p_next([a])[b] * p_next([a, b])[c]
                              for a in range(4) for b in range(4) for c in range(4)])   # (64,)

    class Fixed:
        order = 1

        def propose(self, text, k):
            return [2][:k]

    n, g = 1200, torch.Generator().manual_seed(0)
    counts = torch.zeros(64, dtype=torch.float64)
    spec = SpeculativeDecoder(model, Fixed(), 1, lookup_n=10 ** 6, static=static_for(model, 1, static))
    for _ in range(n):
        a, b, c = [int(t) for _, t in spec.decode(torch.tensor([prompt]), 3, temperature=1.0, generator=g)]
        counts[16 * a + 4 * b + c] += 1
    freq = counts / n
    assert ((freq - joint).abs() <= 6 * (joint * (1 - joint) / n).sqrt() + 1e-9).all(), (freq, joint)
    assert 0 < spec.accepted < spec.proposed


def test_ngram_tables_hold_the_most_frequent_next_token():
    random.seed(0)
    tokens = [random.randrange(5) for _ in range(3000)]
    draft = NGramDraft(tokens, order=3)
    for n in (1, 2, 3):
        follow = collections.defaultdict(collections.Counter)
        for i in range(len(tokens) - n):
            follow[tuple(tokens[i:i + n])][tokens[i + n]] += 1
        keys, nxt = draft.tables[n - 1]
        assert len(keys) == len(follow)
        for key, t in zip(keys.tolist(), nxt.tolist()):
            gram = []
            for _ in range(n):
                key, digit = divmod(key, draft.base)
                gram.insert(0, digit)
            counts = follow[tuple(gram)]
            assert counts[t] == max(counts.values())


def test_ngram_draft_backs_off_to_shorter_contexts():
    draft = NGramDraft([0, 1, 2, 0, 1, 2, 0, 1, 3, 4, 4], order=3)
    assert draft.propose([0, 1], 4) == [2, 0, 1, 2]      # 0 1 -> 2 twice, -> 3 once
    assert draft.propose([4, 4, 9], 2) == []             # 9: never seen
    assert draft.propose([7, 3], 2) == [4, 4]            # (7, 3) unseen: backs off to (3,)


def test_text_lookup_guesses_what_followed_last_time():
    lookup = TextLookup(2)
    lookup.extend([5, 6, 7, 8, 5, 6])
    assert lookup.propose(3) == [7, 8, 5]
    lookup.extend([9])
    assert lookup.propose(3) == []


@pytest.mark.parametrize("name", ["mha-learned", "gqa-rope", "window-learned"])
def test_the_check_step_is_the_models_forward_over_the_cache(name):
    """StaticDecoder.check: T tokens after a prefill give the logits the model's own forward
    over a KV cache gives them; rewind() then drops the last ones as if never written."""
    model = make(**CONFIGS[name])
    dec = StaticDecoder(model, 1, tokens=4)
    idx, more = torch.tensor([[1, 2, 3, 4, 5]]), torch.tensor([[6, 7, 8, 9]])
    with torch.no_grad():
        cache = model.new_cache(1)
        prefill(model, idx, cache)
        want = model(more, cache=cache)[0]                                  # (1, 4, V)
        dec.prefill(idx)
        torch.testing.assert_close(dec.check(more), want, atol=1e-5, rtol=1e-5)
        assert dec.filled == 9
        dec.rewind(6)                                                       # keep 6 of them: 1..6
        cache.pos = 6
        again = torch.tensor([[7, 9, 9, 9]])
        torch.testing.assert_close(dec.check(again), model(again, cache=cache)[0], atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="use check"):
        dec.step(torch.tensor([1]))
