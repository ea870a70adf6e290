"""CGI-DM (Revelio, arXiv 2403.11162) on 8x8 digits: which images was a fine-tuned DDPM trained on?

python -m experiments.cgi_dm --workdir=/tmp/cgi_dm --config=experiments/configs/cgi_dm.py:quick

1. Pretrained class-conditional DDPM on digits 0-8 (the recipe of experiments/fewshot_dm.py; cached in
   ``<workdir>/pretrained_unet``, optionally copied from ``config.pretrained_cache``), and a small CNN
   classifier on 0-8 whose penultimate layer is the feature space of the cosine score.
2. Class 9 is split into disjoint (membership, hold-out) pairs. For each of ``n_target_models`` +
   ``n_shadow_models`` pairs, the pretrained model is fine-tuned on the membership set only (label 9).
3. Every member and hold-out is masked (2x2-cell checkerboard, 50 % kept; with ``mask_phases=2`` also the
   complementary checkerboard, scores summed over both [our choice]) and recovered by PGD on
   (a) the contrastive loss ``L_ft - w L_pre`` with shared noise and ``w = config.pre_weight`` [our default],
   (a') the same with the paper's ``w = 1``, (b) ``w = 1`` with independent noise (authors' code),
   (c) the fine-tuned model's loss alone, (d) a random perturbation of the same norm (control).
   Baselines without inversion: (e) loss-MIA on the fine-tuned model, (f) the contrastive loss itself.
4. Target models give AUC / TPR@1%FPR / accuracy with thresholds calibrated on the shadow models
   (oracle-threshold accuracy beside it, labelled). Writes roc.png, recoveries.png, results.md, summary.json.
Resumable: every finished model's scores are stored in ``models/<name>/result.npz``.
"""

from __future__ import annotations

import json
import os
import shutil
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxlab.data.digits import load_digits
from jaxlab.diffusion import cgi, ddpm, fewshot, metrics
from jaxlab.diffusion.unet import UNet2DModel, count_params
from jaxlab.utils.checkpoint import Checkpointer
from jaxlab.utils.experiment import check_choice, check_ints, check_number
from jaxlab.utils.workdir import Workdir, markdown_table

PRETRAIN_KEYS = ("seed", "resolution", "held_out_class", "channels", "schedule", "num_timesteps",
                 "pretrain_steps", "pretrain_lr", "pretrain_batch")
RESULT_KEYS = ("seed", "n_members", "n_holdouts", "n_target_models", "n_shadow_models", "finetune_steps",
               "finetune_lr", "finetune_batch", "mask", "mask_cell", "keep_fraction", "fill", "pgd_steps", "pgd_rms",
               "pgd_steps_per_radius", "mc_samples", "t_max", "baseline_noise_draws", "pre_weight",
               "mask_phases")
RECOVERY_METHODS = ("cgi_shared", "cgi_shared_paper_weight", "cgi_independent", "finetuned_only", "random")
SCORE_METHODS = ("loss_mia", "contrastive_no_inversion")
SCORES = ("neg_l2", "ssim", "cosine", "split_max_cosine")
LABELS = {"cgi_shared": "CGI-DM (shared noise, pre_weight w, ours)",
          "cgi_shared_paper_weight": "CGI-DM (shared noise, paper's contrast w=1)",
          "cgi_independent": "CGI-DM (independent noise, w=1, authors' code)",
          "finetuned_only": "inversion, fine-tuned model only", "random": "random perturbation (control)",
          "loss_mia": "loss MIA (fine-tuned)", "contrastive_no_inversion": "contrastive loss, no inversion"}


def _data(config):
    x, y = load_digits(resolution=config.resolution, normalize=True)
    x, y = np.array(x), np.array(y)
    rng = np.random.default_rng(config.seed)
    perm = rng.permutation(len(x))
    x, y = x[perm], y[perm]
    held = y == config.held_out_class
    return x[~held], y[~held], x[held]


