"""Few-shot DDPM fine-tuning on digits: the corruption stage, and its mitigation with a BNN (arXiv 2405.19931).

python -m experiments.fewshot_dm --workdir=/tmp/fewshot_dm --config=experiments/configs/fewshot_dm.py:quick

1. Trains a small CNN classifier on digits 0-8 (label check + feature space for fidelity).
2. Pretrains a class-conditional DDPM (diffusers UNet2DModel topology, 8x8) on digits 0-8; exports it to
   ``<workdir>/pretrained_unet`` (diffusers format; :func:`jaxlab.diffusion.fewshot.load_pretrained`).
   Cached: a rerun in the same workdir skips steps 1-2.
3. For each K in ``shots`` and each method (``plain`` / ``bnn``), fine-tunes on K images of digit 9
   (label 9, never seen in pretraining) and logs, on a fixed-seed DDIM sample set, fidelity, noise
   (high-frequency energy / real digits), memorisation and diversity every ``eval_every`` steps into
   ``runs/K<k>_<method>/metrics.jsonl`` (resumable from orbax checkpoints).
4. Writes ``curves.png``, ``samples_K<k>.png``, ``summary.json``.
"""

from __future__ import annotations

import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxlab.data.digits import load_digits
from jaxlab.diffusion import bnn, ddpm, fewshot, metrics
from jaxlab.diffusion.unet import UNet2DModel, count_params
from jaxlab.utils.checkpoint import Checkpointer
from jaxlab.utils.experiment import check_choice, check_ints, check_number
from jaxlab.utils.workdir import Workdir, markdown_table

PRETRAIN_KEYS = ("seed", "resolution", "held_out_class", "channels", "attention", "schedule", "num_timesteps",
                 "pretrain_steps", "pretrain_lr", "pretrain_batch")
METHODS = ("plain", "bnn")  # fine-tuning methods (config.methods)


# What the authors' released DreamBooth scripts fix (diffusion.md section 1a; LR/steps/sampler steps are at SD-1.5
# 512 px scale); every other setting of a run
# is ours and is labelled "[our choice]" in summary.json["settings"] (see :func:`provenance`).
PAPER_SETTINGS = {"weight_decay": 1e-2, "grad_clip": 1.0, "finetune_batch": 1, "prior_weight": 1.0,
                  "finetune_lr": 5e-6, "finetune_steps": 1200, "sampler_steps": 50, "num_timesteps": 1000,
                  "guidance_scale": 7.5,
                  "bnn.lora_rank": 4,
                  "bnn.variant": "mean_field", "bnn.include": bnn.DREAMBOOTH_INCLUDE, "bnn.init_sigma": 0.01,
                  "bnn.prior_sigma": 0.01, "bnn.parametrization": "direct", "bnn.kl_weight": 0.0,
                  "bnn.kl_direction": "prior_posterior"}
FIXED_BY_CODE = {
    "constant fine-tuning LR, AdamW + global-norm clipping, whole UNet trained": "[paper]",
    "one weight draw per step shared by the batch; mu from pretrained; sigma direct, clamped >= 1e-7": "[paper]",
    "sampling with the posterior mean (sigma = 0)": "[paper]",
    "fidelity / noise / residual noise / memorisation / diversity definitions (jaxlab.diffusion.metrics)":
        "[our choice] (diffusion.md section 2 proposal: digit-classifier features for DINO, pairwise RMS for LPIPS)",
    "new subject bound to the never-trained class label 9 (rare-token analogue)": "[our choice]",
}


def provenance(config) -> dict:
    """``{key: {"value": v, "source": "[paper]" | "[our choice]" | "[our choice] (paper: x)"}}`` for every
    config leaf (nested keys joined with '.'), against :data:`PAPER_SETTINGS`."""
    def flat(d, prefix=""):
        for k, v in d.items():
            if hasattr(v, "items"):
                yield from flat(v, f"{prefix}{k}.")
            else:
                yield f"{prefix}{k}", v

    out = {}
    for key, value in flat(config):
        if key == "selection":  # a note on how the preset was chosen, reported as summary["selection"]
            continue
        value = list(value) if isinstance(value, tuple) else value
        if key in PAPER_SETTINGS:
            paper = PAPER_SETTINGS[key]
            source = "[paper]" if value == paper else f"[our choice] (paper: {paper})"
        else:
            source = "[our choice]"
        out[key] = {"value": value, "source": source}
    return out


