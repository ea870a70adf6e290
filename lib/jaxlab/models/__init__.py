"""Flax linen classifiers, each ``Classifier(base, head)`` (see :mod:`jaxlab.models.classifier`).

``get_model(name, num_classes, **kw)`` builds one by name: ``cnn`` (PFLlib's 4-layer CNN), ``mlp``,
``resnet18``, ``resnet20``, ``fasttext``, ``lstm``, ``gru``.
"""

from __future__ import annotations

from jaxlab.models.classifier import Classifier
from jaxlab.models.cnn import make_cnn
from jaxlab.models.mlp import make_mlp
from jaxlab.models.resnet import make_resnet18, make_resnet20
from jaxlab.models.text import make_fasttext, make_rnn_classifier

__all__ = ["Classifier", "get_model", "MODELS", "has_batch_stats"]

MODELS = {
    "cnn": make_cnn,
    "mlp": make_mlp,
    "resnet18": make_resnet18,
    "resnet20": make_resnet20,
    "fasttext": make_fasttext,
    "lstm": lambda num_classes, **kw: make_rnn_classifier(num_classes, cell="lstm", **kw),
    "gru": lambda num_classes, **kw: make_rnn_classifier(num_classes, cell="gru", **kw),
}


def get_model(name: str, num_classes: int, **kwargs) -> Classifier:
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}: choose one of {sorted(MODELS)}")
    if name == "fasttext":
        if "vocab_size" not in kwargs:
            raise ValueError("model 'fasttext' needs vocab_size=... (the tokenizer's vocabulary size)")
        return make_fasttext(num_classes=num_classes, **kwargs)
    return MODELS[name](num_classes=num_classes, **kwargs)


def has_batch_stats(variables) -> bool:
    return "batch_stats" in variables and bool(variables["batch_stats"])
