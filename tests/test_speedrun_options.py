"""The speedrun options in train.py (issue 7): Muon, the WSD schedule, the resident dataset,
the exact val pass and stop_at_val_loss; a run with all of them on trains, resumes exactly
and samples."""

import subprocess
import sys

import pytest
import torch

import train
from common.errors import ConfigError
from configs import available_configs, build, load_config_file
from training.config import TrainConfig, load_settings
from training.env import Phases, start_env
from training.optim import MOMENTUM_START, lr_scale, make_optimizers, muon_momentum_at, set_schedule
from model import GPT, GPTConfig
from model.checkpoint import load_checkpoint, model_from_checkpoint
from training.muon import Muon
from tests.test_train import ROOT, corpus, losses, records, tiny  # noqa: F401 (corpus is a fixture)

pytestmark = pytest.mark.usefixtures("one_thread")

SPEEDRUN = ["--optimizer=muon", "--muon_lr=0.02", "--lr_schedule=wsd", "--cooldown_frac=0.5",
            "--pos_emb=rope", "--norm=rmsnorm", "--embed_norm", "--qk_norm", "--mlp_act=relu2",
            "--zero_init", "--tie_embeddings=false", "--logit_softcap=15", "--data_on_device",
            "--eval_full_val", "--learning_rate=3e-3"]


def test_wsd_schedule():
    c = TrainConfig(learning_rate=1.0, min_lr=0.0, warmup_iters=10, lr_decay_iters=100,
                    lr_schedule="wsd", cooldown_frac=0.2)
    lrs = [c.learning_rate * lr_scale(i, c) for i in range(110)]
    assert lrs[9] == pytest.approx(10 / 11)                          # warmup as before
    assert all(lr == 1.0 for lr in lrs[10:81])                       # stable until the cooldown
    assert lrs[90] == pytest.approx(0.5) and lrs[100] == 0.0 and lrs[109] == 0.0  # linear to min_lr
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))


def test_muon_momentum_warms_up_then_holds():
    c = TrainConfig(optimizer="muon", muon_momentum=0.95, muon_momentum_warmup=10, learning_rate=1.0,
                    warmup_iters=0, decay_lr=False)
    ramp = [muon_momentum_at(i, c) for i in range(15)]
    assert ramp[0] == MOMENTUM_START and ramp[5] == pytest.approx((MOMENTUM_START + 0.95) / 2)
    assert all(a < b for a, b in zip(ramp[:10], ramp[1:11])) and ramp[10:] == [0.95] * 5
    assert muon_momentum_at(0, TrainConfig(muon_momentum=0.9)) == 0.9   # no warmup: constant
    # set_schedule puts it in Muon's group (AdamW keeps its betas) with each group's lr
    m = GPT(GPTConfig(vocab_size=10, block_size=8, n_layer=1, n_head=2, n_embd=8))
    muon, adamw = make_optimizers(m, c, torch.device("cpu"))
    for it in (0, 5, 12):
        assert set_schedule([muon, adamw], it, c) == lr_scale(it, c)
        assert muon.param_groups[0]["momentum"] == muon_momentum_at(it, c)
        assert "momentum" not in adamw.param_groups[0]


def test_muon_groups_and_peaks():
    m = GPT(GPTConfig(vocab_size=10, block_size=8, n_layer=1, n_head=2, n_embd=8, bias=True))
    muon, adamw = make_optimizers(m, TrainConfig(optimizer="muon", muon_lr=0.05), torch.device("cpu"))
    assert isinstance(muon, Muon) and muon.param_groups[0]["lr"] == 0.05
    in_muon = {id(p) for g in muon.param_groups for p in g["params"]}
    in_adamw = {id(p) for g in adamw.param_groups for p in g["params"]}
    assert not in_muon & in_adamw and len(in_muon | in_adamw) == len(list(m.parameters()))
    assert id(m.wte.weight) in in_adamw and id(m.wpe.weight) in in_adamw


def decay_per_step(opt) -> float:
    """The most any group of opt shrinks its parameters in a step at its peak: lr * weight_decay."""
    return max(g["peak_lr"] * g["weight_decay"] for g in opt.param_groups)


@pytest.mark.parametrize("config", [None, *available_configs()])
def test_muon_never_decays_harder_than_adamw_by_default(config):
    """Decoupled decay shrinks by lr * wd a step, and Muon's lr is 20x AdamW's: AdamW's
    weight_decay must not reach it. The defaults and every shipped config, with Muon."""
    base = {} if config is None else load_config_file(TrainConfig, config)
    cfg = build(TrainConfig, {**base, "optimizer": "muon"})
    m = GPT(GPTConfig(vocab_size=10, block_size=8, n_layer=1, n_head=2, n_embd=8))
    muon, adamw = make_optimizers(m, cfg, torch.device("cpu"))
    assert decay_per_step(muon) <= decay_per_step(adamw)
    assert muon.param_groups[0]["weight_decay"] == cfg.muon_weight_decay


