"""Federated algorithms, one module each; ``get_algorithm(name, model, **hparams)`` by name."""

from __future__ import annotations

from typing import Callable

from jaxlab.fl.algorithm import Algorithm
from jaxlab.fl.algorithms.ditto import ditto
from jaxlab.fl.algorithms.fedavg import fedavg
from jaxlab.fl.algorithms.fedbabu import fedbabu
from jaxlab.fl.algorithms.fedper import fedper
from jaxlab.fl.algorithms.fedprox import fedprox
from jaxlab.fl.algorithms.fedrep import fedrep
from jaxlab.fl.algorithms.local import local

__all__ = ["ALGORITHMS", "get_algorithm", "register"]

ALGORITHMS: dict[str, Callable[..., Algorithm]] = {
    "fedavg": fedavg, "local": local, "fedprox": fedprox, "fedper": fedper, "fedrep": fedrep,
    "ditto": ditto, "fedbabu": fedbabu,
}


def _lazy(modname: str, fn: str):
    def make(*a, **k):
        import importlib

        return getattr(importlib.import_module(modname), fn)(*a, **k)

    return make


# Methods from papers (issue 3); imported on first use.
for _name in ("dbe", "gpfl", "fedcp"):
    ALGORITHMS.setdefault(_name, _lazy(f"jaxlab.fl.algorithms.{_name}", _name))


def register(name: str, constructor: Callable[..., Algorithm]) -> None:
    ALGORITHMS[name] = constructor


def get_algorithm(name: str, model, **hparams) -> Algorithm:
    if name not in ALGORITHMS:
        raise ValueError(f"unknown algorithm {name!r}: choose one of {sorted(ALGORITHMS)}")
    try:
        return ALGORITHMS[name](model, **hparams)
    except TypeError as e:
        raise TypeError(f"algorithm {name!r} does not take these hyperparameters {sorted(hparams)}: {e}") from e
