"""Pretraining and few-shot fine-tuning of a small class-conditional DDPM (with or without a BNN).

Public API (also used by CGI-DM, :mod:`jaxlab.diffusion.cgi`):

    model = UNet2DModel(small_unet_config(resolution=8))
    params = pretrain(model, schedule, x, y, steps=..., key=...)           # classes 0-8
    params_ft, state = fine_tune(model, schedule, params, images, labels,   # K images of a new class
                                 steps=..., lr=..., key=..., posterior=None | bnn.mean_field(...))
    model, params, schedule = load_pretrained(workdir)                     # what experiments/fewshot_dm wrote
    x = sample(model, params, schedule, labels, key)                       # DDIM by default
    # classifier-free guidance: pretrain(..., p_uncond=0.1, null_label=10) on a model with 11 class
    # embeddings, then sample(..., guidance_scale=7.5, null_label=10)

Fine-tuning follows the authors' DreamBooth recipe at tiny scale: AdamW (weight decay 1e-2),
gradient clipping 1.0, constant LR, the whole UNet trainable, optional prior preservation
(``prior_images``/``prior_labels`` with ``prior_weight``), and with a posterior one weight sample
per step plus ``kl_weight * posterior.kl(state)``. The new subject is bound to class label 9,
whose embedding was never trained during pretraining (the analogue of DreamBooth's rare token).
"""

from __future__ import annotations

import functools
import json
import os
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxlab.diffusion import ddpm
from jaxlab.diffusion.bnn import Posterior
from jaxlab.diffusion.unet import UNet2DConfig, UNet2DModel, load_diffusers_unet, save_diffusers_unet

__all__ = ["small_unet_config", "check_digits_pretraining", "eps_fn_for", "pretrain", "fine_tune", "make_fine_tune_step", "pretrain_optimizer", "sample",
           "load_pretrained", "save_pretrained"]


def check_digits_pretraining(config, attention: bool = False) -> None:
    """The config fields of a digits study's pretraining (``experiments.fewshot_dm`` and
    ``experiments.cgi_dm``): one ValueError naming the field, before any pretraining starts.
    ``held_out_class`` must be 9: the classifier, the label check and the UNet's label set are built
    for digits 0-8 pretrained and 9 held out. ``attention``: also check ``config.attention``
    against the UNet's levels."""
    from jaxlab.utils.experiment import check_choice, check_ints, check_number
    check_ints(config, "seed", low=0)
    if config.held_out_class != 9:
        raise ValueError(f"held_out_class={config.held_out_class!r} must be 9 (the classifier, the label check and "
                         "the UNet's label set are built for digits 0-8 pretrained and 9 held out)")
    check_ints(config, "num_timesteps", low=2)
    check_ints(config, "pretrain_steps", "pretrain_batch", "classifier_steps")
    check_number(config, "pretrain_lr", 0, low_open=True)
    check_choice(config, "schedule", ("linear", "cosine"))
    small_unet_config(config.resolution, 10, tuple(config.channels),  # resolution vs the UNet's levels
                      attention=tuple(config.attention) if attention else None)


def small_unet_config(resolution: int = 8, num_classes: int = 10, channels=(16, 32), head_dim: int = 16,
                      attention=None) -> UNet2DConfig:
    """[our choice] Two levels, GroupNorm(8), one ResNet per level, class embedding table of
    ``num_classes`` entries. ``attention``: one bool per level (finest first) saying whether that
    level has self-attention; default all True (the BNN then has Bayesian leaves at every scale).
    At 16x16, attention at the finest level costs ~3x the step time on CPU, so the 16x16 study
    uses ``(False, True)``."""
    n = len(channels)
    if resolution % (2 ** (n - 1)):
        raise ValueError(f"resolution={resolution} must be divisible by {2 ** (n - 1)} for {n} levels")
    attention = (True,) * n if attention is None else tuple(bool(a) for a in attention)
    if len(attention) != n:
        raise ValueError(f"attention={attention} needs one bool per level ({n} channels given)")
    down = tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in attention)
    up = tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in attention[::-1])
    return UNet2DConfig(sample_size=resolution, in_channels=1, out_channels=1, block_out_channels=tuple(channels),
                        down_block_types=down, up_block_types=up,
                        layers_per_block=1, norm_num_groups=8, attention_head_dim=head_dim, norm_eps=1e-6,
                        num_class_embeds=num_classes, flip_sin_to_cos=True, freq_shift=0)


def eps_fn_for(model: UNet2DModel) -> Callable:
    """``eps_fn(params, x, t, labels)`` for :mod:`ddpm`; cached per model so jitted samplers are reused."""
    return _eps_fn_cache(model)