def test_weight_decay_is_adamws_and_muon_weight_decay_muons():
    m = GPT(GPTConfig(vocab_size=10, block_size=8, n_layer=1, n_head=2, n_embd=8))
    muon, adamw = make_optimizers(m, TrainConfig(optimizer="muon", weight_decay=0.5, muon_weight_decay=0.01),
                                  torch.device("cpu"))
    assert [g["weight_decay"] for g in muon.param_groups] == [0.01]
    assert [g["weight_decay"] for g in adamw.param_groups] == [0.5, 0.0]
    with pytest.raises(ConfigError, match="muon_weight_decay must be 0 or more"):
        TrainConfig(muon_weight_decay=-0.1)


def test_a_resumed_run_decays_as_its_settings_say(corpus, tmp_path):
    """The optimizers' saved state must not bring back another decay: a checkpoint whose Muon
    still decayed by weight_decay (0.1) resumes with muon_weight_decay, and either may change."""
    out = tmp_path / "out"
    assert train.main(tiny(corpus, out, "--optimizer=muon", "--max_iters=2")) == 0
    ckpt = load_checkpoint(out / "last.pt")
    ckpt["optimizer"][0]["param_groups"][0]["weight_decay"] = 0.1   # Muon decayed by weight_decay
    del ckpt["config"]["muon_weight_decay"]                          # before the setting existed
    torch.save(ckpt, out / "last.pt")
    for args, muon_wd, adamw_wd in [([], 0.0, 0.1), (["--muon_weight_decay=0.01", "--weight_decay=0"], 0.01, 0.0)]:
        cfg, ckpt, _ = load_settings([f"--out_dir={out}", "--init_from=resume", "--max_iters=4", *args])
        run = train.setup(cfg, ckpt, start_env(cfg), Phases())
        muon, adamw = run.optimizers
        assert [g["weight_decay"] for g in muon.param_groups] == [muon_wd]
        assert [g["weight_decay"] for g in adamw.param_groups] == [adamw_wd, 0.0]


def test_speedrun_options_train_resume_and_sample(corpus, tmp_path):
    straight, out = tmp_path / "straight", tmp_path / "out"
    assert train.main(tiny(corpus, straight, *SPEEDRUN)) == 0
    run = losses(straight)
    assert run[-1][1] < run[0][1]                                     # it learns
    assert all(r["mfu"] is None for r in records(straight, "train"))  # no known peak on a CPU
    assert all("train_time" in r for r in records(straight, "eval"))
    assert records(straight, "warmup")[0]["iter"] == 0
    # exact resume with Muon's momentum and the resident loader's stream in the checkpoint
    assert train.main(tiny(corpus, out, *SPEEDRUN, "--max_iters=3")) == 0
    assert train.main(tiny(corpus, out, "--init_from=resume")) == 0
    assert losses(out) == run
    ckpt = load_checkpoint(out / "last.pt")
    assert len(ckpt["optimizer"]) == 2 and ckpt["model_config"]["qk_norm"]
    # and the checkpoint samples, cached and uncached alike
    texts = [subprocess.run([sys.executable, "sample.py", f"--out_dir={out}", "--prompt=the king",
                             "--max_new_tokens=40", "--temperature=0", f"--use_cache={c}",
                             "--device=cpu", "--dtype=float32"], cwd=ROOT, capture_output=True, text=True,
                            timeout=120)
             for c in ("true", "false")]
    assert texts[0].returncode == 0, texts[0].stderr
    assert texts[0].stdout == texts[1].stdout and texts[0].stdout.startswith("the king")


def test_full_val_pass_is_exact(corpus, tmp_path):
    out = tmp_path / "out"
    assert train.main(tiny(corpus, out, "--eval_full_val", "--max_iters=4", "--dtype=float32")) == 0
    logged = records(out, "eval")[-1]["val_loss"]
    ckpt = load_checkpoint(out / "last.pt")
    model = model_from_checkpoint(ckpt).eval()
    import numpy as np
    from data import load_meta, prepare
    d = prepare(str(corpus / "tiny.txt"), "char", root=corpus / "prepared", quiet=True)
    val = torch.from_numpy(np.fromfile(d / "val.bin", dtype=load_meta(d)["dtype"]).astype(np.int64))
    T = 32
    n = (len(val) - 1) // T * T
    with torch.no_grad():  # every val position predicted exactly once, all in one batch
        _, loss = model(val[:n].view(-1, T), val[1:n + 1].view(-1, T))
    assert logged == pytest.approx(loss.item(), abs=1e-5)


def test_stop_at_val_loss(corpus, tmp_path, capsys):
    out = tmp_path / "out"
    assert train.main(tiny(corpus, out, "--stop_at_val_loss=100", "--max_iters=8")) == 0
    assert "reached val loss" in capsys.readouterr().out
    assert not records(out, "train")                                  # stopped at the first eval