def _splits(config, new):
    per = config.n_members + config.n_holdouts
    n_models = config.n_target_models + config.n_shadow_models
    if config.n_target_models < 1 or config.n_shadow_models < 1:
        raise ValueError("need n_target_models >= 1 and n_shadow_models >= 1 (shadow models calibrate thresholds)")
    if per * n_models > len(new):
        raise ValueError(f"{n_models} models x ({config.n_members} members + {config.n_holdouts} hold-outs) = "
                         f"{per * n_models} images, but class {config.held_out_class} has only {len(new)}: "
                         "use fewer models or smaller splits")
    out = []
    for i in range(n_models):
        chunk = new[i * per:(i + 1) * per]
        kind = "target" if i < config.n_target_models else "shadow"
        out.append({"name": f"{kind}{i if kind == 'target' else i - config.n_target_models}", "kind": kind,
                    "index": i, "members": chunk[:config.n_members], "holdouts": chunk[config.n_members:]})
    return out


def _signature(config):
    return {k: (list(config[k]) if isinstance(config[k], tuple) else config[k]) for k in PRETRAIN_KEYS}


def _pretrained(wd, config, x, y):
    export = wd.file("pretrained_unet")
    sig = json.loads(json.dumps(_signature(config)))

    def cached_sig(folder):
        p = os.path.join(folder, "scheduler.json")
        if not os.path.isfile(p):
            return None
        with open(p) as f:
            return json.load(f).get("pretrain_config")

    if not os.path.isfile(os.path.join(export, "scheduler.json")) and config.pretrained_cache:
        src = os.path.join(config.pretrained_cache, "pretrained_unet")
        if cached_sig(src) == sig:
            shutil.copytree(src, export + ".tmp", dirs_exist_ok=True)
            os.replace(export + ".tmp", export)
    if os.path.isfile(os.path.join(export, "scheduler.json")):
        if cached_sig(export) != sig:
            raise ValueError(f"{export} was pretrained with {cached_sig(export)}, not {sig}: use a fresh --workdir")
        model, params, schedule = fewshot.load_pretrained(export)
        return model, params, schedule, True
    model = UNet2DModel(fewshot.small_unet_config(config.resolution, 10, tuple(config.channels)))
    schedule = ddpm.make_schedule(config.schedule, config.num_timesteps)
    key = jax.random.PRNGKey(config.seed)
    ck = Checkpointer(os.path.join(wd.path, "pretrain_ckpt"), max_to_keep=1)
    params0 = model.init(key, jnp.asarray(x[:1]), jnp.zeros((1,), jnp.int32), jnp.asarray(y[:1]))["params"]
    opt_like = fewshot.pretrain_optimizer(config.pretrain_lr, config.pretrain_steps).init(params0)
    step, restored = ck.restore({"params": params0, "opt_state": opt_like})

    def cb(step, params, opt_state, loss):
        wd.log(step, phase="pretrain", loss=loss)
        ck.save(step, {"params": params, "opt_state": opt_state})

    params, _ = fewshot.pretrain(model, schedule, x, y, steps=config.pretrain_steps, key=key, lr=config.pretrain_lr,
                                 batch_size=config.pretrain_batch,
                                 params=restored["params"] if step is not None else params0,
                                 opt_state=restored["opt_state"] if step is not None else None,
                                 start_step=step or 0, callback=cb, callback_every=max(config.pretrain_steps // 10, 1))
    fewshot.save_pretrained(export, model, params, config.schedule, config.num_timesteps,
                            extra={"pretrain_config": sig, "held_out_class": config.held_out_class})
    return model, jax.tree_util.tree_map(jnp.asarray, params), schedule, False


def _classifier(wd, config, x, y):
    ck = Checkpointer(wd.file("classifier"), max_to_keep=1)
    like = metrics.DigitClassifier(9).init(jax.random.PRNGKey(0), jnp.zeros((1,) + x.shape[1:]))["params"]
    step, params = ck.restore(like)
    if step is None:
        params = metrics.train_classifier(x, y, 9, jax.random.PRNGKey(config.seed + 1), steps=config.classifier_steps)
        ck.save(config.classifier_steps, params)
    return params


def _mask(config):
    shape = (config.resolution, config.resolution)
    if config.mask == "checkerboard":
        return cgi.checkerboard_mask(shape, config.mask_cell)
    if config.mask == "random_blocks":
        return cgi.random_block_mask(shape, config.mask_cell, config.keep_fraction, config.seed)
    raise ValueError(f"mask={config.mask!r}: use 'checkerboard' or 'random_blocks'")


def _phase_masks(config, mask):
    """``[mask]`` or, with ``mask_phases=2`` [our choice], ``[mask, 1 - mask]``: every pixel is removed and
    recovered once, and the similarity score is the sum over both recoveries (Revelio uses one mask)."""
    if config.mask_phases not in (1, 2):
        raise ValueError(f"mask_phases={config.mask_phases}: use 1 (the paper's single mask) or 2 (mask and complement)")
    return [mask] if config.mask_phases == 1 else [mask, (1.0 - mask).astype(np.float32)]


def _scores(x, rec, mask, clf, n_members):
    f_x = np.asarray(metrics.classifier_features(clf, jnp.asarray(x)))
    f_r = np.asarray(metrics.classifier_features(clf, jnp.asarray(rec, jnp.float32)))
    split_max = np.concatenate([cgi.split_max_cosine(f_x[:n_members], f_r[:n_members]),
                                cgi.split_max_cosine(f_x[n_members:], f_r[n_members:])])
    return {"neg_l2": cgi.neg_l2_removed(x, rec, mask), "ssim": cgi.ssim_removed(x, rec, mask),
            "cosine": cgi.cosine_similarity(f_x, f_r), "split_max_cosine": split_max}


def _model_run(wd, config, split, model, schedule, pretrained, clf, mask, objectives, pgd_cfg):
    out_dir = wd.file(os.path.join("models", split["name"]))
    os.makedirs(out_dir, exist_ok=True)
    res_path = os.path.join(out_dir, "result.npz")
    sig = json.dumps({k: config[k] for k in RESULT_KEYS}, sort_keys=True, default=list)
    if os.path.exists(res_path):
        with np.load(res_path) as z:
            res = {k: z[k] for k in z.files}
        if str(res.get("config_signature")) != sig:
            raise ValueError(f"{res_path} was computed with {res.get('config_signature')}, not {sig}: "
                             "use a fresh --workdir (or delete models/) to change these settings")
        return res, True
    t0 = time.time()
    members, holdouts = split["members"], split["holdouts"]
    label = config.held_out_class
    key = jax.random.PRNGKey(config.seed * 1000 + 17 + split["index"])
    k_ft, k_pgd, k_rand, k_base = jax.random.split(key, 4)

    ck = Checkpointer(os.path.join(out_dir, "finetuned"), max_to_keep=1)
    step, params_ft = ck.restore(pretrained)
    if step != config.finetune_steps:
        params_ft, _ = fewshot.fine_tune(model, schedule, pretrained, members,
                                         np.full((len(members),), label, np.int32), steps=config.finetune_steps,
                                         lr=config.finetune_lr, key=k_ft, batch_size=config.finetune_batch,
                                         progress_desc=f"fine-tune {split['name']}")
        ck.save(config.finetune_steps, params_ft)
    params_ft = jax.tree_util.tree_map(jnp.asarray, params_ft)
    t_ft = time.time() - t0

    x = np.concatenate([members, holdouts]).astype(np.float32)
    cond = jnp.full((len(x),), label, jnp.int32)
    params = {"ft": params_ft, "pre": pretrained}
    out = {"x": x, "n_members": np.array(len(members))}
    # phase 0 removes the (1 - mask) region, phase 1 (mask_phases=2) the complementary one; each phase's
    # recovery is stored as rec_<method> / rec_<method>_ph1 and the scores are summed over phases
    masks = _phase_masks(config, mask)
    sfx = lambda p: "" if p == 0 else f"_ph{p}"
    phase_key = lambda k, p: k if p == 0 else jax.random.fold_in(k, p)
    for p, mk in enumerate(masks):
        for name, obj in objectives.items():
            if name == "cgi_shared_paper_weight" and config.pre_weight == 1.0:
                out[f"rec_{name}{sfx(p)}"] = out[f"rec_cgi_shared{sfx(p)}"]  # same objective, key, start: identical
                continue
            out[f"rec_{name}{sfx(p)}"] = np.asarray(cgi.recover(obj, params, x, mk, phase_key(k_pgd, p), pgd_cfg, cond,
                                                                fill=config.fill))
        out[f"rec_random{sfx(p)}"] = np.asarray(cgi.random_perturbation(jnp.asarray(x), mk, phase_key(k_rand, p),
                                                                        pgd_cfg, fill=config.fill))
    for name in RECOVERY_METHODS:
        for p, mk in enumerate(masks):
            for s, v in _scores(x, out[f"rec_{name}{sfx(p)}"], mk, clf, len(members)).items():
                out[f"score_{name}_{s}"] = v + (out[f"score_{name}_{s}"] if p else 0.0)
    eps_fn = fewshot.eps_fn_for(model)
    out["score_loss_mia"] = cgi.loss_scores(eps_fn, params_ft, schedule, x, k_base, cond,
                                            n_noise=config.baseline_noise_draws)
    out["score_contrastive_no_inversion"] = cgi.contrastive_scores(eps_fn, params_ft, pretrained, schedule, x, k_base,
                                                                   cond, n_noise=config.baseline_noise_draws)
    out["seconds"] = np.array([t_ft, time.time() - t0])
    out["config_signature"] = np.array(sig)
    np.savez(res_path + ".tmp.npz", **out)
    os.replace(res_path + ".tmp.npz", res_path)
    return out, False


def _method_scores(results, method, score):
    key = f"score_{method}" if method in SCORE_METHODS else f"score_{method}_{score}"
    pos, neg = [], []
    for r in results:
        n = int(r["n_members"])
        pos.append(r[key][:n])
        neg.append(r[key][n:])
    return np.concatenate(pos), np.concatenate(neg)


def _evaluate(targets, shadows, method, score):
    pos, neg = _method_scores(targets, method, score)
    spos, sneg = _method_scores(shadows, method, score)
    th_acc = cgi.best_threshold(spos, sneg)
    th_fpr = cgi.threshold_at_fpr(sneg, 0.01)
    cal = cgi.accuracy_at(pos, neg, th_acc)
    cal_fpr = cgi.accuracy_at(pos, neg, th_fpr)
    per_model = [cgi.roc_auc(*_method_scores([r], method, score)) for r in targets]
    return {"auc": cgi.roc_auc(pos, neg), "tpr_at_1pct_fpr": cgi.tpr_at_fpr(pos, neg, 0.01),
            "accuracy_shadow_calibrated": cal["accuracy"],
            "tpr_fpr_at_shadow_1pct_threshold": [cal_fpr["tpr"], cal_fpr["fpr"]],
            "accuracy_oracle_threshold": cgi.accuracy_at(pos, neg, cgi.best_threshold(pos, neg))["accuracy"],
            "auc_per_model_mean": float(np.mean(per_model)), "auc_per_model_min": float(np.min(per_model)),
            "n_members": int(len(pos)), "n_holdouts": int(len(neg)), "n_models": len(targets),
            "n_shadow_members": int(len(spos)), "n_shadow_holdouts": int(len(sneg))}


def _plot_roc(path, targets, score):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.6))
    for m in RECOVERY_METHODS + SCORE_METHODS:
        pos, neg = _method_scores(targets, m, score)
        f, t, _ = cgi.roc_curve(pos, neg)
        lab = f"{LABELS[m]} (AUC {cgi.roc_auc(pos, neg):.3f})"
        for ax in axes:
            ax.plot(f, t, label=lab, lw=2 if m.startswith("cgi") else 1.2)
    axes[0].plot([0, 1], [0, 1], "k:", lw=0.8)
    axes[0].set_title(f"ROC, pooled over {len(targets)} fine-tuned models (score: {score})")
    axes[1].set_xscale("log")
    axes[1].set_xlim(1e-2, 1)
    axes[1].set_title("log-FPR")
    for ax in axes:
        ax.set_xlabel("FPR (hold-outs flagged)")
        ax.set_ylabel("TPR (members detected)")
    axes[0].legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _plot_recoveries(path, result, mask, n_show=8, n_phases=1):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = int(result["n_members"])
    x = result["x"]
    masked = x * mask[None, :, :, None] + (1 - mask[None, :, :, None]) * 0.0
    rows = [("original", x), ("masked input", masked), ("CGI-DM (ours, w)", result["rec_cgi_shared"]),
            ("CGI-DM (paper w=1)", result["rec_cgi_shared_paper_weight"]),
            ("fine-tuned only", result["rec_finetuned_only"]), ("random", result["rec_random"])]
    fig, axes = plt.subplots(1, 2, figsize=(2 * n_show * 0.9 + 2, len(rows) * 0.95 + 0.8))
    for ax, (lo, hi, title) in zip(axes, [(0, n, "members"), (n, len(x), "hold-outs")]):
        idx = np.arange(lo, min(hi, lo + n_show))
        r = x.shape[1]
        grid = np.full((len(rows) * (r + 1), len(idx) * (r + 1)), -1.0)
        for a, (_, imgs) in enumerate(rows):
            for b, i in enumerate(idx):
                grid[a * (r + 1):a * (r + 1) + r, b * (r + 1):b * (r + 1) + r] = imgs[i, ..., 0]
        ax.imshow(grid, cmap="gray", vmin=-1, vmax=1)
        ax.set_yticks([a * (r + 1) + r / 2 for a in range(len(rows))])
        ax.set_yticklabels([t for t, _ in rows], fontsize=8)
        ax.set_xticks([])
        l2 = -result["score_cgi_shared_neg_l2"][idx]
        ax.set_title(f"{title} (mean removed-region L2 of CGI recovery {l2.mean():.2f}, summed over "
                     f"{n_phases} mask phase(s); phase 0 shown)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _check_config(config) -> None:
    """Rejects bad values with one ValueError naming the field, before pretraining starts and before the
    workdir is touched (the splits' sizes are checked by :func:`_splits`, also before pretraining)."""
    fewshot.check_digits_pretraining(config)
    check_ints(config, "n_members", "n_holdouts", "finetune_steps", "finetune_batch", "pgd_steps", "mc_samples",
               "baseline_noise_draws")
    check_ints(config, "t_max", low=0, why="0 = num_timesteps")
    if config.t_max and not 2 <= config.t_max <= config.num_timesteps:
        raise ValueError(f"t_max={config.t_max} must be 0 (= num_timesteps) or in [2, {config.num_timesteps}] "
                         "(t is drawn from 1..t_max-1)")
    check_number(config, "finetune_lr", 0, low_open=True)
    check_number(config, "pgd_rms", 0, low_open=True)
    check_number(config, "pgd_steps_per_radius", 0, low_open=True)
    check_number(config, "pre_weight", 0, 1, why="1 = the paper's contrast")
    check_choice(config, "fill", ("zero", "blur"))
    check_choice(config, "score", SCORES)
    if config.noise != "shared":
        raise ValueError(f"noise={config.noise!r}: the headline uses 'shared'; 'independent' is always run beside it")
    _phase_masks(config, _mask(config))  # mask, mask_cell, keep_fraction, mask_phases (cheap)


def run(config, workdir) -> dict:
    _check_config(config)
    t_start = time.time()
    xp, yp, new = _data(config)
    splits = _splits(config, new)
    wd = Workdir(workdir)
    model, pretrained, schedule, cached = _pretrained(wd, config, xp, yp)
    clf = _classifier(wd, config, xp, yp)
    mask = _mask(config)
    pgd_cfg = cgi.pgd_config(mask, 1, steps=config.pgd_steps, rms=config.pgd_rms,
                             steps_per_radius=config.pgd_steps_per_radius)
    eps_fn = fewshot.eps_fn_for(model)
    mc, t_max = config.mc_samples, (config.t_max or None)
    objectives = {"cgi_shared": cgi.contrastive_objective(eps_fn, schedule, "shared", mc_samples=mc, t_max=t_max,
                                                          pre_weight=config.pre_weight),
                  "cgi_shared_paper_weight": cgi.contrastive_objective(eps_fn, schedule, "shared", mc_samples=mc,
                                                                       t_max=t_max),
                  "cgi_independent": cgi.contrastive_objective(eps_fn, schedule, "independent", mc_samples=mc,
                                                               t_max=t_max),
                  "finetuned_only": cgi.finetuned_objective(eps_fn, schedule, mc_samples=mc, t_max=t_max)}
    wd.write_config(config, pretrained_cached=cached, unet_params=count_params(pretrained),
                    pgd=pgd_cfg._asdict(), mask_kept_fraction=float(mask.mean()))

    results = {}
    for sp in splits:
        res, was_cached = _model_run(wd, config, sp, model, schedule, pretrained, clf, mask, objectives, pgd_cfg)
        results[sp["name"]] = res
        n = int(res["n_members"])
        row = {m: cgi.roc_auc(*_method_scores([res], m, config.score)) for m in RECOVERY_METHODS + SCORE_METHODS}
        wd.log(sp["index"], phase="model", model=sp["name"], cached=was_cached, n_members=n,
               n_holdouts=len(res["x"]) - n, finetune_seconds=float(res["seconds"][0]),
               total_seconds=float(res["seconds"][1]), **{f"auc_{k}": v for k, v in row.items()})
    targets = [results[s["name"]] for s in splits if s["kind"] == "target"]
    shadows = [results[s["name"]] for s in splits if s["kind"] == "shadow"]

    table = {}
    for m in RECOVERY_METHODS:
        for s in SCORES:
            table[f"{m}/{s}"] = _evaluate(targets, shadows, m, s)
    for m in SCORE_METHODS:
        table[m] = _evaluate(targets, shadows, m, None)
    headline = {m: table[f"{m}/{config.score}"] for m in RECOVERY_METHODS}
    headline.update({m: table[m] for m in SCORE_METHODS})
    best_baseline = max((m for m in headline if not m.startswith("cgi_")),
                        key=lambda m: headline[m]["auc"])
    rows = [{"method": LABELS[m], "score": config.score if m in RECOVERY_METHODS else "loss",
             **{k: v for k, v in headline[m].items() if k not in ("tpr_fpr_at_shadow_1pct_threshold",)}}
            for m in headline]
    all_rows = [{"method/score": k, **{kk: v[kk] for kk in ("auc", "tpr_at_1pct_fpr", "accuracy_shadow_calibrated",
                                                             "accuracy_oracle_threshold", "n_members", "n_holdouts")}}
                for k, v in table.items()]
    wd.write_text("results.md", "## Headline (score: " + config.score + ")\n\n" + markdown_table(rows)
                  + "\n\n## Every method x score\n\n" + markdown_table(all_rows) + "\n")
    _plot_roc(wd.file("roc.png"), targets, config.score)
    _plot_recoveries(wd.file("recoveries.png"), targets[0], mask, n_phases=config.mask_phases)
    l2 = lambda m: [float(-np.mean(_method_scores(targets, m, "neg_l2")[i])) for i in (0, 1)]
    summary = {
        "unet_params": count_params(pretrained), "pretrained_cached": cached, "resolution": config.resolution,
        "mask": f"{config.mask} cell {config.mask_cell}, kept fraction {float(mask.mean()):.3f}",
        "pgd": {**pgd_cfg._asdict(), "note": "radius = 0.77*sqrt(n_removed) (Revelio's 70 over 8192 removed "
                                             "latent entries); steps scaled down for CPU [our choice]"},
        "t_range": [1, int(config.t_max or schedule.num_timesteps)],
        "departures_from_revelio": [
            "[our choice] pixel space 8x8 (no VAE); fill='%s' start instead of decode/re-encode" % config.fill,
            "[our choice] t ~ U{1..%d} per PGD step (Revelio: 1..999)" % (int(config.t_max or schedule.num_timesteps) - 1),
            "[our choice] fine-tuning lr %g for %d steps at batch %d" % (config.finetune_lr, config.finetune_steps,
                                                                        config.finetune_batch),
            "[our choice] %d PGD steps (Revelio: 1000); shared noise headline, independent noise beside it"
            % config.pgd_steps,
            "[our choice] objective L_ft - %g * L_pre for the headline (Revelio: weight 1, run beside it as "
            "cgi_shared_paper_weight)" % config.pre_weight,
            "[our choice] %d mask phase(s): %s" % (config.mask_phases, "the checkerboard and its complement are "
                                                   "each recovered, scores summed over both (every method, "
                                                   "baselines included)" if config.mask_phases == 2 else
                                                   "one mask (as Revelio)")],
        "headline_score": config.score,
        "headline": headline,
        "cgi_auc": headline["cgi_shared"]["auc"], "cgi_independent_auc": headline["cgi_independent"]["auc"],
        "cgi_paper_weight_auc": headline["cgi_shared_paper_weight"]["auc"], "pre_weight": config.pre_weight,
        "cgi_tpr_at_1pct_fpr": headline["cgi_shared"]["tpr_at_1pct_fpr"],
        "best_baseline": best_baseline, "best_baseline_auc": headline[best_baseline]["auc"],
        "cgi_beats_every_baseline": bool(headline["cgi_shared"]["auc"] > headline[best_baseline]["auc"]),
        "removed_region_l2_members_vs_holdouts": {m: l2(m) for m in RECOVERY_METHODS},
        "removed_region_l2_note": "mean removed-region L2 [members, hold-outs], summed over %d mask phase(s)"
                                  % config.mask_phases,
        "all_scores": table,
        "accuracy_note": "accuracy_shadow_calibrated uses the balanced-accuracy threshold fit on the shadow models' "
                         "splits; accuracy_oracle_threshold is fit on the evaluated scores themselves (oracle)",
        "tpr_note": "TPR@1%FPR on the pooled target scores; with fewer than 100 hold-outs this is TPR at zero "
                    "false positives",
        "wall_seconds": time.time() - t_start,
    }
    return wd.write_summary(summary)


def tour_row(workdir) -> dict:
    from experiments.configs.cgi_dm import get_config

    s = run(get_config("quick"), workdir)
    h = s["headline"]["cgi_shared"]
    return {"system": "CGI-DM / Revelio (2403.11162)", "dataset": "digits 8x8 (0-8 pretrain, 9 = fine-tune class)",
            "headline": (f"AUC {h['auc']:.2f} (best baseline {s['best_baseline']} {s['best_baseline_auc']:.2f}), "
                         f"TPR@1%FPR {h['tpr_at_1pct_fpr']:.2f}, {h['n_members']}+{h['n_holdouts']} images, "
                         f"{h['n_models']} models (quick preset, {s['wall_seconds']:.0f}s)")}


if __name__ == "__main__":
    from jaxlab.utils.experiment import cli

    cli(run, "cgi_dm")
