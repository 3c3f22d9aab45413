"""Command-line configuration shared by train.py and sample.py, without exec.

A program's settings are one dataclass with typed defaults. Three layers, later wins:

    dataclass defaults  <  a TOML file (configs/NAME.toml, or any path)  <  the command line

    python train.py                                    defaults
    python train.py shakespeare_char                   configs/shakespeare_char.toml over them
    python train.py my.toml --batch_size=32 --compile  a file, then two settings
    python train.py --n_layer 4 --min_lr 1e-5          --key value works as well as --key=value

A file may start from another with `base = "NAME"` (a config in configs/, or a .toml path
beside the file): that one is read first and the file's own lines go over it, so a variant
writes only what it changes.

A setting is --key=value or --key value: the word after --key is its value, unless it starts
with "--" (so `--min_lr -1` is a value, `--prompt --x` is a missing one: write --prompt=--x).
A bool alone (--compile) means true; it takes the next word as its value only if that word is
a bool (true/false/1/0/yes/no/on/off, or none for `bool | None`), so `--compile false` is
false and `--compile shakespeare_char` is true followed by a config file. A program that takes
no config file (sample.py) says so with no_config=HINT: --help then lists only its settings,
and a stray word stops with an error that ends with HINT.

Every value is converted to the field's annotated type: int, float, bool, str, a
typing.Literal of choices, or any of these `| None` (written "none"). Mistakes stop with a
ConfigError that names the fix: the closest valid key for a typo, the expected type for a bad
value. --help lists every key with its value, type and help (the field's metadata["help"], or
the comment written after it in the class body), under the headings the class body writes as
`# -- NAME --` lines; a field with metadata=HIDDEN is accepted but not listed.
"""

import dataclasses
import difflib
import inspect
import io
import math
import os
import sys
import tokenize
import tomllib
import types
import typing
from pathlib import Path

from common.errors import ConfigError

CONFIG_DIR = Path(__file__).resolve().parent
TRUE = ("true", "1", "yes", "on")
FALSE = ("false", "0", "no", "off")


# -----------------------------------------------------------------------------
# types: what a field accepts, and how a string becomes that

def _unpack(tp):
    """Split `X | None` into (X, True); anything else into (tp, False)."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(tp)) == 2:
            return args[0], True
        raise TypeError(f"unsupported config type {tp}: only X | None unions are allowed")
    return tp, False


def type_name(tp) -> str:
    base, optional = _unpack(tp)
    if typing.get_origin(base) is typing.Literal:
        name = "|".join(str(c) for c in typing.get_args(base))
    else:
        name = getattr(base, "__name__", str(base))
    return name + (" or none" if optional else "")


def convert(value, tp, key: str):
    """Turn `value` (a command-line string, or a value read from TOML) into type `tp`."""
    base, optional = _unpack(tp)
    if optional and (value is None or (isinstance(value, str) and value.strip().lower() == "none")):
        return None
    bad = ConfigError(f"{key} must be {_article(type_name(tp))}, got {value!r}")
    if typing.get_origin(base) is typing.Literal:
        choices = typing.get_args(base)
        # a choice may be written in any case on the command line: --device=CPU
        for c in choices:
            if value == c or (isinstance(value, str) and str(c).lower() == value.strip().lower()):
                return c
        close = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1)
        hint = f"; did you mean {close[0]}?" if close else ""
        raise ConfigError(f"{key} must be one of {'|'.join(map(str, choices))}, got {value!r}{hint}")
    if base is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in TRUE + FALSE:
            return value.strip().lower() in TRUE
        raise ConfigError(f"{key} must be a bool: true or false (or yes/no, on/off, 1/0), got {value!r}")
    if base is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                try:  # "1e3" and "5000.0" are whole numbers too
                    f = float(value)
                except ValueError:
                    raise bad from None
                if f.is_integer():
                    return int(f)
        raise bad
    if base is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value)  # --learning_rate=1 and TOML's `learning_rate = 1` are floats
        elif isinstance(value, str):
            try:
                number = float(value)
            except ValueError:
                raise bad from None
        else:
            raise bad
        if not math.isfinite(number):  # no setting means nan or inf, and nan slips past every `x < 0` check
            raise ConfigError(f"{key} must be a finite number, got {value!r}")
        return number
    if base is str:
        if isinstance(value, str):
            return value
        raise bad
    raise TypeError(f"unsupported config type {tp} for {key}")


def _article(name: str) -> str:
    return ("an " if name[0] in "aeiou" else "a ") + name


def _format(value) -> str:
    """A value the way one would type it after --key=."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


