"""The one workdir writer every experiment uses.

A run's workdir holds::

    config.json      resolved config + library versions, seed and device (written once per start)
    metrics.jsonl    one JSON object per round/step, appended (never rewritten)
    summary.json     final figures; every number quoted anywhere comes from here
    *.png            plots
    checkpoints/     orbax checkpoints (see :mod:`jaxlab.utils.checkpoint`)

Appending to ``metrics.jsonl`` is resume-safe: :meth:`Workdir.truncate_metrics` drops lines past
the step a run resumes from, so a resumed run's log equals an uninterrupted run's.
"""

from __future__ import annotations

import json
import math
import os
import platform
import sys
import time
from typing import Any, Iterable, Mapping

import numpy as np

__all__ = ["Workdir", "environment_info", "to_jsonable"]


def to_jsonable(x: Any) -> Any:
    """Converts numpy/JAX scalars and arrays, ConfigDicts and tuples to plain JSON values."""
    if hasattr(x, "to_dict") and callable(x.to_dict):  # ml_collections.ConfigDict
        return to_jsonable(x.to_dict())
    if isinstance(x, Mapping):
        return {str(k): to_jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [to_jsonable(v) for v in x]
    if isinstance(x, (str, bool)) or x is None:
        return x
    if isinstance(x, (int, np.integer)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        v = float(x)
        return v if math.isfinite(v) else str(v)
    if hasattr(x, "shape") and hasattr(x, "dtype"):
        arr = np.asarray(x)
        return to_jsonable(arr.item() if arr.ndim == 0 else arr.tolist())
    return str(x)


def environment_info() -> dict:
    """Library versions and the device the run used (stored in config.json)."""
    info = {"python": sys.version.split()[0], "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(), "cpu_count": os.cpu_count()}
    for mod in ("jax", "jaxlib", "flax", "optax", "numpy", "orbax.checkpoint", "tinygp", "onnx", "onnxruntime"):
        try:
            m = __import__(mod, fromlist=["__version__"])
            info[mod] = getattr(m, "__version__", "?")
        except Exception:  # a missing optional library is a fact, not an error
            info[mod] = None
    try:
        import jax

        info["devices"] = [str(d) for d in jax.devices()]
        info["backend"] = jax.default_backend()
    except Exception:
        pass
    return info


class Workdir:
    """Writes config, metrics, summary and plots of one run into ``path``."""

    def __init__(self, path: str | os.PathLike):
        if path is None or str(path) == "":
            raise ValueError("workdir is empty: pass --workdir=DIR (a folder for config, metrics, plots, checkpoints)")
        self.path = os.path.abspath(os.fspath(path))
        os.makedirs(self.path, exist_ok=True)

    def file(self, name: str) -> str:
        return os.path.join(self.path, name)

    @property
    def checkpoint_dir(self) -> str:
        return self.file("checkpoints")

    # -- config -------------------------------------------------------------------------------
    def write_config(self, config: Any, **extra: Any) -> dict:
        record = {"config": to_jsonable(config), "environment": environment_info(),
                  "started_unix": time.time(), **to_jsonable(extra)}
        self._write_json("config.json", record)
        return record

    # -- metrics ------------------------------------------------------------------------------
    def log(self, step: int, **metrics: Any) -> None:
        """Appends one line ``{"step": step, **metrics}`` to metrics.jsonl."""
        with open(self.file("metrics.jsonl"), "a") as f:
            f.write(json.dumps({"step": int(step), **to_jsonable(metrics)}) + "\n")

    def read_metrics(self) -> list[dict]:
        p = self.file("metrics.jsonl")
        if not os.path.exists(p):
            return []
        out = []
        with open(p) as f:
            for line in f:
                line = line.strip()
                if line:
                    try:
                        out.append(json.loads(line))
                    except json.JSONDecodeError:  # a line cut by a kill mid-write
                        break
        return out

    def truncate_metrics(self, last_step: int) -> None:
        """Keeps only lines with ``step <= last_step`` (used when resuming from a checkpoint)."""
        rows = [r for r in self.read_metrics() if r.get("step", -1) <= last_step]
        tmp = self.file("metrics.jsonl.tmp")
        with open(tmp, "w") as f:
            for r in rows:
                f.write(json.dumps(r) + "\n")
        os.replace(tmp, self.file("metrics.jsonl"))

    # -- summary ------------------------------------------------------------------------------
    def write_summary(self, summary: Mapping[str, Any]) -> dict:
        s = to_jsonable(dict(summary))
        self._write_json("summary.json", s)
        return s

    def read_summary(self) -> dict:
        with open(self.file("summary.json")) as f:
            return json.load(f)

    def write_text(self, name: str, text: str) -> str:
        p = self.file(name)
        with open(p, "w") as f:
            f.write(text)
        return p

    def _write_json(self, name: str, obj: Any) -> None:
        # a per-process temporary name: two runs sharing a workdir (e.g. one table split over
        # processes) may write the same file at once; os.replace keeps each write atomic.
        tmp = self.file(f"{name}.{os.getpid()}.tmp")
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=2, sort_keys=False)
        os.replace(tmp, self.file(name))


def markdown_table(rows: Iterable[Mapping[str, Any]], columns: list[str] | None = None) -> str:
    """Renders dict rows as a GitHub Markdown table (floats to 4 significant digits)."""
    rows = list(rows)
    if not rows:
        return ""
    columns = columns or list(rows[0].keys())

    def fmt(v):
        if isinstance(v, float):
            return f"{v:.4g}"
        return str(v)

    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    for r in rows:
        lines.append("| " + " | ".join(fmt(r.get(c, "")) for c in columns) + " |")
    return "\n".join(lines) + "\n"


__all__.append("markdown_table")
