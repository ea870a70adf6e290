"""Each experiment rejects a bad config value with one ValueError naming the field, before any work.

``run(config, workdir)`` calls the module's config check first, so a bad value must stop it before the
workdir is even created (no pretraining, profiling, FL round or file written). Every preset of each
config file must pass its checker unchanged. No training here: each test takes well under a second.
"""

import ast
import importlib
import inspect
import re

import pytest

from jaxlab.utils.experiment import check_choice, check_ints, check_number

# experiment module -> its preset file in experiments/configs (robust_matrix shares robust's presets)
CONFIG_OF = {"fewshot_dm": "fewshot_dm", "thor": "thor", "robust": "robust", "robust_matrix": "robust",
             "chrion": "chrion", "cgi_dm": "cgi_dm", "fedcod": "fedcod", "pfl": "pfl", "pfl_table": "pfl_table"}

# (experiment, field, bad value): the quick preset with that one field changed
BAD = [
    ("fewshot_dm", "shots", (0,)),                   # was a ZeroDivisionError after pretraining
    ("fewshot_dm", "shots", (3, 500)),               # more than the 180 held-out 9s: was caught after pretraining
    ("fewshot_dm", "methods", ("plain", "dreambooth")),
    ("fewshot_dm", "eval_every", 0),
    ("fewshot_dm", "sampler_steps", 5000),
    ("fewshot_dm", "seed", -1),
    ("thor", "seed", -1),                            # was numpy's "expected non-negative integer"
    ("thor", "sim.gammas", (0.5, 1.0)),              # no gamma 0: was a KeyError after the whole study
    ("thor", "sim.al_acquisition", "best"),
    ("thor", "sim.al_init", 0),
    ("thor", "wall.chain_source", "zoo"),            # was checked after the simulated study
    ("thor", "wall.heldout_rounds", 1),
    ("thor", "gp_steps", 0),
    ("robust", "defenses", ("fedavg", "krumm")),
    ("robust", "attacks", ("min_maxx",)),
    ("robust", "attacker_fraction", 1.5),
    ("robust", "seed", -1),
    ("robust", "model", "resnet"),
    ("robust_matrix", "fractions", (0.2, 1.0)),
    ("robust_matrix", "rounds", 0),
    ("chrion", "runs", 0),
    ("chrion", "poisson_load", 0.0),
    ("chrion", "seed", -1),
    ("cgi_dm", "score", "auc"),                      # was a KeyError after every model was fine-tuned
    ("cgi_dm", "noise", "independent"),
    ("cgi_dm", "t_max", 5000),
    ("cgi_dm", "n_members", 0),
    ("cgi_dm", "pre_weight", 2.0),
    ("fedcod", "scenarios", ("wan", "mars")),        # was raised after the earlier scenarios ran
    ("fedcod", "backend", "docker"),
    ("fedcod", "rounds", 0),
    ("pfl", "checkpoint_every", 0),                  # was a modulo by zero after the first round
    ("pfl", "algorithm", "fedsgd"),
    ("pfl", "join_ratio", 0.0),
    ("pfl", "seed", -1),
    ("pfl_table", "algorithms", "fedavg,fedsgd"),    # was raised when fedsgd's turn came, after fedavg trained
    ("pfl_table", "seeds", "0,x"),
    ("pfl_table", "checkpoint_every", 0),
    ("pfl_table", "stages", "5,500"),
]


def _config(experiment, preset="quick"):
    return importlib.import_module(f"experiments.configs.{CONFIG_OF[experiment]}").get_config(preset)


def _set(config, field, value):
    *parents, leaf = field.split(".")
    for p in parents:
        config = config[p]
    config[leaf] = value


def _checker(experiment):
    mod = importlib.import_module(f"experiments.{experiment}")
    return getattr(mod, "_check_config", None) or mod.check_config


def _presets(experiment) -> list[str]:
    """Every preset name ``get_config`` accepts: the strings it compares ``preset`` with."""
    src = inspect.getsource(importlib.import_module(f"experiments.configs.{CONFIG_OF[experiment]}").get_config)
    names = set()
    for node in ast.walk(ast.parse(src)):
        if isinstance(node, ast.Compare) and isinstance(node.left, ast.Name) and node.left.id == "preset":
            names.update(c.value for comp in node.comparators for c in ast.walk(comp)
                         if isinstance(c, ast.Constant) and isinstance(c.value, str))
    return sorted(names)


@pytest.mark.parametrize("experiment,field,value", BAD, ids=[f"{e}-{f}={v!r}" for e, f, v in BAD])
def test_run_rejects_a_bad_value_before_any_work(tmp_path, experiment, field, value):
    config = _config(experiment)
    _set(config, field, value)
    wd = tmp_path / "wd"
    run = importlib.import_module(f"experiments.{experiment}").run
    with pytest.raises(ValueError, match=re.escape(field.split(".")[-1])):
        run(config, str(wd))
    assert not wd.exists(), f"run() touched the workdir before rejecting {field}={value!r}"


@pytest.mark.parametrize("experiment", sorted(CONFIG_OF))
def test_every_preset_passes_its_checker(experiment):
    presets = _presets(experiment)
    assert "quick" in presets and len(presets) >= 2, presets
    for preset in presets:
        _checker(experiment)(_config(experiment, preset))
    with pytest.raises(ValueError, match="preset"):
        _config(experiment, "no_such_preset")


def test_check_helpers_name_field_value_and_fix():
    import ml_collections

    c = ml_collections.ConfigDict({"n": 0, "sub": {"lr": -1.0, "x": float("nan")}, "names": ("a", "b")})
    with pytest.raises(ValueError, match=r"^n=0 must be an integer >= 1 \(rounds\)$"):
        check_ints(c, "n", why="rounds")
    check_ints(c, "n", low=0)
    with pytest.raises(ValueError, match=r"^sub\.lr=-1\.0 must be > 0$"):
        check_number(c, "sub.lr", 0, low_open=True)
    with pytest.raises(ValueError, match=r"sub\.x=nan must be in \[0, 1\]"):
        check_number(c, "sub.x", 0, 1)
    with pytest.raises(ValueError, match=r"names=\('a', 'b'\): 'b' is not one of \('a',\)"):
        check_choice(c, "names", ("a",))
    check_choice(c, "names", ("a", "b"))
    # a field the config lacks (an older config; the experiment reads it with a default) is not checked
    check_ints(c, "missing", "sub.missing")
    check_number(c, "missing", 0)
    check_choice(c, "missing.deeper", ())
