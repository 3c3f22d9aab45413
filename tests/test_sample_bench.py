"""A smoke run of bench/bench_decode.py on a tiny model: it runs, and its JSON holds every row."""

import importlib.util
import json
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent / "bench" / "bench_decode.py"


def load_bench():
    spec = importlib.util.spec_from_file_location("bench_decode", BENCH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_quick_run_writes_one_row_per_case(tmp_path, capsys):
    bench = load_bench()
    out = tmp_path / "decode.json"
    assert bench.main(["--quick", "--device=cpu", "--threads=1", "--batch_sizes=1,2",
                       "--uncached_stride=4", f"--out={out}"]) == 0
    printed = capsys.readouterr().out
    result = json.loads(out.read_text())
    rows = result["rows"]
    # tiny: block 32; prompt 1 and 16; three paths; two batch sizes
    assert len(rows) == 2 * 2 * 3
    assert {r["path"] for r in rows} == {"uncached", "cached", "fast"}
    assert {(r["prompt"], r["new"]) for r in rows} == {(1, 31), (16, 16)}
    assert all(r["tok_per_s"] > 0 and r["speedup"] > 0 for r in rows)
    assert all(r["note"].startswith("est.") == (r["path"] == "uncached") for r in rows)
    assert result["machine"]["device"] == "cpu" and "tok/s" in printed and str(out) in printed
    assert result["machine"]["sampling"] == {"temperature": 0.8, "top_k": 200} and "sampling at" in printed


def test_bad_flag_is_one_clear_error(capsys):
    assert load_bench().main(["--sizes=nosuchsize", "--quick"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: no size 'nosuchsize'") and err.count("\n") == 1


def test_samples_like_sample_py_unless_greedy(tmp_path, capsys):
    """The bench times what sample.py runs: its default sampling settings, sampling included."""
    import sample
    bench = load_bench()
    assert bench.SAMPLING == dict(temperature=sample.SampleConfig.temperature, top_k=sample.SampleConfig.top_k)
    out = tmp_path / "decode.json"
    assert bench.main(["--quick", "--device=cpu", "--threads=1", "--batch_sizes=1", "--paths=cached,fast",
                       "--greedy", f"--out={out}"]) == 0
    assert "greedy" in capsys.readouterr().out and json.loads(out.read_text())["machine"]["sampling"] == "greedy"


def test_a_size_is_its_configs_model_with_the_base_it_starts_from():
    """--size=NAME builds the model of configs/NAME.toml as train.py reads it, base included
    (speedrun_cpu.toml writes no shape of its own: it is cpu.toml's)."""
    from configs import build, load_config_file
    from training.config import MODEL_FIELDS, TrainConfig
    bench = load_bench()
    for name in ("cpu", "speedrun_cpu", "shakespeare_bpe"):
        cfg = build(TrainConfig, load_config_file(TrainConfig, name))
        shape = bench.model_shape(name)
        assert shape and all(shape[k] == getattr(cfg, k) for k in shape)
        assert set(shape) == {k for k in load_config_file(TrainConfig, name) if k in MODEL_FIELDS} - {"dropout"}
    assert bench.model_shape("speedrun_cpu") == bench.model_shape("cpu")