# -----------------------------------------------------------------------------
# the layers

def fields_of(cls) -> dict:
    """{name: (annotated type, default)} for every init field of dataclass `cls`."""
    hints = typing.get_type_hints(cls, include_extras=False)
    out = {}
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = dataclasses.MISSING
        out[f.name] = (hints[f.name], default)
    return out


def _unknown(key: str, known, where: str) -> ConfigError:
    close = difflib.get_close_matches(key, list(known), n=1, cutoff=0.5)
    hint = f"; did you mean {close[0]}?" if close else "; see --help for the list"
    return ConfigError(f"unknown key {key!r} {where}{hint}")


def find_config_file(name: str) -> Path:
    """A path to a TOML file, or a bare name looked up as configs/NAME.toml."""
    path = Path(name)
    if path.suffix == ".toml" or path.parent != Path("."):
        if not path.is_file():
            raise ConfigError(f"config file {name} not found")
        return path
    candidate = CONFIG_DIR / f"{name}.toml"
    if candidate.is_file():
        return candidate
    names = available_configs()
    close = difflib.get_close_matches(name, names, n=1)
    hint = f"did you mean {close[0]}? " if close else ""
    raise ConfigError(f"no config named {name!r}: {hint}the configs in {CONFIG_DIR} are "
                      f"{', '.join(names) or '(none)'}; or give a path to a .toml file")


def available_configs() -> list[str]:
    return sorted(p.stem for p in CONFIG_DIR.glob("*.toml"))


def read_config_file(path: Path, fields: dict) -> dict:
    """{key: value} of a TOML file and the files it starts from (`base`), checked against fields."""
    return {key: value for key, (value, _) in _read_layers(path, fields).items()}


def _read_layers(path: Path, fields: dict, inside: tuple = ()) -> dict:
    """{key: (value, the file's name that set it)}: the base's keys first, the file's over them.
    inside: the files that led here, base after base, so a loop is reported, not followed."""
    try:
        with open(path, "rb") as f:
            raw = tomllib.load(f)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path} is not valid TOML: {e}") from None
    layers = {}
    if "base" in raw:
        name = raw.pop("base")
        if not isinstance(name, str):
            raise ConfigError(f"base in {path} must be a config's name or a .toml path, got {name!r}")
        where = name
        if name.endswith(".toml") and not Path(name).is_absolute():
            where = str(path.parent / name)  # a path is read from the including file's folder
        try:
            base = find_config_file(where)
        except ConfigError as e:
            raise ConfigError(f"base = {name!r} in {path}: {e}") from None
        chain = inside + (path.resolve(),)
        if base.resolve() in chain:
            raise ConfigError(f"base = {name!r} in {path} leads back to {base}: a file cannot start from itself")
        layers = _read_layers(base, fields, chain)
    for key, value in raw.items():
        if isinstance(value, (dict, list)):
            raise ConfigError(f"{key} in {path}: configs are flat `key = value` lines, "
                              f"without [sections] or lists")
        if key not in fields:
            raise _unknown(key, fields, f"in {path}")
        layers[key] = (convert(value, fields[key][0], f"{key} (in {path})"), path.name)
    return layers


def _takes_value(word: str | None, tp) -> bool:
    """Whether the word after a bare --key is that key's value (see the module docstring)."""
    if word is None or word.startswith("--"):
        return False
    base, optional = _unpack(tp)
    if base is not bool:
        return True
    return word.strip().lower() in TRUE + FALSE + (("none",) if optional else ())


