"""Classification metrics as pure, jittable functions over padded arrays.

``classification_metrics(logits [N, C], y [N], n) -> dict`` counts only the first ``n`` rows
(pad-and-mask). AUC is computed from ranks (average ranks for ties), which equals sklearn's
``roc_auc_score``: micro = one AUC over the flattened one-hot labels and scores (PFLlib's choice),
macro = mean of one-vs-rest AUCs over the classes that have both positives and negatives.
[our choice] scores are softmax probabilities; PFLlib feeds raw logits to sklearn, which changes
micro AUC's cross-sample ranking slightly.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = ["binary_auc", "classification_metrics", "cross_entropy"]


def cross_entropy(logits, labels, mask=None):
    """Mean softmax cross-entropy; ``mask`` [N] weights rows (mean over valid rows)."""
    logp = jax.nn.log_softmax(logits.astype(jnp.float32))
    nll = -jnp.take_along_axis(logp, labels[..., None].astype(jnp.int32), axis=-1)[..., 0]
    if mask is None:
        return nll.mean()
    mask = mask.astype(nll.dtype)
    return (nll * mask).sum() / jnp.maximum(mask.sum(), 1.0)


def binary_auc(scores, positive, valid):
    """Rank-based ROC AUC. ``scores``, ``positive``, ``valid``: [M]. NaN when a class is missing."""
    big = jnp.finfo(scores.dtype).max
    s = jnp.where(valid, scores, big)  # invalid entries sort last and never enter the rank sums
    srt = jnp.sort(s)
    lo = jnp.searchsorted(srt, s, side="left")
    hi = jnp.searchsorted(srt, s, side="right")
    rank = (lo + hi + 1) / 2.0  # 1-based average rank among ties
    pos = (positive & valid).astype(jnp.float32)
    neg = ((~positive) & valid).astype(jnp.float32)
    n_pos, n_neg = pos.sum(), neg.sum()
    u = (rank * pos).sum() - n_pos * (n_pos + 1) / 2.0
    return jnp.where((n_pos > 0) & (n_neg > 0), u / jnp.maximum(n_pos * n_neg, 1.0), jnp.nan)


def classification_metrics(logits, y, n):
    """Per-client sums and AUCs. Returns ``correct, count, loss_sum, auc_micro, auc_macro``."""
    N, C = logits.shape
    valid = jnp.arange(N) < n
    logits = logits.astype(jnp.float32)
    prob = jax.nn.softmax(logits)
    logp = jax.nn.log_softmax(logits)
    nll = -jnp.take_along_axis(logp, y[:, None].astype(jnp.int32), axis=1)[:, 0]
    correct = ((jnp.argmax(logits, -1) == y) & valid).sum()
    onehot = jax.nn.one_hot(y, C, dtype=bool)
    vmat = jnp.broadcast_to(valid[:, None], (N, C))
    auc_micro = binary_auc(prob.reshape(-1), onehot.reshape(-1), vmat.reshape(-1))
    per_class = jax.vmap(binary_auc, in_axes=(1, 1, 1))(prob, onehot, vmat)
    has = ~jnp.isnan(per_class)
    auc_macro = jnp.where(has.any(), jnp.where(has, per_class, 0.0).sum() / jnp.maximum(has.sum(), 1), jnp.nan)
    return {"correct": correct.astype(jnp.int32), "count": jnp.asarray(n, jnp.int32),
            "loss_sum": jnp.where(valid, nll, 0.0).sum(), "auc_micro": auc_micro, "auc_macro": auc_macro}
