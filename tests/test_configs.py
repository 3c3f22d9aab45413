"""The shared command-line config parser: layers, types, and every mistake's message."""

from dataclasses import dataclass, field
from typing import Literal

import pytest

from conftest import help_groups
from configs import CONFIG_DIR, HIDDEN, ConfigError, available_configs, parse_config


@dataclass
class Demo:
    out_dir: str = "out"            # where things go
    learning_rate: float = 1e-3     # peak learning rate
    n_layer: int = 6
    compile: bool = False
    n_kv_head: int | None = None
    device: Literal["auto", "cpu", "cuda"] = "auto"
    tag: str = field(default="a#b", metadata={"help": "a label"})

    def __post_init__(self):
        if self.n_layer > 100:
            raise ValueError("n_layer must be at most 100")


def parse(*argv):
    return parse_config(Demo, list(argv), prog="demo.py", description="A demo.")


def test_defaults():
    assert parse() == Demo()


def test_overrides_parse_to_the_field_type():
    c = parse("--learning_rate=1", "--n_layer=1e1", "--compile", "--n_kv_head=2", "--device=CPU",
              "--out_dir=x=y")
    assert c.learning_rate == 1.0 and isinstance(c.learning_rate, float)
    assert c.n_layer == 10 and isinstance(c.n_layer, int)
    assert c.compile is True and c.n_kv_head == 2 and c.device == "cpu" and c.out_dir == "x=y"
    assert parse("--n_kv_head=none").n_kv_head is None
    assert parse("--n_kv_head=2", "--n_kv_head=None").n_kv_head is None  # later wins
    for word, value in [("true", True), ("0", False), ("yes", True), ("No", False), ("off", False)]:
        assert parse(f"--compile={word}").compile is value


def test_key_space_value_reads_as_key_equals_value():
    c = parse("--n_layer", "4", "--learning_rate", "-1e-3", "--out_dir", "-x", "--n_kv_head", "none")
    assert (c.n_layer, c.learning_rate, c.out_dir, c.n_kv_head) == (4, -1e-3, "-x", None)
    assert parse("--compile", "--n_layer", "4") == Demo(compile=True, n_layer=4)
    assert parse("--n_layer", "4", "--compile") == Demo(compile=True, n_layer=4)
    for word, value in [("false", False), ("OFF", False), ("1", True), ("yes", True)]:
        assert parse("--compile", word).compile is value  # a bool word after a bool is its value
    assert parse("--device", "CPU", "--tag", "a=b") == Demo(device="cpu", tag="a=b")
    assert parse("--n_layer=2", "--n_layer", "3").n_layer == 3  # later wins, both spellings


def test_optional_bool_takes_none_as_its_value(tmp_path):
    @dataclass
    class Opt:
        compile: bool | None = None
    c = parse_config(Opt, ["--compile", "none"], prog="x", description="")
    assert c.compile is None
    assert parse_config(Opt, ["--compile", "false"], prog="x", description="").compile is False
    assert parse_config(Opt, ["--compile"], prog="x", description="").compile is True


def test_a_bool_flag_then_a_config_file(tmp_path):
    f = tmp_path / "run.toml"
    f.write_text("n_layer = 2\n")
    assert parse("--compile", str(f)) == Demo(compile=True, n_layer=2)


def test_toml_file_then_command_line(tmp_path):
    f = tmp_path / "run.toml"
    f.write_text('# a comment\nn_layer = 2\nlearning_rate = 3\nout_dir = "o"\ncompile = true\n')
    c = parse(str(f), "--n_layer=4")
    assert (c.n_layer, c.learning_rate, c.out_dir, c.compile) == (4, 3.0, "o", True)


def test_bare_name_resolves_to_configs_dir():
    names = available_configs()
    assert names, "configs/ should ship some .toml files"
    with pytest.raises(ConfigError) as e:  # the shipped files are for train.py, not for Demo
        parse(names[0])
    assert "unknown key" in str(e.value) and str(CONFIG_DIR / names[0]) in str(e.value)


