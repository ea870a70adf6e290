"""Command-line entry shared by every ``experiments/<name>.py`` (absl flags + ml_collections).

Each experiment module defines ``run(config, workdir) -> summary`` and ends with::

    if __name__ == "__main__":
        cli(run, "pfl")

which gives ``python -m experiments.pfl --workdir=DIR --config=experiments/configs/pfl.py:quick
--config.rounds=10``. The default config is the module's ``quick`` preset.

:func:`check_ints`, :func:`check_number` and :func:`check_choice` are the field checks each
experiment's ``_check_config`` is made of (one ValueError naming the field, its value and the fix).
"""

from __future__ import annotations

import json
import numbers
import os
import sys
from typing import Callable, Iterable

__all__ = ["cli", "repo_root", "quiet_library_logs", "check_ints", "check_number", "check_choice"]


def repo_root() -> str:
    """The folder that holds ``experiments/`` (the repository root in a checkout)."""
    here = os.path.dirname(os.path.abspath(__file__))
    return os.path.abspath(os.path.join(here, "..", "..", ".."))


def quiet_library_logs() -> None:
    """Orbax logs every checkpoint step at INFO through absl; keep the terminal for progress bars."""
    from absl import logging

    logging.set_verbosity(logging.WARNING)


# -- config checks: each experiment's ``_check_config`` calls these at the top of ``run`` --------------
# so that a bad value stops the run with one ValueError naming the field, its value and the fix,
# before any pretraining / profiling / FL round starts and before the workdir is written.

_MISSING = object()


def _field(config, name: str):
    """``config[name]``; ``name`` may be dotted (``"sim.pool_chains"``). A field the config lacks (an older
    config; the experiment reads it with a default) gives ``_MISSING``, and its check is skipped."""
    value = config
    for part in name.split("."):
        if part not in value:
            return _MISSING
        value = value[part]
    return value


def _why(why: str) -> str:
    return f" ({why})" if why else ""


def check_ints(config, *names: str, low: int = 1, why: str = "") -> None:
    """Each field in ``names`` must be an integer >= ``low``."""
    for name in names:
        v = _field(config, name)
        if v is _MISSING:
            continue
        if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < low:
            raise ValueError(f"{name}={v!r} must be an integer >= {low}{_why(why)}")


def check_number(config, name: str, low: float | None = None, high: float | None = None, *,
                 low_open: bool = False, high_open: bool = False, why: str = "") -> None:
    """The field must be a real number in the interval [low, high] (an end ``None`` is unbounded;
    ``low_open`` / ``high_open`` exclude that end). NaN is always rejected."""
    v = _field(config, name)
    if v is _MISSING:
        return
    ok = isinstance(v, numbers.Real) and not isinstance(v, bool) and v == v
    if ok and low is not None:
        ok = v > low if low_open else v >= low
    if ok and high is not None:
        ok = v < high if high_open else v <= high
    if not ok:
        if high is None:
            must = f"{'>' if low_open else '>='} {low}"
        elif low is None:
            must = f"{'<' if high_open else '<='} {high}"
        else:
            must = f"in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
        raise ValueError(f"{name}={v!r} must be {must}{_why(why)}")


def check_choice(config, name: str, choices: Iterable, why: str = "") -> None:
    """The field must be one of ``choices``; a tuple/list field must hold only such values."""
    choices = tuple(choices)
    v = _field(config, name)
    if v is _MISSING:
        return
    if not isinstance(v, (tuple, list)):
        if v not in choices:
            raise ValueError(f"{name}={v!r}: use one of {choices}{_why(why)}")
        return
    bad = [x for x in v if x not in choices]
    if bad:
        raise ValueError(f"{name}={v!r}: {bad[0]!r} is not one of {choices}{_why(why)}")


def cli(run: Callable, name: str) -> None:
    from absl import app, flags
    from ml_collections import config_flags

    default = os.path.join(repo_root(), "experiments", "configs", f"{name}.py") + ":quick"
    flags.DEFINE_string("workdir", None, "Folder for config.json, metrics.jsonl, summary.json, plots, checkpoints.")
    config_flags.DEFINE_config_file("config", default, "Config file and preset, e.g. experiments/configs/%s.py:paper" % name,
                                    lock_config=True)
    flags.mark_flags_as_required(["workdir"])

    def main(argv):
        del argv
        quiet_library_logs()
        cfg = flags.FLAGS.config
        summary = run(cfg, flags.FLAGS.workdir)
        if summary is not None:
            print(json.dumps(summary, indent=2, default=str))

    app.run(main, argv=sys.argv)
