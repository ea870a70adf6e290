"""Sample-quality metrics for the tiny few-shot diffusion study (stand-ins for DINO / LPIPS / CLIP-IQA).

* A small CNN classifier (:class:`DigitClassifier`) trained on the pretraining digits gives both a
  label check for class-conditional samples and a feature space (penultimate layer) for fidelity.
* :func:`sample_metrics` turns a batch of samples into the four curves of the corruption-stage
  experiment: fidelity (DINO analogue), noise (high-frequency energy ratio), memorisation, diversity.

All images are NHWC float in [-1, 1].
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

__all__ = ["DigitClassifier", "train_classifier", "classifier_features", "classifier_predict",
           "high_frequency_ratio", "sample_metrics", "pairwise_rms", "denoiser_noise_level", "excursions",
           "smoothed_peak", "tail_mean"]


class DigitClassifier(nn.Module):
    """conv(32)-conv(64)-pool-dense(128)=features-dense(num_classes); works for 8x8 and larger inputs."""

    num_classes: int = 9

    @nn.compact
    def __call__(self, x, features: bool = False):
        h = nn.relu(nn.Conv(32, (3, 3), name="conv1")(x))
        h = nn.relu(nn.Conv(64, (3, 3), name="conv2")(h))
        h = nn.avg_pool(h, (2, 2), strides=(2, 2))
        h = nn.relu(nn.Dense(128, name="feat")(h.reshape(h.shape[0], -1)))
        if features:
            return h
        return nn.Dense(self.num_classes, name="head")(h)


def train_classifier(x: np.ndarray, y: np.ndarray, num_classes: int, key: jax.Array, steps: int = 600,
                     batch_size: int = 64, lr: float = 2e-3, noise_aug: float = 0.1) -> dict:
    """Trains :class:`DigitClassifier`; returns its params. ``noise_aug``: std of Gaussian input noise
    [our choice] so that noisy samples are not pushed to arbitrary features."""
    if y.min() < 0 or y.max() >= num_classes:
        raise ValueError(f"labels must lie in [0, {num_classes}); got [{y.min()}, {y.max()}]")
    model = DigitClassifier(num_classes)
    key, k0 = jax.random.split(key)
    params = model.init(k0, jnp.zeros((1,) + x.shape[1:]))["params"]
    opt = optax.adam(lr)
    st = opt.init(params)
    xs, ys = jnp.asarray(x), jnp.asarray(y)

    @jax.jit
    def step(params, st, key):
        ki, kn = jax.random.split(key)
        idx = jax.random.randint(ki, (batch_size,), 0, xs.shape[0])
        xb = xs[idx] + noise_aug * jax.random.normal(kn, (batch_size,) + xs.shape[1:])

        def loss(p):
            return optax.softmax_cross_entropy_with_integer_labels(model.apply({"params": p}, xb), ys[idx]).mean()

        l, g = jax.value_and_grad(loss)(params)
        u, st = opt.update(g, st, params)
        return optax.apply_updates(params, u), st, l

    for k in jax.random.split(key, steps):
        params, st, _ = step(params, st, k)
    return params


@functools.partial(jax.jit, static_argnames=("num_classes",))
def classifier_features(params: Any, x: jax.Array, num_classes: int = 9) -> jax.Array:
    """Penultimate features ``[N, 128]``."""
    return DigitClassifier(num_classes).apply({"params": params}, x, features=True)


@functools.partial(jax.jit, static_argnames=("num_classes",))
def classifier_predict(params: Any, x: jax.Array, num_classes: int = 9) -> jax.Array:
    """Predicted labels ``[N]`` int."""
    return jnp.argmax(DigitClassifier(num_classes).apply({"params": params}, x), -1)


def high_frequency_ratio(x: np.ndarray) -> np.ndarray:
    """Per-image ``sum |Laplacian(u)|^2 / sum u^2`` with ``u = (x + 1)/2`` in [0, 1], edge padding.

    ``x``: ``[N, H, W, C]`` -> ``[N]``. A 5-point Laplacian; white noise scores far above smooth strokes.
    """
    u = (np.asarray(x, np.float64) + 1.0) / 2.0
    p = np.pad(u, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="edge")
    lap = p[:, :-2, 1:-1] + p[:, 2:, 1:-1] + p[:, 1:-1, :-2] + p[:, 1:-1, 2:] - 4 * u
    return (lap ** 2).sum(axis=(1, 2, 3)) / np.maximum((u ** 2).sum(axis=(1, 2, 3)), 1e-8)


def denoiser_noise_level(eps_fn, params: Any, schedule, x: jax.Array, labels: jax.Array, t: int = 10) -> np.ndarray:
    """Per-image residual noise std ``[N]`` (pixel units of [-1, 1]) estimated by a *reference* denoiser.

    Each image is read as the clean image of a forward-noised input at timestep ``t``, i.e. the
    denoiser gets ``sqrt(abar_t) x`` and its noise estimate is rescaled to pixels:
    ``sqrt(1 - abar_t) * rms(eps_fn(params, sqrt(abar_t) x, t, labels))``. On clean digits the
    pretrained model finds almost no noise; noisy patterns, haze and blotches are read as noise.
    This is the "residual of the pretrained model at small t" noise metric of the reproduction plan
    (diffusion.md section 2); [our choice] t = 10 (sigma_t ~ 0.05 on the linear T=1000 schedule).

    ``eps_fn(params, x, t, labels)`` as in :mod:`jaxlab.diffusion.ddpm`; ``x``: ``[N, H, W, C]``.
    """
    T = int(schedule.alphas_cumprod.shape[0])
    if not 0 <= int(t) < T:
        raise ValueError(f"t={t} must lie in [0, {T}) for this schedule")
    ab = schedule.alphas_cumprod[int(t)]
    x = jnp.asarray(x, jnp.float32)
    e = eps_fn(params, jnp.sqrt(ab) * x, jnp.full((x.shape[0],), int(t), jnp.int32), jnp.asarray(labels, jnp.int32))
    return np.asarray(jnp.sqrt(1.0 - ab) * jnp.sqrt(jnp.mean(jnp.square(e), axis=tuple(range(1, x.ndim)))), np.float64)


def pairwise_rms(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """RMS pixel distance ``[len(a), len(b)]`` (float64)."""
    a = np.asarray(a, np.float64).reshape(len(a), -1)
    b = np.asarray(b, np.float64).reshape(len(b), -1)
    d2 = (a ** 2).sum(1)[:, None] + (b ** 2).sum(1)[None] - 2 * a @ b.T
    return np.sqrt(np.maximum(d2, 0.0) / a.shape[1])


def sample_metrics(samples: np.ndarray, train_images: np.ndarray, clf_params: Any, real_hf: float,
                   mem_threshold: float, num_classes: int = 9) -> dict:
    """The four corruption-stage curves for one batch of samples.

    fidelity       mean over samples of max cosine similarity (classifier features) to the fine-tune images
    noise          mean high-frequency ratio of samples / the same statistic of real digits (1.0 = real-like)
    memorisation   fraction of samples whose nearest fine-tune image is within ``mem_threshold`` RMS
    diversity      mean pairwise RMS distance between samples
    nn_rms         mean RMS distance to the nearest fine-tune image
    noise_vs_nn    mean high-frequency ratio of each sample / that of its nearest fine-tune image
                   [our choice] (a faithful copy scores 1, so memorising a sharp image is not "noise")
    """
    fs = np.asarray(classifier_features(clf_params, jnp.asarray(samples), num_classes), np.float64)
    ft = np.asarray(classifier_features(clf_params, jnp.asarray(train_images), num_classes), np.float64)
    fs /= np.linalg.norm(fs, axis=1, keepdims=True) + 1e-12
    ft /= np.linalg.norm(ft, axis=1, keepdims=True) + 1e-12
    fidelity = float((fs @ ft.T).max(1).mean())
    noise = float(high_frequency_ratio(samples).mean() / real_hf)
    dist = pairwise_rms(samples, train_images)
    nn_d = dist.min(1)
    hf_s, hf_t = high_frequency_ratio(samples), high_frequency_ratio(train_images)
    noise_vs_nn = float((hf_s / np.maximum(hf_t[dist.argmin(1)], 1e-8)).mean())
    d = pairwise_rms(samples, samples)
    n = len(samples)
    diversity = float(d.sum() / (n * (n - 1))) if n > 1 else 0.0
    return {"fidelity": fidelity, "noise": noise, "memorisation": float((nn_d < mem_threshold).mean()),
            "diversity": diversity, "nn_rms": float(nn_d.mean()), "noise_vs_nn": noise_vs_nn}


def _curve(steps, values) -> tuple[np.ndarray, np.ndarray]:
    """``(steps, values)`` as arrays (values float64), checked to be one evaluated curve."""
    steps, values = np.asarray(steps), np.asarray(values, np.float64)
    if steps.shape != values.shape or steps.ndim != 1 or len(steps) == 0:
        raise ValueError(f"steps {steps.shape} and values {values.shape} must be equal-length non-empty 1-D arrays")
    return steps, values


def excursions(steps: np.ndarray, values: np.ndarray, level: float) -> dict:
    """How a curve sits above ``level``: isolated spikes and a sustained stage read differently.

    ``steps``/``values``: ``[n]`` evaluation steps (increasing) and the curve at them.

    evals_above          number of evaluations with ``value > level``
    fraction_above       ``evals_above / n``
    longest_span         ``[first_step, last_step]`` of the longest run of *consecutive* evaluations
                         above ``level`` (earliest on ties), or None
    longest_span_evals   its length in evaluations (0 if none)
    mean_excess          mean over evaluations of ``max(value - level, 0)`` (area above ``level``
                         per evaluation; unlike the peak, one spike does not dominate it)
    """
    steps, values = _curve(steps, values)
    above = values > level
    best, best_start, run_start = 0, None, None
    for i, a in enumerate(above):
        if a and run_start is None:
            run_start = i
        if run_start is not None and (not a or i == len(above) - 1):
            end = i if a else i - 1
            if end - run_start + 1 > best:
                best, best_start = end - run_start + 1, run_start
            run_start = None
    return {"evals_above": int(above.sum()), "fraction_above": float(above.mean()),
            "longest_span": [int(steps[best_start]), int(steps[best_start + best - 1])] if best else None,
            "longest_span_evals": int(best), "mean_excess": float(np.maximum(values - level, 0.0).mean())}


def smoothed_peak(steps: np.ndarray, values: np.ndarray, window: int = 3) -> tuple[float, int]:
    """``(peak, step)`` of the centred moving average of ``window`` consecutive evaluations (odd
    ``window``; the step is the window's centre). A curve shorter than ``window`` is averaged whole
    and reported at its middle evaluation.

    [our choice] A peak read from one evaluation is set by whichever evaluation happens to spike
    (on the 16x16 digits runs consecutive evaluations of the HF noise differ by up to 2x); the
    moving average keeps a bump that lasts ``window`` evaluations and dilutes a one-evaluation spike
    by ``window``.
    """
    steps, values = _curve(steps, values)
    if window < 1 or window % 2 == 0:
        raise ValueError(f"window={window}: use an odd number of evaluations >= 1")
    if len(values) < window:
        return float(values.mean()), int(steps[len(steps) // 2])
    ma = np.convolve(values, np.ones(window) / window, mode="valid")
    i = int(np.argmax(ma))
    return float(ma[i]), int(steps[i + window // 2])


def tail_mean(values: np.ndarray, k: int = 5) -> float:
    """Mean of the last ``k`` evaluations (all of them when fewer): an end-of-run value that one
    evaluation's swing does not set [our choice, reported beside the last evaluation]."""
    values = np.asarray(values, np.float64)
    if values.ndim != 1 or len(values) == 0 or k < 1:
        raise ValueError(f"tail_mean: need a non-empty 1-D curve and k >= 1 (got shape {values.shape}, k={k})")
    return float(values[-k:].mean())