def split_args(argv: list[str], fields: dict) -> tuple[list[str], list[tuple[str, str]]]:
    """argv -> (the other words, [(key, value text)] in the order given). -h/--help are skipped."""
    words, settings, i = [], [], 0
    while i < len(argv):
        arg, i = argv[i], i + 1
        if arg in ("-h", "--help"):
            continue
        if not arg.startswith("--"):
            if arg.startswith("-"):
                raise ConfigError(f"unexpected argument {arg!r}: settings are written --key=value "
                                  f"or --key value")
            words.append(arg)
            continue
        key, eq, text = arg[2:].partition("=")
        key = key.replace("-", "_")  # --batch-size is forgiven
        if key not in fields:
            raise _unknown(key, fields, "on the command line")
        tp = fields[key][0]
        if not eq:
            after = argv[i] if i < len(argv) else None
            if _takes_value(after, tp):
                text, i = after, i + 1
            elif _unpack(tp)[0] is bool:
                text = "true"  # a bare --flag turns a bool on
            else:
                raise ConfigError(f"--{key} needs a value: write --{key}=VALUE or --{key} VALUE, "
                                  f"VALUE {_article(type_name(tp))}")
        settings.append((key, text))
    return words, settings


def parse_config(cls, argv: list[str], *, prog: str, description: str, no_config: str | None = None):
    """Build an instance of dataclass `cls` from defaults, an optional TOML file and the
    settings in `argv` (sys.argv[1:]). --help prints the keys and exits 0. no_config: see
    read_args."""
    _, values = read_args(cls, argv, prog=prog, description=description, no_config=no_config)
    return build(cls, values)


def read_args(cls, argv: list[str], *, prog: str, description: str, no_config: str | None = None,
              under=None) -> tuple[Path | None, dict]:
    """The upper layers: (the config file or None, {key: value} set by the file and the
    command line, already converted). For programs that put a layer of their own under them
    (train.py: a resumed run's config). --help prints the keys and exits 0.

    no_config: for a program that takes no config file, what to do instead (e.g. "pick the
    run with --out_dir=DIR"); --help then leaves CONFIG out and any other word is an error.
    under: a function (config file or None, command-line values) -> ({key: value}, its name)
    giving a layer between the defaults and the file (train.py: configs/cpu.toml on a machine
    without a GPU); it is part of the values returned, and --help shows what will run."""
    fields = fields_of(cls)
    want_help = any(a in ("-h", "--help") for a in argv)
    try:
        words, settings = split_args(argv, fields)
        if words and no_config is not None:
            raise ConfigError(f"{prog} takes --key=value (or --key value) settings only, not "
                              f"{words[0]!r}; {no_config}")
        if len(words) > 1:
            raise ConfigError(f"give at most one config file, got {words}; any other setting is "
                              f"written --key=value or --key value")
    except ConfigError:
        if not want_help:
            raise
        words, settings = [], []  # --help wins over a mistake beside it
    # the settings are converted first: a bad value is reported before the file is read
    from_cli = {} if want_help else {k: convert(text, fields[k][0], f"--{k}") for k, text in settings}
    path, values, source = None, {}, {}
    if words:
        path = find_config_file(words[0])
        layers = _read_layers(path, fields)
        values = {k: v for k, (v, _) in layers.items()}
        source = {k: name for k, (_, name) in layers.items()}
    lower, lower_name = under(path, from_cli) if under else ({}, None)
    values, source = {**lower, **values}, {**{k: lower_name for k in lower}, **source}
    if want_help:
        try:
            print_help(cls, fields, values, source, prog, description, no_config is None)
            sys.stdout.flush()
        except BrokenPipeError:  # `--help | head` has what it wanted; no traceback, now or at exit
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(0)
    return path, {**values, **from_cli}


def load_config_file(cls, name: str) -> dict:
    """{key: value} of one TOML file (a path or a name in configs/), checked against cls."""
    return read_config_file(find_config_file(name), fields_of(cls))