@pytest.mark.parametrize("argv, words", [
    (["--learning_rat=1"], ["unknown key 'learning_rat'", "did you mean learning_rate"]),
    (["--n_layer=1.5"], ["--n_layer must be an int", "'1.5'"]),
    (["--learning_rate=fast"], ["--learning_rate must be a float"]),
    (["--learning_rate=nan"], ["--learning_rate must be a finite number, got 'nan'"]),
    (["--learning_rate", "-inf"], ["--learning_rate must be a finite number, got '-inf'"]),
    (["--compile=maybe"], ["must be a bool", "true or false"]),
    (["--device=cdua"], ["one of auto|cpu|cuda", "did you mean cuda"]),
    (["--n_kv_head=two"], ["an int or none"]),
    (["--n_layer"], ["--n_layer needs a value", "--n_layer=VALUE or --n_layer VALUE", "an int"]),
    (["--n_layer", "--compile"], ["--n_layer needs a value"]),  # a --word is never a value
    (["--compile", "4"], ["no config named '4'"]),  # not a bool: the flag alone, then a file
    (["--n_layer", "4", "--learning_rat", "1"], ["unknown key 'learning_rat'"]),
    (["--n_layer=101"], ["n_layer must be at most 100"]),
    (["-n"], ["unexpected argument '-n'"]),
    (["shakespear_char"], ["no config named 'shakespear_char'", "did you mean shakespeare_char"]),
    (["nope.toml"], ["config file nope.toml not found"]),
    (["a.toml", "b.toml"], ["at most one config file"]),
])
def test_mistakes_name_the_fix(argv, words):
    with pytest.raises(ConfigError) as e:
        parse(*argv)
    for w in words:
        assert w in str(e.value)


@pytest.mark.parametrize("text, words", [
    ("n_layr = 2\n", ["unknown key 'n_layr'", "did you mean n_layer"]),
    ("n_layer = 'x'\n", ["n_layer", "must be an int"]),
    ("n_layer = \n", ["not valid TOML"]),
    ("[section]\nn_layer = 2\n", ["flat"]),
    ("learning_rate = nan\n", ["learning_rate (in", "must be a finite number"]),
    ("learning_rate = inf\n", ["learning_rate (in", "must be a finite number"]),
])
def test_bad_toml_files(tmp_path, text, words):
    f = tmp_path / "bad.toml"
    f.write_text(text)
    with pytest.raises(ConfigError) as e:
        parse(str(f))
    for w in words:
        assert w in str(e.value)


def test_help_lists_every_key_with_default_type_and_help(capsys, tmp_path):
    with pytest.raises(SystemExit) as e:
        parse("--help")
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "usage: demo.py" in out and "A demo." in out
    for line in ["--out_dir=out", "--learning_rate=0.001", "--n_layer=6", "--compile=false",
                 "--n_kv_head=none", "--device=auto", "--tag=a#b"]:
        assert line in out
    assert "peak learning rate" in out and "where things go" in out and "a label" in out
    assert "int or none" in out and "auto|cpu|cuda" in out
    # with a file, --help shows the file's values and says where they came from
    f = tmp_path / "run.toml"
    f.write_text("n_layer = 2\n")
    with pytest.raises(SystemExit):
        parse(str(f), "-h")
    assert "--n_layer=2" in capsys.readouterr().out


def test_read_args_returns_only_what_was_set(tmp_path):
    from configs import build, load_config_file, read_args
    f = tmp_path / "run.toml"
    f.write_text("n_layer = 2\n")
    path, values = read_args(Demo, [str(f), "--compile"], prog="demo.py", description="")
    assert path == f and values == {"n_layer": 2, "compile": True}
    assert load_config_file(Demo, str(f)) == {"n_layer": 2}
    assert build(Demo, {**values, "tag": "t"}) == Demo(n_layer=2, compile=True, tag="t")
    assert read_args(Demo, [], prog="demo.py", description="") == (None, {})


def test_help_says_both_spellings(capsys):
    with pytest.raises(SystemExit):
        parse("--help")
    out = capsys.readouterr().out
    assert "--key=value or --key value" in out and "--compile false" in out


def test_help_wins_over_a_mistake_beside_it(capsys):
    for argv in (["--n_layr", "4", "--help"], ["--n_layer", "-h"], ["a.toml", "b.toml", "-h"]):
        with pytest.raises(SystemExit) as e:
            parse(*argv)
        assert e.value.code == 0 and "usage: demo.py" in capsys.readouterr().out


def parse_no_config(*argv):
    return parse_config(Demo, list(argv), prog="demo.py", description="A demo.",
                        no_config="name the run with --out_dir=DIR")


def test_no_config_program_lists_only_its_settings(capsys):
    with pytest.raises(SystemExit) as e:
        parse_no_config("--help")
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: demo.py [--key=value ...]\n") and "--n_layer=6" in out
    assert "CONFIG" not in out and "configs/" not in out
    assert ", ".join(available_configs()) not in out  # the training configs are not offered
    assert parse_no_config("--n_layer", "2") == Demo(n_layer=2)


