"""Training: losses, metrics, pure train/eval steps and ``local_train`` (lax.scan, pad-and-mask)."""

from jaxlab.train.local import client_batches, make_local_train, make_train_step, num_steps
from jaxlab.train.metrics import binary_auc, classification_metrics, cross_entropy
from jaxlab.train.steps import apply_model, classifier_loss, eval_step

__all__ = ["client_batches", "make_local_train", "make_train_step", "num_steps", "binary_auc",
           "classification_metrics", "cross_entropy", "apply_model", "classifier_loss", "eval_step"]