def build(cls, values: dict):
    """cls(**values), with missing required keys and the class's own checks as ConfigError."""
    missing = [k for k, (_, d) in fields_of(cls).items() if d is dataclasses.MISSING and k not in values]
    if missing:
        raise ConfigError(f"missing required setting(s): {', '.join('--' + k + '=...' for k in missing)}")
    try:
        return cls(**values)
    except (ValueError, TypeError) as e:  # the dataclass's own checks (__post_init__)
        raise ConfigError(str(e)) from None


# -----------------------------------------------------------------------------
# --help

HIDDEN = {"hidden": True}  # field(metadata=HIDDEN): a setting tests and benchmarks set; --help leaves it out


def field_notes(cls) -> tuple[dict, dict]:
    """({field: help}, {field: heading}) from the comments in the class body:
        # -- optimizer and schedule --
        batch_size: int = 64   # sequences per micro-step
    A comment after a field is its help. A comment line `# -- NAME --` is a heading: the fields
    after it, up to the next heading, are listed under NAME. Read with tokenize, so a '#' inside
    a string default is not mistaken for one."""
    try:
        source = inspect.getsource(cls)
    except (OSError, TypeError):
        return {}, {}
    comments, headings, line_name, heading = {}, {}, {}, ""
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        row = tok.start[0]
        if tok.type == tokenize.NAME and row not in line_name:
            line_name[row] = tok.string
            headings.setdefault(tok.string, heading)
        elif tok.type == tokenize.COMMENT and row in line_name:
            comments.setdefault(line_name[row], tok.string.lstrip("#").strip())
        elif tok.type == tokenize.COMMENT:
            text = tok.string.lstrip("#").strip()
            if len(text) > 4 and text.startswith("--") and text.endswith("--"):
                heading = text[2:-2].strip()
    return comments, headings


def print_help(cls, fields, values, source, prog, description, config_file=True):
    comments, headings = {}, {}
    for klass in cls.__mro__[:-1]:  # a field's notes are in the class that declares it
        own = klass.__dict__.get("__annotations__", {})
        more_comments, more_headings = field_notes(klass)
        comments.update({k: c for k, c in more_comments.items() if k in own and k not in comments})
        headings.update({k: h for k, h in more_headings.items() if k in own and k not in headings})
    shown = {f.name: f for f in dataclasses.fields(cls) if f.name in fields and not f.metadata.get("hidden")}
    groups = {"": []}  # heading -> rows: the rows without one first, then in the headings' order
    for key, (tp, default) in fields.items():
        if key not in shown:
            continue
        value = values.get(key, default)
        text = "(required)" if value is dataclasses.MISSING else _format(value)
        note = shown[key].metadata.get("help") or comments.get(key, "")
        if key in source:
            note = f"{note} [from {source[key]}]".strip()
        groups.setdefault(headings.get(key, ""), []).append((f"--{key}={text}", type_name(tp), note))
    groups = {h: g for h, g in groups.items() if g}
    rows = [r for g in groups.values() for r in g]
    w1 = max(len(r[0]) for r in rows) + 2
    w2 = max(len(r[1]) for r in rows) + 2
    out = [f"usage: {prog}{' [CONFIG]' if config_file else ''} [--key=value ...]", "",
           description.strip(), ""]
    if config_file:
        out += ["CONFIG: a TOML file of `key = value` lines, or the name of one in configs/ "
                f"({', '.join(available_configs()) or 'none yet'}); `base = \"NAME\"` in a file "
                "reads that config under it.",
                "Later wins: defaults < CONFIG < the command line."]
    out += ["A setting is --key=value or --key value. A bool alone (--compile) means true;",
            "it takes the next word as its value only if that is a bool: --compile false.",
            "", "settings (--key=value, type, what it does):"]
    for heading, group in groups.items():
        out += ["", f"{heading}:"] if heading else []
        out += [f"  {a:<{w1}}{b:<{w2}}{c}".rstrip() for a, b, c in group]
    print("\n".join(out))
