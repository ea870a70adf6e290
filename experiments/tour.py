"""The main job: runs the ``quick`` preset of every system and prints one table.

    python -m experiments.tour --workdir=runs/tour [--only=pfl,thor]

Each experiment module that exists exposes ``tour_row(workdir) -> dict(system, dataset,
headline)``; the tour times it, prints a Markdown table (system, dataset, headline figure,
seconds) and writes it to ``<workdir>/tour.md`` and ``<workdir>/summary.json``. The numbers in a
headline come from that experiment's own ``summary.json`` in ``<workdir>/<name>/``.
"""

from __future__ import annotations

import importlib
import os
import sys
import time
import traceback

from absl import app, flags

from jaxlab.utils.workdir import Workdir, markdown_table

# In the order a reader meets them; a module that is not there yet is skipped and listed.
SYSTEMS = ["pfl", "pfl_table", "robust", "fedcod", "thor", "fewshot_dm", "cgi_dm", "chrion"]

flags.DEFINE_string("workdir", "runs/tour", "Folder for every system's run and the tour table.")
flags.DEFINE_list("only", [], "Run only these systems (default: all).")


def run_tour(workdir: str, only: list[str] | None = None) -> list[dict]:
    wd = Workdir(workdir)
    rows, missing = [], []
    for name in SYSTEMS:
        if only and name not in only:
            continue
        try:
            mod = importlib.import_module(f"experiments.{name}")
        except ModuleNotFoundError as e:
            if e.name == f"experiments.{name}":
                missing.append(name)
                continue
            raise
        if not hasattr(mod, "tour_row"):
            missing.append(name)
            continue
        print(f"[tour] {name} ...", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        try:
            row = dict(mod.tour_row(os.path.join(wd.path, name)))
            row["status"] = "ok"
        except Exception as e:  # one failing system must not hide the others' results
            traceback.print_exc()
            row = {"system": name, "dataset": "-", "headline": f"FAILED: {type(e).__name__}: {e}", "status": "failed"}
        row["seconds"] = round(time.perf_counter() - t0, 1)
        rows.append(row)
    table = markdown_table(rows, ["system", "dataset", "headline", "seconds"])
    if missing:
        table += "\nNot yet available: " + ", ".join(missing) + "\n"
    wd.write_text("tour.md", table)
    wd.write_summary({"rows": rows, "missing": missing})
    print(table)
    return rows


def main(argv):
    del argv
    from jaxlab.utils.experiment import quiet_library_logs

    quiet_library_logs()
    rows = run_tour(flags.FLAGS.workdir, flags.FLAGS.only)
    if any(r["status"] != "ok" for r in rows):
        sys.exit(1)


if __name__ == "__main__":
    app.run(main)