def _split(config):
    x, y = load_digits(resolution=config.resolution, normalize=True)
    x, y = np.array(x), np.array(y)
    rng = np.random.default_rng(config.seed)
    perm = rng.permutation(len(x))
    x, y = x[perm], y[perm]
    held = y == config.held_out_class
    xp, yp = x[~held], y[~held]
    n_test = len(xp) // 10
    return {"pre_train": (xp[n_test:], yp[n_test:]), "pre_test": (xp[:n_test], yp[:n_test]),
            "new": x[held]}


def _classifier(wd, config, data):
    ck = Checkpointer(os.path.join(wd.path, "classifier"), max_to_keep=1)
    xtr, ytr = data["pre_train"]
    like = metrics.DigitClassifier(9).init(jax.random.PRNGKey(0), jnp.zeros((1,) + xtr.shape[1:]))["params"]
    step, params = ck.restore(like)
    if step is None:
        params = metrics.train_classifier(xtr, ytr, 9, jax.random.PRNGKey(config.seed + 1), steps=config.classifier_steps)
        ck.save(config.classifier_steps, params)
    xte, yte = data["pre_test"]
    acc = float((np.asarray(metrics.classifier_predict(params, jnp.asarray(xte))) == yte).mean())
    return params, acc


def _null_label(config):
    """The unconditional class index (10, after the ten digits) when pretraining drops labels for
    classifier-free guidance (``p_uncond`` > 0), else None."""
    return 10 if float(config.get("p_uncond", 0.0)) > 0 else None


def _sampler_kw(config) -> dict:
    return {"num_steps": config.sampler_steps, "eta": config.sampler_eta,
            "guidance_scale": float(config.get("guidance_scale", 1.0)), "null_label": _null_label(config)}