@functools.lru_cache(maxsize=32)
def _eps_fn_cache(model):
    def eps_fn(params, x, t, cond):
        return model.apply({"params": params}, x, t, cond)
    return eps_fn


@functools.lru_cache(maxsize=32)
def _guided_eps_fn(model, scale: float, null_label: int):
    """Classifier-free guidance (Ho & Salimans 2022): ``eps_u + scale * (eps_c - eps_u)``, the
    conditional and the null-label (unconditional) predictions from one batched call."""
    def eps_fn(params, x, t, cond):
        n = x.shape[0]
        both = model.apply({"params": params}, jnp.concatenate([x, x]), jnp.concatenate([t, t]),
                           jnp.concatenate([cond, jnp.full_like(cond, null_label)]))
        eps_c, eps_u = both[:n], both[n:]
        return eps_u + scale * (eps_c - eps_u)
    return eps_fn


def sample(model: UNet2DModel, params: Any, schedule: ddpm.Schedule, labels: jax.Array, key: jax.Array,
           num_steps: int = 50, eta: float = 0.0, sampler: str = "ddim", guidance_scale: float = 1.0,
           null_label: int | None = None) -> jax.Array:
    """Class-conditional samples ``[len(labels), H, W, 1]`` in [-1, 1] (DDIM by default, or full DDPM).

    ``guidance_scale`` != 1: classifier-free guidance against the ``null_label`` class (a model
    pretrained with ``pretrain(..., p_uncond > 0, null_label=...)``); each step then costs two
    UNet evaluations, as in Stable Diffusion's sampling (the paper's runs use scale 7.5).
    """
    s = model.config.sample_size
    shape = (int(labels.shape[0]), s, s, model.config.in_channels)
    labels = jnp.asarray(labels, jnp.int32)
    eps_fn = eps_fn_for(model)
    if float(guidance_scale) != 1.0:
        n_cls = model.config.num_class_embeds
        if null_label is None or n_cls is None or not 0 <= int(null_label) < n_cls:
            raise ValueError(f"guidance_scale={guidance_scale} needs null_label, the unconditional class index of a "
                             f"model pretrained with p_uncond > 0 (this model has {n_cls} class embeddings); "
                             "or use guidance_scale=1.0")
        eps_fn = _guided_eps_fn(model, float(guidance_scale), int(null_label))
    if sampler == "ddim":
        return ddpm.ddim_sample(eps_fn, params, schedule, shape, key, labels, num_steps=num_steps, eta=eta)
    if sampler == "ddpm":
        return ddpm.ddpm_sample(eps_fn, params, schedule, shape, key, labels)
    raise ValueError(f"sampler={sampler!r}: use 'ddim' or 'ddpm'")