@pytest.mark.parametrize("argv", [[available_configs()[0]], ["run.toml"], ["--n_layer", "2", "out"]])
def test_no_config_program_refuses_a_word_with_its_hint(argv):
    with pytest.raises(ConfigError) as e:
        parse_no_config(*argv)
    msg = str(e.value)
    assert msg.startswith("demo.py takes --key=value (or --key value) settings only, not ")
    assert repr(argv[-1]) in msg and msg.endswith("; name the run with --out_dir=DIR")
    assert "\n" not in msg


@dataclass
class Shape:
    # -- model --
    n_layer: int = 6                # blocks


@dataclass
class Grouped(Shape):
    name: str = "run"               # before any heading of its class: listed first, under none
    # -- data --
    dataset: str = "x"              # the corpus
    root: str | None = field(default=None, metadata=HIDDEN)  # for the tests only
    # -- system --
    seed: int = 0                   # same seed, same run
    tag: str = field(default="t", metadata={"help": "a label"})


def test_help_lists_each_setting_once_under_its_heading(capsys):
    with pytest.raises(SystemExit):
        parse_config(Grouped, ["--help"], prog="g.py", description="Grouped.")
    out = capsys.readouterr().out
    assert help_groups(out) == {"": ["name"], "model": ["n_layer"], "data": ["dataset"], "system": ["seed", "tag"]}
    for text in ["blocks", "the corpus", "same seed, same run", "a label"]:  # the base's comments too
        assert text in out, text
    assert "--root" not in out and "for the tests only" not in out
    # hidden from --help, not from the command line
    assert parse_config(Grouped, ["--root=r", "--n_layer=2"], prog="g.py", description="") == \
        Grouped(root="r", n_layer=2)


def test_a_file_starts_from_its_base(tmp_path, capsys):
    """`base = ...` reads that file first and the file's own lines over it, by path (from the
    including file's folder, whatever the working directory) or by name in configs/; --help
    names the file each value came from."""
    (tmp_path / "parent.toml").write_text('n_layer = 2\nlearning_rate = 0.5\ntag = "p"\n')
    (tmp_path / "sub").mkdir()
    child = tmp_path / "sub" / "child.toml"
    child.write_text('base = "../parent.toml"\nlearning_rate = 0.25\n')
    grandchild = tmp_path / "grandchild.toml"
    grandchild.write_text('base = "sub/child.toml"\ntag = "g"\n')
    assert parse(str(child)) == Demo(n_layer=2, learning_rate=0.25, tag="p")
    assert parse(str(grandchild), "--n_layer=3") == Demo(n_layer=3, learning_rate=0.25, tag="g")
    with pytest.raises(SystemExit):
        parse(str(grandchild), "--help")
    rows = {line.split()[0]: line for line in capsys.readouterr().out.splitlines() if line.startswith("  --")}
    assert rows["--n_layer=2"].endswith("[from parent.toml]")
    assert rows["--learning_rate=0.25"].endswith("[from child.toml]")
    assert rows["--tag=g"].endswith("[from grandchild.toml]")


def test_a_base_by_name_is_a_config_in_configs(tmp_path):
    from configs import load_config_file
    from training.config import TrainConfig
    mine = tmp_path / "mine.toml"
    mine.write_text('base = "cpu"\nmax_iters = 7\n')
    assert load_config_file(TrainConfig, str(mine)) == {**load_config_file(TrainConfig, "cpu"), "max_iters": 7}


@pytest.mark.parametrize("text, message", [
    ('base = 3\n', "base in .* must be a config's name or a .toml path, got 3"),
    ('base = "cpux"\n', "base = 'cpux' in .*: no config named 'cpux': did you mean cpu\\?"),
    ('base = "gone.toml"\n', "base = 'gone.toml' in .*: config file .*gone.toml not found"),
    ('base = "a.toml"\n', "base = 'a.toml' in .*a.toml leads back to .*a.toml"),
])
def test_a_bad_base_is_one_error_naming_the_file(tmp_path, text, message):
    (tmp_path / "a.toml").write_text(text)
    with pytest.raises(ConfigError, match=message):
        parse(str(tmp_path / "a.toml"))


def test_a_loop_of_bases_is_an_error_not_a_hang(tmp_path):
    (tmp_path / "a.toml").write_text('base = "b.toml"\n')
    (tmp_path / "b.toml").write_text('base = "a.toml"\nn_layer = 2\n')
    with pytest.raises(ConfigError, match="base = 'a.toml' in .*b.toml leads back to .*a.toml"):
        parse(str(tmp_path / "a.toml"))