def _pretrained(wd, config, data):
    """Resumable pretraining with orbax checkpoints; the finished model is exported in diffusers format."""
    export = wd.file("pretrained_unet")
    sig = {k: (list(config[k]) if isinstance(config[k], tuple) else config[k]) for k in PRETRAIN_KEYS}
    if _null_label(config) is not None:  # only then, so workdirs pretrained before the option stay valid
        sig["p_uncond"] = float(config.p_uncond)
    if os.path.isfile(os.path.join(export, "scheduler.json")):
        with open(os.path.join(export, "scheduler.json")) as f:
            cached = json.load(f).get("pretrain_config")
        if cached == json.loads(json.dumps(sig)):
            model, params, schedule = fewshot.load_pretrained(export)
            return model, params, schedule, True
        raise ValueError(f"{export} was pretrained with {cached}, not {sig}: use a fresh --workdir")
    model = UNet2DModel(fewshot.small_unet_config(config.resolution, 10 + (_null_label(config) is not None),
                                                  tuple(config.channels),
                                                  attention=tuple(config.attention)))
    schedule = ddpm.make_schedule(config.schedule, config.num_timesteps)
    x, y = data["pre_train"]
    key = jax.random.PRNGKey(config.seed)
    ck = Checkpointer(os.path.join(wd.path, "pretrain_ckpt"), max_to_keep=1)
    params0 = model.init(key, jnp.asarray(x[:1]), jnp.zeros((1,), jnp.int32), jnp.asarray(y[:1]))["params"]
    opt_like = fewshot.pretrain_optimizer(config.pretrain_lr, config.pretrain_steps).init(params0)
    step, restored = ck.restore({"params": params0, "opt_state": opt_like})
    start = step or 0
    if step is not None:
        wd.truncate_metrics(step)

    def cb(step, params, opt_state, loss):
        wd.log(step, phase="pretrain", loss=loss)
        ck.save(step, {"params": params, "opt_state": opt_state})

    params, _ = fewshot.pretrain(model, schedule, x, y, steps=config.pretrain_steps, key=key, lr=config.pretrain_lr,
                                 batch_size=config.pretrain_batch,
                                 params=restored["params"] if step is not None else params0,
                                 opt_state=restored["opt_state"] if step is not None else None,
                                 start_step=start, callback=cb, callback_every=max(config.pretrain_steps // 20, 1),
                                 p_uncond=float(config.get("p_uncond", 0.0)), null_label=_null_label(config))
    fewshot.save_pretrained(export, model, params, config.schedule, config.num_timesteps,
                            extra={"pretrain_config": sig, "held_out_class": config.held_out_class})
    return model, jax.tree_util.tree_map(jnp.asarray, params), schedule, False


def _posterior(config, params):
    b = config.bnn
    if b.variant == "mean_field":
        mask = bnn.bayesian_mask(params, b.include)
        return bnn.mean_field(mask, b.init_sigma, b.prior_sigma, b.parametrization, kl_direction=b.kl_direction), mask
    if b.variant == "lora":
        mask = bnn.bayesian_mask(params, b.include.replace("(kernel|bias)", "kernel"))
        return bnn.lora(mask, b.lora_rank, b.init_sigma, b.prior_sigma, b.parametrization,
                        kl_direction=b.kl_direction), mask
    raise ValueError(f"bnn.variant={b.variant!r}: use 'mean_field' or 'lora'")


def residual_noise_fn(model, pretrained, schedule, clf, t):
    """Per-sample residual noise std seen by the *pretrained* UNet at timestep ``t``, each sample
    conditioned on the label the classifier gives it (our pretrained model has no trained label 9)."""
    eps_fn = fewshot.eps_fn_for(model)

    def f(x):
        x = jnp.asarray(x, jnp.float32)
        return metrics.denoiser_noise_level(eps_fn, pretrained, schedule, x, metrics.classifier_predict(clf, x), t)
    return f


# Settings a resumed fine-tuning run may change: which runs exist, and how long they train (a constant-LR
# run extended by more steps continues the same trajectory).
RESUME_MAY_CHANGE = ("shots", "methods", "finetune_steps", "selection")


def _check_resume_settings(run_wd, config, name):
    """Refuses to resume run ``name`` under settings other than those it started with: its curve would
    mix two settings. Keys the stored config lacks (added to the code later) must be at their defaults."""
    from experiments.configs.fewshot_dm import get_config

    path = run_wd.file("config.json")
    if not os.path.exists(path):
        return
    with open(path) as f:
        stored = json.load(f).get("config", {})
    defaults = provenance(get_config("paper"))
    now = provenance(config)
    flat_stored = {k: v["value"] for k, v in provenance(stored).items()} if stored else {}
    diff = []
    for key, cur in now.items():
        if key.split(".")[0] in RESUME_MAY_CHANGE:
            continue
        old = flat_stored.get(key, defaults.get(key, {}).get("value", cur["value"]))
        if json.loads(json.dumps(old)) != json.loads(json.dumps(cur["value"])):
            diff.append(f"{key}: {old!r} -> {cur['value']!r}")
    if diff:
        raise ValueError(f"run {name} in {run_wd.path} was started with other settings ({'; '.join(diff)}); "
                         "resuming would mix them in one curve: use a fresh --workdir (or delete that run's folder)")


def _finetune_run(wd, config, name, k, method, model, schedule, pretrained, data, clf, real_hf, real_res):
    _residual = residual_noise_fn(model, pretrained, schedule, clf, config.residual_t)
    run_wd = Workdir(os.path.join(wd.path, "runs", name))
    new = data["new"]
    images = new[:k]
    labels = np.full((k,), config.held_out_class, np.int32)
    post = None
    if method == "bnn":
        post, _ = _posterior(config, pretrained)
    elif method != "plain":
        raise ValueError(f"method {method!r}: use one of {METHODS}")
    prior = {}
    if config.prior_weight > 0:
        prior = dict(prior_images=data["pre_train"][0], prior_labels=data["pre_train"][1], prior_weight=config.prior_weight)
    key = jax.random.PRNGKey(config.seed + 100 + k)  # same data/noise stream for plain and bnn
    eval_key = jax.random.PRNGKey(config.seed + 7)
    eval_labels = jnp.full((config.eval_samples,), config.held_out_class, jnp.int32)
    samples_path = run_wd.file("samples.npz")
    ck = Checkpointer(run_wd.checkpoint_dir, max_to_keep=1)

    # resume: restore (state, opt_state) of the last evaluation step
    opt, _ = fewshot.make_fine_tune_step(model, schedule, images, labels, lr=config.finetune_lr,
                                         batch_size=config.finetune_batch, posterior=post)
    state0 = post.init(pretrained, jax.random.fold_in(key, 2 ** 30)) if post is not None else pretrained
    step, restored = ck.restore({"state": state0, "opt_state": opt.init(state0)})
    resume = None
    saved = {}
    if step is not None:
        _check_resume_settings(run_wd, config, name)
        run_wd.truncate_metrics(step)
        if os.path.exists(samples_path):
            with np.load(samples_path) as z:
                saved = {int(s): z[s] for s in z.files if int(s) <= step}
        resume = (step, jax.tree_util.tree_map(jnp.asarray, restored["state"]), restored["opt_state"])
    else:
        run_wd.write_config(config, run=name, shots=k, method=method)

    def cb(step, state, opt_state, params, m):
        t0 = time.time()
        xs = np.asarray(fewshot.sample(model, params, schedule, eval_labels, eval_key, **_sampler_kw(config)))
        row = metrics.sample_metrics(xs, images, clf, real_hf, config.mem_threshold)
        row["residual_noise"] = float(_residual(xs).mean() / real_res)
        row.update(m)
        if post is not None:
            sig = jax.tree_util.tree_leaves(post.sigmas(state))
            row["sigma_mean"] = float(np.mean([np.mean(np.asarray(s)) for s in sig]))
        row["eval_seconds"] = time.time() - t0
        run_wd.log(step, **row)
        saved[step] = xs.astype(np.float16)
        np.savez(samples_path + ".tmp.npz", **{str(s): v for s, v in saved.items()})
        os.replace(samples_path + ".tmp.npz", samples_path)
        ck.save(step, {"state": state, "opt_state": opt_state})

    fewshot.fine_tune(model, schedule, pretrained, images, labels, steps=config.finetune_steps, lr=config.finetune_lr,
                      key=key, batch_size=config.finetune_batch, posterior=post, kl_weight=config.bnn.kl_weight,
                      weight_decay=config.weight_decay, grad_clip=config.grad_clip, callback=cb,
                      callback_every=config.eval_every, resume=resume, progress_desc=name, **prior)
    return run_wd.read_metrics(), saved


def _run_summary(rows, base_noise, base_res):
    steps = np.array([r["step"] for r in rows])
    res = np.array([r["residual_noise"] for r in rows])
    irp = int(np.argmax(res))
    res_above = steps[res > 1.5 * base_res]
    extra = {"residual_start": float(res[0]), "residual_peak": float(res[irp]), "residual_peak_step": int(steps[irp]),
             "residual_final": float(res[-1]), "residual_peak_excess": float(res[irp] - base_res),
             "residual_mean_after_0": float(res[1:].mean()) if len(res) > 1 else float(res[0]),
             "steps_residual_above_1.5x_pretrained": [int(res_above.min()), int(res_above.max())] if len(res_above) else None}
    noise = np.array([r["noise"] for r in rows])
    fid = np.array([r["fidelity"] for r in rows])
    mem = np.array([r["memorisation"] for r in rows])
    nvn = np.array([r["noise_vs_nn"] for r in rows])
    ipk = int(np.argmax(noise))
    above = steps[noise > 1.5 * base_noise]
    # spikes vs a stage: evaluations above 1.5x the pretrained level, their longest consecutive run, and
    # the mean excess over the pretrained level (after step 0), which one spike does not dominate
    for key, curve, lvl in (("noise", noise, base_noise), ("residual", res, base_res)):
        e15 = metrics.excursions(steps, curve, 1.5 * lvl)
        extra[f"{key}_evals_above_1.5x_pretrained"] = e15["evals_above"]
        extra[f"{key}_longest_span_above_1.5x_pretrained"] = e15["longest_span"]
        extra[f"{key}_longest_span_evals_above_1.5x_pretrained"] = e15["longest_span_evals"]
        extra[f"{key}_mean_excess_over_pretrained"] = (metrics.excursions(steps[1:], curve[1:], lvl)["mean_excess"]
                                                       if len(steps) > 1 else 0.0)
    # [our choice] beside the one-evaluation peak and final values: the peak of a 3-evaluation moving
    # average and the mean fidelity of the last 5 evaluations (see metrics.smoothed_peak / tail_mean)
    spk, spk_step = metrics.smoothed_peak(steps, noise, 3)
    extra.update({"noise_peak_smoothed3": spk, "noise_peak_smoothed3_step": spk_step,
                  "noise_peak_smoothed3_excess": spk - base_noise,
                  "fidelity_final_mean_last5": metrics.tail_mean(fid, 5)})
    return {"noise_start": float(noise[0]), "noise_peak": float(noise[ipk]), "noise_peak_step": int(steps[ipk]),
            "noise_final": float(noise[-1]), "noise_peak_excess": float(noise[ipk] - base_noise),
            "steps_noise_above_1.5x_pretrained": [int(above.min()), int(above.max())] if len(above) else None,
            "noise_vs_nn_start": float(nvn[0]), "noise_vs_nn_peak": float(nvn.max()),
            "noise_vs_nn_peak_step": int(steps[np.argmax(nvn)]), "noise_vs_nn_final": float(nvn[-1]),
            "fidelity_start": float(fid[0]), "fidelity_min": float(fid.min()), "fidelity_min_step": int(steps[np.argmin(fid)]),
            "fidelity_final": float(fid[-1]), "memorisation_final": float(mem[-1]),
            "first_step_memorisation_ge_0.5": int(steps[mem >= 0.5].min()) if (mem >= 0.5).any() else None,
            "diversity_final": float(rows[-1]["diversity"]), "diversity_mean": float(np.mean([r["diversity"] for r in rows])),
            **extra}


def _ratio(a, b):
    return a / b if b > 0 else None


def _plot_curves(path, runs, base_noise, real_div, base_res):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = ("fidelity", "residual_noise", "noise", "memorisation", "diversity")
    shots = sorted({v["shots"] for v in runs.values()})
    fig, axes = plt.subplots(len(shots), len(keys), figsize=(20, 3.2 * len(shots)), squeeze=False)
    for i, k in enumerate(shots):
        for name, v in runs.items():
            if v["shots"] != k:
                continue
            st = [r["step"] for r in v["rows"]]
            for j, key in enumerate(keys):
                axes[i, j].plot(st, [r[key] for r in v["rows"]], label=v["method"],
                                color="C0" if v["method"] == "plain" else "C3")
        for j, key in enumerate(keys):
            axes[i, j].set_title(f"K={k}: {key}")
            axes[i, j].set_xlabel("fine-tuning step")
        axes[i, 1].axhline(base_res, ls="--", c="gray", label="pretrained (0-8)")
        axes[i, 1].axhline(1.0, ls=":", c="k", label="real 9s")
        axes[i, 2].axhline(base_noise, ls="--", c="gray", label="pretrained (0-8)")
        axes[i, 2].axhline(1.0, ls=":", c="k", label="real 9s")
        axes[i, 4].axhline(real_div, ls=":", c="k", label="real 9s")
        axes[i, 1].legend(fontsize=7)
        axes[i, 0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _plot_samples(path, k, runs, n_show=16):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sel = [(name, v) for name, v in runs.items() if v["shots"] == k]
    cols = []
    for name, v in sel:
        steps = sorted(v["samples"])
        pk = v["summary"]["residual_peak_step"]
        for s in dict.fromkeys([steps[0], pk, steps[len(steps) // 2], steps[-1]]):
            cols.append((f"{v['method']} step {s}" + (" (peak noise)" if s == pk else ""), v["samples"][s][:n_show]))
    fig, axes = plt.subplots(1, len(cols), figsize=(2.6 * len(cols), 2.9), squeeze=False)
    for ax, (title, xs) in zip(axes[0], cols):
        r = xs.shape[1]
        g = int(np.ceil(np.sqrt(len(xs))))
        grid = np.ones((g * (r + 1), g * (r + 1))) * -1
        for i, x in enumerate(xs):
            a, b = divmod(i, g)
            grid[a * (r + 1):a * (r + 1) + r, b * (r + 1):b * (r + 1) + r] = x[..., 0]
        ax.imshow(grid, cmap="gray", vmin=-1, vmax=1)
        ax.set_title(title, fontsize=8)
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _check_config(config) -> None:
    """Rejects bad values with one ValueError naming the field, before pretraining starts and before the
    workdir is touched (e.g. shots=0 used to crash with a ZeroDivisionError after pretraining)."""
    fewshot.check_digits_pretraining(config, attention=True)
    check_ints(config, "eval_per_class", "finetune_steps", "finetune_batch", "eval_every", "eval_samples")
    check_ints(config, "sampler_steps", why="DDIM steps")
    if config.sampler_steps > config.num_timesteps:
        raise ValueError(f"sampler_steps={config.sampler_steps} must be <= num_timesteps={config.num_timesteps}")
    check_ints(config, "residual_t", low=0)
    if config.residual_t >= config.num_timesteps:
        raise ValueError(f"residual_t={config.residual_t} must be < num_timesteps={config.num_timesteps}")
    check_number(config, "finetune_lr", 0, low_open=True)
    check_number(config, "weight_decay", 0)
    check_number(config, "prior_weight", 0, why="0 disables prior preservation")
    check_number(config, "sampler_eta", 0, 1, why="0: deterministic DDIM, 1: DDPM-like")
    check_number(config, "p_uncond", 0, 1, high_open=True)
    check_number(config, "mem_threshold", 0, low_open=True)
    if float(config.get("guidance_scale", 1.0)) != 1.0 and _null_label(config) is None:
        raise ValueError(f"guidance_scale={config.guidance_scale} needs a model pretrained with an unconditional "
                         "class: set p_uncond > 0 (e.g. --config.p_uncond=0.1) in a fresh --workdir, or guidance_scale=1.0")
    if not config.methods:
        raise ValueError(f"methods={config.methods!r} is empty: use a subset of {METHODS}")
    check_choice(config, "methods", METHODS)
    if "bnn" in config.methods:
        check_choice(config, "bnn.variant", ("mean_field", "lora"))
        check_number(config, "bnn.init_sigma", 0)
        check_number(config, "bnn.prior_sigma", 0, low_open=True)
        check_number(config, "bnn.kl_weight", 0)
        if config.bnn.variant == "lora":
            check_ints(config, "bnn.lora_rank")
    if not config.shots:
        raise ValueError(f"shots={config.shots!r} is empty: give at least one K, e.g. --config.shots=\"(3,)\"")
    _, y = load_digits(resolution=config.resolution)  # cached; also rejects a bad resolution
    n_new = int((np.asarray(y) == config.held_out_class).sum())
    for k in config.shots:
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"shots={k!r} must be an integer >= 1 (the number of fine-tuning images of the "
                             "held-out class)")
        if k > n_new:
            raise ValueError(f"shots={k} exceeds the {n_new} images of class {config.held_out_class}: "
                             f"use shots <= {n_new}")


def run(config, workdir) -> dict:
    _check_config(config)
    wd = Workdir(workdir)
    t_start = time.time()
    data = _split(config)
    clf, clf_acc = _classifier(wd, config, data)
    model, params, schedule, cached = _pretrained(wd, config, data)
    wd.write_config(config, pretrained_cached=cached, unet_params=count_params(params))

    # pretrained model: class-conditional label check and its noise level
    labels = jnp.asarray(np.repeat(np.arange(9), config.eval_per_class), jnp.int32)
    xs = np.asarray(fewshot.sample(model, params, schedule, labels, jax.random.PRNGKey(config.seed + 3),
                                   **_sampler_kw(config)))
    pred = np.asarray(metrics.classifier_predict(clf, jnp.asarray(xs)))
    cond_acc = float((pred == np.asarray(labels)).mean())
    real_hf = float(metrics.high_frequency_ratio(data["new"]).mean())  # real 9s
    real_hf_all = float(metrics.high_frequency_ratio(data["pre_train"][0]).mean())
    base_noise = float(metrics.high_frequency_ratio(xs).mean() / real_hf)
    residual = residual_noise_fn(model, params, schedule, clf, config.residual_t)
    real_res = float(residual(data["new"]).mean())            # real 9s
    base_res = float(residual(xs).mean() / real_res)          # pretrained samples (0-8)
    new = data["new"]
    d = metrics.pairwise_rms(new, new)
    real_div = float(d.sum() / (len(new) * (len(new) - 1)))
    wd.log(config.pretrain_steps, phase="pretrained_eval", conditional_accuracy=cond_acc, noise=base_noise,
           residual_noise=base_res)

    runs = {}
    for k in config.shots:
        for method in config.methods:
            name = f"K{k}_{method}"
            rows, samples = _finetune_run(wd, config, name, k, method, model, schedule, params, data, clf, real_hf,
                                          real_res)
            runs[name] = {"shots": k, "method": method, "rows": rows, "samples": samples,
                          "summary": _run_summary(rows, base_noise, base_res)}

    _plot_curves(wd.file("curves.png"), runs, base_noise, real_div, base_res)
    for k in config.shots:
        _plot_samples(wd.file(f"samples_K{k}.png"), k, runs)

    comparison = []
    for k in config.shots:
        p, b = runs.get(f"K{k}_plain"), runs.get(f"K{k}_bnn")
        if p and b:
            ps, bs = p["summary"], b["summary"]
            comparison.append({
                "K": k, "plain_noise_peak": ps["noise_peak"], "bnn_noise_peak": bs["noise_peak"],
                "peak_excess_ratio_bnn_over_plain": _ratio(bs["noise_peak_excess"], ps["noise_peak_excess"]),
                "plain_residual_peak": ps["residual_peak"], "bnn_residual_peak": bs["residual_peak"],
                "residual_peak_excess_ratio_bnn_over_plain": _ratio(bs["residual_peak_excess"],
                                                                    ps["residual_peak_excess"]),
                "plain_residual_mean": ps["residual_mean_after_0"], "bnn_residual_mean": bs["residual_mean_after_0"],
                "mean_excess_ratio_bnn_over_plain": _ratio(bs["noise_mean_excess_over_pretrained"],
                                                           ps["noise_mean_excess_over_pretrained"]),
                "residual_mean_excess_ratio_bnn_over_plain": _ratio(bs["residual_mean_excess_over_pretrained"],
                                                                    ps["residual_mean_excess_over_pretrained"]),
                "plain_fidelity_min": ps["fidelity_min"], "bnn_fidelity_min": bs["fidelity_min"],
                "smoothed3_peak_excess_ratio_bnn_over_plain": _ratio(bs["noise_peak_smoothed3_excess"],
                                                                     ps["noise_peak_smoothed3_excess"]),
                "plain_fidelity_final": ps["fidelity_final"], "bnn_fidelity_final": bs["fidelity_final"],
                "plain_fidelity_final_mean_last5": ps["fidelity_final_mean_last5"],
                "bnn_fidelity_final_mean_last5": bs["fidelity_final_mean_last5"],
                "plain_diversity_mean": ps["diversity_mean"], "bnn_diversity_mean": bs["diversity_mean"],
                "plain_diversity_final": ps["diversity_final"], "bnn_diversity_final": bs["diversity_final"],
                "plain_mem_final": ps["memorisation_final"], "bnn_mem_final": bs["memorisation_final"],
                "plain_first_step_mem_ge_0.5": ps["first_step_memorisation_ge_0.5"],
                "bnn_first_step_mem_ge_0.5": bs["first_step_memorisation_ge_0.5"]})
    summary = {
        "unet_params": count_params(params), "resolution": config.resolution,
        "classifier_test_accuracy_0to8": clf_acc,
        "pretrained_conditional_accuracy": cond_acc,
        "pretrained_noise": base_noise, "real_hf_ratio_9s": real_hf, "real_hf_ratio_0to8": real_hf_all,
        "real_diversity_9s": real_div, "pretrained_cached": cached,
        "sampler": f"DDIM {config.sampler_steps} steps eta={config.sampler_eta}"
                   + (f", classifier-free guidance {config.guidance_scale} (p_uncond {config.p_uncond})"
                      if float(config.get("guidance_scale", 1.0)) != 1.0 else ""),
        "noise_definition": "mean |Laplacian|^2/energy of samples divided by that of real 9s (1.0 = real-like)",
        "pretrained_residual_noise": base_res, "real_residual_std_9s": real_res,
        "residual_noise_definition": (f"residual noise std the pretrained UNet finds in a sample at t={config.residual_t} "
                                      "(sigma_t*rms eps_pre(sqrt(abar_t) x, t, classifier label)), divided by that of "
                                      "real 9s (1.0 = real-like)"),
        "runs": {n: v["summary"] for n, v in runs.items()}, "comparison": comparison,
        "settings": provenance(config), "fixed_by_code": FIXED_BY_CODE, "selection": config.get("selection"),
        "wall_seconds": time.time() - t_start,
    }
    if comparison:
        wd.write_text("comparison.md", markdown_table(comparison))
    return wd.write_summary(summary)


def tour_row(workdir) -> dict:
    from experiments.configs.fewshot_dm import get_config

    s = run(get_config("quick"), workdir)
    c = s["comparison"][0] if s["comparison"] else {}
    return {"system": "BNN few-shot DDPM fine-tuning (2405.19931)", "dataset": "digits 8x8 (0-8 pretrain, K=3 of 9)",
            "headline": (f"pretrained cond. acc {s['pretrained_conditional_accuracy']:.2f}; peak noise plain "
                         f"{c.get('plain_noise_peak', float('nan')):.2f} vs BNN {c.get('bnn_noise_peak', float('nan')):.2f} "
                         f"(quick preset, {s['wall_seconds']:.0f}s)")}


if __name__ == "__main__":
    from jaxlab.utils.experiment import cli

    cli(run, "fewshot_dm")