def pretrain_optimizer(lr: float, steps: int) -> optax.GradientTransformation:
    """Clip 1.0 + Adam with linear warm-up and cosine decay to 5% of ``lr`` [our choice]."""
    return optax.chain(optax.clip_by_global_norm(1.0),
                       optax.adam(optax.warmup_cosine_decay_schedule(0.0, lr, min(200, steps // 10 + 1), steps, lr * 0.05)))


def pretrain(model: UNet2DModel, schedule: ddpm.Schedule, x: np.ndarray, y: np.ndarray, *, steps: int,
             key: jax.Array, lr: float = 2e-3, batch_size: int = 64, params: Any = None, opt_state: Any = None,
             start_step: int = 0, callback: Callable | None = None, callback_every: int = 0,
             progress_desc: str | None = None, p_uncond: float = 0.0, null_label: int | None = None):
    """Trains ``model`` with the epsilon loss on ``(x [N,H,W,1], y [N])``; Adam with cosine-decayed LR.

    ``p_uncond`` > 0: each example's label is replaced by ``null_label`` with this probability, so
    the model also learns the unconditional prediction that classifier-free guidance needs
    (``sample(..., guidance_scale, null_label)``; Ho & Salimans 2022 use 0.1-0.2).

    Resumable: pass ``params``/``opt_state``/``start_step`` from a checkpoint. ``callback(step, params,
    opt_state, loss)`` runs every ``callback_every`` steps (and at the end). Returns ``(params, opt_state)``.
    The step keys are ``fold_in(key, step)`` so a resumed run equals an uninterrupted one.
    """
    from jaxlab.utils.progress import progress

    xs, ys = jnp.asarray(x), jnp.asarray(y, jnp.int32)
    if not 0.0 <= p_uncond < 1.0:
        raise ValueError(f"p_uncond={p_uncond} must be in [0, 1)")
    if p_uncond > 0 and (null_label is None or model.config.num_class_embeds is None
                         or not 0 <= int(null_label) < model.config.num_class_embeds):
        raise ValueError(f"p_uncond={p_uncond} needs null_label, a class index of the model's "
                         f"{model.config.num_class_embeds} embeddings that no training label uses")
    if p_uncond > 0 and bool(np.any(np.asarray(y) == int(null_label))):
        raise ValueError(f"null_label={null_label} is also a training label: give the unconditional class its own index")
    if params is None:
        params = model.init(jax.random.fold_in(key, -1 % 2 ** 31), xs[:1], jnp.zeros((1,), jnp.int32), ys[:1])["params"]
    opt = pretrain_optimizer(lr, steps)
    opt_state = opt.init(params) if opt_state is None else opt_state
    eps_fn = eps_fn_for(model)

    @jax.jit
    def step_fn(params, opt_state, key):
        ki, kl = jax.random.split(key)
        idx = jax.random.randint(ki, (batch_size,), 0, xs.shape[0])
        yb = ys[idx]
        if p_uncond > 0:
            ku = jax.random.fold_in(key, 1)  # its own key: p_uncond = 0 keeps the earlier stream
            yb = jnp.where(jax.random.uniform(ku, (batch_size,)) < p_uncond, int(null_label), yb)
        loss, g = jax.value_and_grad(ddpm.eps_loss, argnums=1)(eps_fn, params, schedule, xs[idx], kl, yb)
        u, opt_state = opt.update(g, opt_state, params)
        return optax.apply_updates(params, u), opt_state, loss

    loss = jnp.nan
    for step in progress(range(start_step + 1, steps + 1), total=steps, initial=start_step, desc=progress_desc or "pretrain"):
        params, opt_state, loss = step_fn(params, opt_state, jax.random.fold_in(key, step))
        if callback is not None and callback_every and (step % callback_every == 0 or step == steps):
            if not np.isfinite(float(loss)):
                raise FloatingPointError(f"pretraining loss is {float(loss)} at step {step}: lower lr")
            callback(step, params, opt_state, float(loss))
    return params, opt_state


def make_fine_tune_step(model: UNet2DModel, schedule: ddpm.Schedule, images: jax.Array, labels: jax.Array, *,
                        lr: float, batch_size: int, posterior: Posterior | None = None, kl_weight: float = 0.0,
                        prior_images: jax.Array | None = None, prior_labels: jax.Array | None = None,
                        prior_weight: float = 1.0, weight_decay: float = 1e-2, grad_clip: float = 1.0):
    """Builds ``(opt, step_fn)`` for fine-tuning; ``step_fn(state, opt_state, key) -> (state, opt_state, metrics)``.

    ``state`` is the params tree (``posterior=None``) or the posterior's variational state.
    Each step draws ``batch_size`` instance images with replacement from ``images`` (and as many prior
    images when ``prior_images`` is given), one timestep/noise per image, and one weight sample.
    """
    images, labels = jnp.asarray(images), jnp.asarray(labels, jnp.int32)
    if images.shape[0] != labels.shape[0]:
        raise ValueError(f"images ({images.shape[0]}) and labels ({labels.shape[0]}) differ in length")
    eps_fn = eps_fn_for(model)
    base_opt = optax.chain(optax.clip_by_global_norm(grad_clip), optax.adamw(lr, weight_decay=weight_decay))
    if posterior is not None:
        opt = optax.multi_transform(
            {"train": base_opt, "freeze": optax.set_to_zero()},
            lambda st: jax.tree_util.tree_map(lambda b: "train" if b else "freeze", posterior.trainable(st)))
    else:
        opt = base_opt
    use_prior = prior_images is not None
    if use_prior:
        prior_images, prior_labels = jnp.asarray(prior_images), jnp.asarray(prior_labels, jnp.int32)

    def loss_fn(state, key):
        kw, ki, kl, kp, kpl = jax.random.split(key, 5)
        params = posterior.sample(state, kw) if posterior is not None else state
        idx = jax.random.randint(ki, (batch_size,), 0, images.shape[0])
        inst = ddpm.eps_loss(eps_fn, params, schedule, images[idx], kl, labels[idx])
        total, metrics = inst, {"loss_instance": inst}
        if use_prior:
            pidx = jax.random.randint(kp, (batch_size,), 0, prior_images.shape[0])
            prior = ddpm.eps_loss(eps_fn, params, schedule, prior_images[pidx], kpl, prior_labels[pidx])
            total = total + prior_weight * prior
            metrics["loss_prior"] = prior
        if posterior is not None and kl_weight != 0:
            # only when it counts: a weight of 0 (the authors' released runs) must not turn an
            # infinite KL (prior_sigma 0) into NaN through 0 * inf
            kl_val = posterior.kl(state)
            metrics["kl"] = kl_val
            total = total + kl_weight * kl_val
        return total, metrics

    @jax.jit
    def step_fn(state, opt_state, key):
        (loss, metrics), g = jax.value_and_grad(loss_fn, has_aux=True)(state, key)
        u, opt_state = opt.update(g, opt_state, state)
        state = optax.apply_updates(state, u)
        if posterior is not None:
            state = posterior.project(state)
        return state, opt_state, {"loss": loss, **metrics}

    return opt, step_fn


def fine_tune(model: UNet2DModel, schedule: ddpm.Schedule, pretrained: Any, images: np.ndarray, labels: np.ndarray,
              *, steps: int, lr: float, key: jax.Array, batch_size: int = 8, posterior: Posterior | None = None,
              kl_weight: float = 0.0, prior_images=None, prior_labels=None, prior_weight: float = 1.0,
              weight_decay: float = 1e-2, grad_clip: float = 1.0, callback: Callable | None = None,
              callback_every: int = 0, resume: tuple | None = None, progress_desc: str | None = None):
    """Few-shot fine-tuning of ``pretrained`` on ``images [K,H,W,1]`` with ``labels [K]``.

    Returns ``(params, state)``: ``params`` are the inference weights (the posterior mean with a BNN,
    so sampling costs exactly the base model) and ``state`` the full trained state.
    ``callback(step, state, opt_state, params, metrics)`` runs at step 0 and every ``callback_every``
    steps (use it to evaluate and checkpoint). ``resume=(step, state, opt_state)`` continues a run;
    step keys are ``fold_in(key, step)``, so resuming reproduces the uninterrupted run.
    """
    from jaxlab.utils.progress import progress

    if steps < 0:
        raise ValueError(f"steps={steps} must be >= 0")
    opt, step_fn = make_fine_tune_step(model, schedule, images, labels, lr=lr, batch_size=batch_size,
                                       posterior=posterior, kl_weight=kl_weight, prior_images=prior_images,
                                       prior_labels=prior_labels, prior_weight=prior_weight,
                                       weight_decay=weight_decay, grad_clip=grad_clip)
    if resume is None:
        state = posterior.init(pretrained, jax.random.fold_in(key, 2 ** 30)) if posterior is not None else pretrained
        state = jax.tree_util.tree_map(jnp.asarray, state)
        opt_state, start = opt.init(state), 0
    else:
        start, state, opt_state = resume
    mean = (lambda s: posterior.mean(s)) if posterior is not None else (lambda s: s)
    if callback is not None and start == 0:
        callback(0, state, opt_state, mean(state), {})
    for step in progress(range(start + 1, steps + 1), total=steps, initial=start, desc=progress_desc or "fine-tune"):
        state, opt_state, metrics = step_fn(state, opt_state, jax.random.fold_in(key, step))
        if callback is not None and callback_every and (step % callback_every == 0 or step == steps):
            metrics = {k: float(v) for k, v in metrics.items()}
            if not np.isfinite(metrics["loss"]):
                raise FloatingPointError(f"fine-tuning loss is {metrics['loss']} at step {step}: lower lr")
            callback(step, state, opt_state, mean(state), metrics)
    return mean(state), state


def save_pretrained(path: str, model: UNet2DModel, params: Any, schedule_name: str, num_timesteps: int,
                    extra: dict | None = None) -> None:
    """Writes a diffusers-format UNet folder + ``scheduler.json`` (our schedule name and T)."""
    save_diffusers_unet(path, model.config, params)
    with open(os.path.join(path, "scheduler.json"), "w") as f:
        json.dump({"schedule": schedule_name, "num_timesteps": num_timesteps, **(extra or {})}, f, indent=2)


def load_pretrained(path: str) -> tuple[UNet2DModel, Any, ddpm.Schedule]:
    """Loads what :func:`save_pretrained` wrote. ``path`` may be the experiment workdir
    (``<workdir>/pretrained_unet`` is used) or the UNet folder itself."""
    if os.path.isdir(os.path.join(path, "pretrained_unet")):
        path = os.path.join(path, "pretrained_unet")
    sched_file = os.path.join(path, "scheduler.json")
    if not os.path.isfile(sched_file):
        raise FileNotFoundError(f"{sched_file} not found: run `python -m experiments.fewshot_dm --workdir=...` first")
    model, params = load_diffusers_unet(path)
    with open(sched_file) as f:
        s = json.load(f)
    params = jax.tree_util.tree_map(jnp.asarray, params)
    return model, params, ddpm.make_schedule(s["schedule"], s["num_timesteps"])
