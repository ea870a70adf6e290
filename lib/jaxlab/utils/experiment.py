"""Command-line entry shared by every ``experiments/<name>.py`` (absl flags + ml_collections).

Each experiment module defines ``run(config, workdir) -> summary`` and ends with::

    if __name__ == "__main__":
        cli(run, "pfl")

which gives ``python -m experiments.pfl --workdir=DIR --config=experiments/configs/pfl.py:quick
--config.rounds=10``. The default config is the module's ``quick`` preset.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Callable

__all__ = ["cli", "repo_root", "quiet_library_logs"]


def repo_root() -> str:
    """The folder that holds ``experiments/`` (the repository root in a checkout)."""
    here = os.path.dirname(os.path.abspath(__file__))
    return os.path.abspath(os.path.join(here, "..", "..", ".."))


def quiet_library_logs() -> None:
    """Orbax logs every checkpoint step at INFO through absl; keep the terminal for progress bars."""
    from absl import logging

    logging.set_verbosity(logging.WARNING)


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
