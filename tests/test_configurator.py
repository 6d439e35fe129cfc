"""configurator.py: nanoGPT semantics plus coercion and typo errors."""
import pytest

from configurator import ConfigError, coerce, configure


def defaults():
    return dict(max_iters=100, dropout=0.1, compile=True, device="cpu", fusion="GF-MH", gate_init=None,
                betas=(0.9, 0.95))


@pytest.mark.parametrize("arg,key,value", [
    ("--max_iters=1e3", "max_iters", 1000), ("--dropout=0", "dropout", 0.0), ("--compile=false", "compile", False),
    ("--compile=0", "compile", False), ("--compile=1", "compile", True), ("--compile=True", "compile", True),
    ("--device=cuda:0", "device", "cuda:0"), ("--fusion=GF-RH", "fusion", "GF-RH"), ("--gate_init=0.3", "gate_init", 0.3),
    ("--device=a=b", "device", "a=b"),
])
def test_overrides(arg, key, value):
    g = defaults()
    configure(g, [arg])
    assert g[key] == value and type(g[key]) is type(value)
    assert key in g["_config_set"]


@pytest.mark.parametrize("arg,needle", [
    ("--max_iters=1.5", "max_iters"), ("--max_iters=abc", "takes int"), ("--compile=maybe", "compile"),
    ("--dropout=True", "dropout"), ("--betas=[1,2]", "tuple"),
])
def test_type_errors(arg, needle):
    with pytest.raises(ConfigError, match=needle):
        configure(defaults(), [arg])


def test_unknown_key_suggests():
    with pytest.raises(ConfigError, match="did you mean max_iters"):
        configure(defaults(), ["--max_iter=5"])
    with pytest.raises(ConfigError, match="--key=value"):
        configure(defaults(), ["max_iters=5"])


def test_config_file(tmp_path):
    f = tmp_path / "c.py"
    f.write_text("import math\n_helper = 3\nmax_iters = 2 * _helper\ndropout = 0\ndevice = 'cpu'\n")
    g = defaults()
    configure(g, [str(f), "--max_iters=7"])
    assert g["max_iters"] == 7 and g["dropout"] == 0.0 and isinstance(g["dropout"], float)
    assert {"max_iters", "dropout", "device"} <= g["_config_set"]


def test_config_file_typo_and_syntax(tmp_path):
    f = tmp_path / "typo.py"
    f.write_text("max_itres = 5\n")
    with pytest.raises(ConfigError, match="unknown key 'max_itres'.*max_iters"):
        configure(defaults(), [str(f)])
    f.write_text("max_iters = (\n")
    with pytest.raises(ConfigError, match="syntax error.*line"):
        configure(defaults(), [str(f)])
    with pytest.raises(ConfigError, match="cannot read"):
        configure(defaults(), [str(tmp_path / "missing.py")])


def test_coerce_bool_not_int():
    with pytest.raises(ConfigError):
        coerce("max_iters", True, 5)
