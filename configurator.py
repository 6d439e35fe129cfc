"""Config overrides, nanoGPT style, with the checks nanoGPT lacks.

    python train.py config/gf_mh_8m.py --batch_size=32 --compile=false

Arguments are applied left to right: a bare path is a config file (Python, exec'd against the script's
globals), `--key=value` overrides one key. What differs from nanoGPT's configurator, and why:
- a typo must not pass silently: unknown `--keys`, and new public names defined by a config file, are errors
  that list the closest valid names;
- values are coerced to the default's type where that is lossless (`--max_iters=1e3` → 1000,
  `--dropout=0` → 0.0, `--compile=false|0|1` → bool); anything else is a type error naming key and types.
A config file may import modules and use `_private` helper names; everything else it defines must be a key.
"""
import ast
import difflib
import types


class ConfigError(Exception):
    """A bad config file or override; the message names the problem and the fix."""


_BOOLS = {"true": True, "false": False, "1": True, "0": False, "yes": True, "no": False}


def _suggest(key, known):
    close = difflib.get_close_matches(key, known, n=3, cutoff=0.6)
    return f" (did you mean {', '.join(close)}?)" if close else " (run with --help to list the keys)"


def coerce(key, value, default):
    """Return `value` converted to the type of `default`, or raise ConfigError."""
    if default is None or isinstance(value, type(default)) and not (isinstance(value, bool) and not isinstance(default, bool)):
        return value
    if isinstance(default, bool):
        if isinstance(value, str) and value.lower() in _BOOLS:
            return _BOOLS[value.lower()]
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
    elif isinstance(default, int):
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif isinstance(default, float):
        if isinstance(value, int) and not isinstance(value, bool):
            return float(value)
    elif isinstance(default, str):
        if not isinstance(value, bool):
            return str(value)
    raise ConfigError(f"{key}={value!r} has type {type(value).__name__}, but {key} takes "
                      f"{type(default).__name__} (default {default!r}); pass e.g. --{key}={default!r}")


def parse_value(raw):
    """--key=value: a Python literal when it parses as one, else the raw string (paths, 'cuda:0', 'GF-MH')."""
    try:
        return ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        return raw


def apply_config_file(path, g, known):
    try:
        src = open(path).read()
    except OSError as e:
        raise ConfigError(f"cannot read config file {path}: {e.strerror}; pass an existing file such as "
                          f"config/quickstart.py") from None
    try:
        code = compile(src, path, "exec")
    except SyntaxError as e:
        raise ConfigError(f"syntax error in config file {path}, line {e.lineno}: {e.msg}; fix the file") from None
    scope = dict(g)
    exec(code, scope)
    for name, value in scope.items():
        if name.startswith("_") or isinstance(value, types.ModuleType) or name == "__builtins__":
            continue
        if name not in known:
            if name in g:  # a non-key global of the script (a function, a constant): must not be replaced
                if scope[name] is g[name]:
                    continue
            raise ConfigError(f"config file {path} sets unknown key '{name}'{_suggest(name, known)}")
        if value is not g[name]:
            g[name] = coerce(name, value, known[name])
    # the keys the file assigns, even to their default value (so `model_type = 'gpt'` counts as a choice)
    assigned = {t.id for node in ast.walk(ast.parse(src)) if isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign))
                for t in (node.targets if isinstance(node, ast.Assign) else [node.target]) if isinstance(t, ast.Name)}
    g.setdefault("_config_set", set()).update(assigned & set(known))


def configure(g, argv, keys=None):
    """Apply config files and --key=value overrides from `argv` to the globals dict `g`.

    `keys` are the valid keys (default: every public int/float/bool/str/None/tuple global of `g`); their
    current values are the defaults that fix each key's type. Returns the final {key: value} dict; the names
    a config file or override set (even to their default value) are left in g["_config_set"].
    """
    if keys is None:
        keys = [k for k, v in g.items() if not k.startswith("_") and
                (v is None or isinstance(v, (int, float, bool, str, tuple)))]
    known = {k: g[k] for k in keys}
    explicit = g.setdefault("_config_set", set())
    for arg in argv:
        if arg in ("-h", "--help"):
            width = max(len(k) for k in known)
            print("\n".join(f"  --{k:<{width}} = {known[k]!r}" for k in sorted(known)))
            raise SystemExit(0)
        if "=" not in arg:
            if arg.startswith("-"):
                raise ConfigError(f"argument {arg!r} is neither a config file nor --key=value")
            apply_config_file(arg, g, known)
            continue
        if not arg.startswith("--"):
            raise ConfigError(f"override {arg!r} must look like --key=value")
        key, raw = arg[2:].split("=", 1)
        if key not in known:
            raise ConfigError(f"unknown config key '{key}'{_suggest(key, known)}")
        g[key] = coerce(key, parse_value(raw), known[key])
        explicit.add(key)
        print(f"Overriding: {key} = {g[key]!r}")
    return {k: g[k] for k in keys}
