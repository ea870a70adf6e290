"""Few-shot fine-tuning API (resume == uninterrupted, frozen parts stay frozen) and the sample metrics."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlab.diffusion import bnn, ddpm, fewshot, metrics
from jaxlab.diffusion.unet import UNet2DConfig, UNet2DModel

CFG = UNet2DConfig(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16),
                   down_block_types=("AttnDownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "AttnUpBlock2D"),
                   layers_per_block=1, norm_num_groups=4, attention_head_dim=8, num_class_embeds=10)
MODEL = UNet2DModel(CFG)
SCHED = ddpm.linear_schedule(100)
IMGS = np.asarray(jax.random.uniform(jax.random.PRNGKey(0), (3, 8, 8, 1), minval=-1, maxval=1))
LABELS = np.array([9, 9, 9], np.int32)


@pytest.fixture(scope="module")
def pretrained():
    return MODEL.init(jax.random.PRNGKey(1), jnp.asarray(IMGS), jnp.zeros((3,)), jnp.asarray(LABELS))["params"]


def _leaves_equal(a, b):
    return all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in
               zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)))


def test_resume_reproduces_uninterrupted_bnn_run(pretrained):
    post = bnn.mean_field(bnn.bayesian_mask(pretrained), init_sigma=0.01)
    kw = dict(steps=4, lr=1e-3, key=jax.random.PRNGKey(3), batch_size=4, posterior=post, kl_weight=1e-3)
    snaps = {}

    def cb(step, state, opt_state, params, m):
        snaps[step] = (state, opt_state)

    full, full_state = fewshot.fine_tune(MODEL, SCHED, pretrained, IMGS, LABELS, callback=cb, callback_every=2, **kw)
    st, opt_st = snaps[2]
    resumed, resumed_state = fewshot.fine_tune(MODEL, SCHED, pretrained, IMGS, LABELS, resume=(2, st, opt_st), **kw)
    assert _leaves_equal(full_state, resumed_state)
    assert not _leaves_equal(full, pretrained)                       # it did train
    assert _leaves_equal(full_state["prior_mu"], bnn.select(pretrained, bnn.bayesian_mask(pretrained)))  # frozen
    assert _leaves_equal(full, full_state["mu"])                      # inference = posterior mean


def test_lora_fine_tune_keeps_base_frozen(pretrained):
    post = bnn.lora(bnn.bayesian_mask(pretrained, bnn.LORA_INCLUDE), rank=2, init_sigma=0.01)
    params, state = fewshot.fine_tune(MODEL, SCHED, pretrained, IMGS, LABELS, steps=3, lr=1e-2,
                                      key=jax.random.PRNGKey(4), batch_size=4, posterior=post)
    assert _leaves_equal(state["base"], pretrained)
    assert not _leaves_equal(params, pretrained)


def test_plain_fine_tune_lowers_loss_and_checks_input(pretrained):
    losses = []
    fewshot.fine_tune(MODEL, SCHED, pretrained, IMGS, LABELS, steps=40, lr=3e-3, key=jax.random.PRNGKey(5),
                      batch_size=8, callback=lambda s, *a: losses.append(a[-1].get("loss")), callback_every=20)
    assert losses[-1] < losses[1]
    with pytest.raises(ValueError, match="differ in length"):
        fewshot.fine_tune(MODEL, SCHED, pretrained, IMGS, LABELS[:2], steps=1, lr=1e-3, key=jax.random.PRNGKey(0))


def test_high_frequency_ratio_closed_form():
    const = np.full((1, 6, 6, 1), 0.3)
    assert metrics.high_frequency_ratio(const)[0] == pytest.approx(0.0, abs=1e-12)
    # a single bright pixel in the interior: Laplacian energy (16 + 4*1) / energy 1
    x = -np.ones((1, 5, 5, 1))
    x[0, 2, 2, 0] = 1.0
    assert metrics.high_frequency_ratio(x)[0] == pytest.approx(20.0)
    rng = np.random.default_rng(0)
    noisy = np.clip(rng.standard_normal((8, 8, 8, 1)), -1, 1)
    smooth = np.tile(np.linspace(-1, 1, 8)[None, :, None, None], (8, 1, 8, 1)).transpose(0, 1, 2, 3)
    assert metrics.high_frequency_ratio(noisy).mean() > 10 * metrics.high_frequency_ratio(smooth).mean()


def test_sample_metrics_on_copies():
    x, y = np.asarray(jax.random.uniform(jax.random.PRNGKey(1), (6, 8, 8, 1), minval=-1, maxval=1)), np.arange(6) % 3
    clf = metrics.train_classifier(x, y, 9, jax.random.PRNGKey(0), steps=2)
    m = metrics.sample_metrics(x[:3], x[:3], clf, real_hf=1.0, mem_threshold=0.05)
    assert m["memorisation"] == 1.0 and m["nn_rms"] == pytest.approx(0.0, abs=1e-6)
    assert m["fidelity"] == pytest.approx(1.0, abs=1e-5)
    d = np.sqrt(((x[0] - x[1]) ** 2).mean())
    m2 = metrics.sample_metrics(x[:2], x[2:], clf, real_hf=1.0, mem_threshold=0.05)
    assert m2["diversity"] == pytest.approx(d, rel=1e-6) and m2["memorisation"] == 0.0


def test_fewshot_dm_presets():
    from experiments.configs.fewshot_dm import get_config

    q, p = get_config("quick"), get_config("paper")
    assert p.shots == (1, 3, 5) and p.bnn.kl_weight == 0.0 and p.bnn.init_sigma == 0.01  # released scripts
    assert q.pretrain_steps < p.pretrain_steps and q.finetune_steps < p.finetune_steps
    with pytest.raises(ValueError, match="unknown preset"):
        get_config("huge")


def test_denoiser_noise_level_closed_form_and_bad_t():
    sched = ddpm.linear_schedule(100)
    x = np.asarray(jax.random.normal(jax.random.PRNGKey(2), (4, 6, 6, 1)))
    labels = np.zeros((4,), np.int32)
    t = 7
    ab = np.asarray(sched.alphas_cumprod, np.float64)[t]
    # an "oracle" denoiser that returns its input: rms(eps) = sqrt(abar_t) * rms(x)
    got = metrics.denoiser_noise_level(lambda p, xt, tt, y: xt, None, sched, x, labels, t=t)
    rms = np.sqrt((np.asarray(x, np.float64) ** 2).mean(axis=(1, 2, 3)))
    np.testing.assert_allclose(got, np.sqrt(1 - ab) * np.sqrt(ab) * rms, rtol=1e-5)
    # a denoiser that finds no noise scores 0; the timestep reaches the denoiser unchanged
    seen = []
    zero = metrics.denoiser_noise_level(lambda p, xt, tt, y: (seen.append(tt), 0 * xt)[1], None, sched, x, labels, t=3)
    assert np.all(zero == 0.0) and np.all(np.asarray(seen[0]) == 3)
    with pytest.raises(ValueError, match="t=100"):
        metrics.denoiser_noise_level(lambda p, xt, tt, y: xt, None, sched, x, labels, t=100)


def test_small_unet_config_attention_levels():
    c = fewshot.small_unet_config(16, 10, (8, 16), attention=(False, True))
    assert c.down_block_types == ("DownBlock2D", "AttnDownBlock2D")
    assert c.up_block_types == ("AttnUpBlock2D", "UpBlock2D")
    assert fewshot.small_unet_config(8).down_block_types == ("AttnDownBlock2D", "AttnDownBlock2D")  # default unchanged
    with pytest.raises(ValueError, match="one bool per level"):
        fewshot.small_unet_config(16, 10, (8, 16), attention=(True,))


def test_excursions_spans_and_mean_excess():
    steps = np.arange(0, 100, 10)
    v = np.array([0, 2, 0, 2, 2, 2, 0, 3, 3, 0], np.float64)
    e = metrics.excursions(steps, v, 1.0)
    assert e["evals_above"] == 6 and e["fraction_above"] == pytest.approx(0.6)
    assert e["longest_span"] == [30, 50] and e["longest_span_evals"] == 3
    assert e["mean_excess"] == pytest.approx((1 + 1 + 1 + 1 + 2 + 2) / 10)
    # a run that reaches the last evaluation counts; ties keep the earliest; nothing above gives None
    assert metrics.excursions(steps[:4], np.array([5.0, 0, 5, 5]), 1.0)["longest_span"] == [20, 30]
    assert metrics.excursions(steps[:4], np.array([5.0, 0, 5, 0]), 1.0)["longest_span"] == [0, 0]
    none = metrics.excursions(steps[:3], np.zeros(3), 1.0)
    assert none["longest_span"] is None and none["longest_span_evals"] == 0 and none["mean_excess"] == 0.0
    # the longest span never exceeds the count above (random curves)
    rng = np.random.default_rng(0)
    for _ in range(50):
        x = rng.standard_normal(int(rng.integers(1, 30)))
        r = metrics.excursions(np.arange(len(x)), x, 0.3)
        assert r["longest_span_evals"] <= r["evals_above"] == int((x > 0.3).sum())
        if r["longest_span"] is not None:
            a, b = r["longest_span"]
            assert np.all(x[a:b + 1] > 0.3) and b - a + 1 == r["longest_span_evals"]
    with pytest.raises(ValueError, match="equal-length"):
        metrics.excursions(steps, v[:3], 1.0)


def test_smoothed_peak_dilutes_a_spike_and_keeps_a_stage():
    steps = np.arange(0, 90, 10)
    spike = np.array([1, 1, 1, 7, 1, 1, 1, 1, 1], np.float64)   # one evaluation at 7
    stage = np.array([1, 1, 1, 1, 3, 3, 3, 1, 1], np.float64)   # three evaluations at 3
    assert metrics.smoothed_peak(steps, spike) == (pytest.approx(3.0), 30)   # (1 + 7 + 1) / 3, centred on the spike
    assert metrics.smoothed_peak(steps, stage) == (pytest.approx(3.0), 50)
    assert spike.max() > stage.max()                                         # the one-evaluation peak says the opposite
    assert metrics.smoothed_peak(steps, spike, 1) == (7.0, 30)               # window 1 is the plain peak
    assert metrics.smoothed_peak(steps[:2], np.array([2.0, 4.0])) == (3.0, 10)  # shorter than the window
    # against a direct loop on random curves
    rng = np.random.default_rng(1)
    for _ in range(20):
        x = rng.standard_normal(int(rng.integers(3, 25)))
        ma = [x[i - 1:i + 2].mean() for i in range(1, len(x) - 1)]
        pk, st = metrics.smoothed_peak(np.arange(len(x)) * 5, x)
        assert pk == pytest.approx(max(ma)) and st == 5 * (int(np.argmax(ma)) + 1)
    with pytest.raises(ValueError, match="odd"):
        metrics.smoothed_peak(steps, spike, 2)
    assert metrics.tail_mean(np.array([0.0, 1, 2, 3, 4, 5, 6]), 5) == pytest.approx(4.0)
    assert metrics.tail_mean(np.array([0.5, 1.5]), 5) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="non-empty"):
        metrics.tail_mean(np.array([]), 5)


def test_fewshot_dm_micro_run_summary_and_provenance(tmp_path):
    import json
    import os

    from experiments import fewshot_dm
    from experiments.configs.fewshot_dm import get_config

    c = get_config("quick")
    c.pretrain_steps, c.classifier_steps, c.eval_per_class = 20, 10, 1
    c.shots, c.finetune_steps, c.eval_every, c.eval_samples, c.sampler_steps = (2,), 4, 2, 4, 2
    c.finetune_batch = 1                                   # the released scripts' batch
    wd = str(tmp_path / "fs")
    s = fewshot_dm.run(c, wd)
    st = s["settings"]
    assert st["weight_decay"]["source"] == "[paper]" and st["finetune_batch"]["source"] == "[paper]"
    assert st["finetune_lr"]["source"] == "[our choice] (paper: 5e-06)" and st["seed"]["source"] == "[our choice]"
    assert st["bnn.include"]["value"] == bnn.DREAMBOOTH_INCLUDE and st["bnn.include"]["source"] == "[paper]"
    # the spike/stage statistics restate each run's logged curve (re-derived here from metrics.jsonl)
    base_noise = s["pretrained_noise"]
    for name in ("K2_plain", "K2_bnn"):
        with open(os.path.join(wd, "runs", name, "metrics.jsonl")) as f:
            rows = [json.loads(line) for line in f]
        noise = np.array([r["noise"] for r in rows])
        assert [r["step"] for r in rows] == [0, 2, 4]
        r = s["runs"][name]
        assert r["noise_evals_above_1.5x_pretrained"] == int((noise > 1.5 * base_noise).sum())
        assert r["noise_mean_excess_over_pretrained"] == pytest.approx(np.maximum(noise[1:] - base_noise, 0).mean())
        assert r["noise_peak"] == pytest.approx(noise.max())
        assert r["noise_peak_smoothed3"] == pytest.approx(noise.mean())           # 3 evaluations: one window
        assert r["noise_peak_smoothed3_excess"] == pytest.approx(noise.mean() - base_noise)
        assert r["fidelity_final_mean_last5"] == pytest.approx(np.mean([x["fidelity"] for x in rows]))
    cmp = s["comparison"][0]
    p, b = s["runs"]["K2_plain"], s["runs"]["K2_bnn"]
    if p["noise_peak_excess"] > 0:
        assert cmp["peak_excess_ratio_bnn_over_plain"] == pytest.approx(b["noise_peak_excess"] / p["noise_peak_excess"])
    if p["noise_peak_smoothed3_excess"] > 0:
        assert cmp["smoothed3_peak_excess_ratio_bnn_over_plain"] == pytest.approx(
            b["noise_peak_smoothed3_excess"] / p["noise_peak_smoothed3_excess"])
    assert cmp["bnn_fidelity_final_mean_last5"] == b["fidelity_final_mean_last5"]
    for f in ("curves.png", "samples_K2.png", "summary.json", "comparison.md"):
        assert os.path.isfile(os.path.join(wd, f)), f
    # a rerun in the same workdir resumes each run only under the settings it started with
    c.finetune_lr, c.guidance_scale, c.p_uncond = c.finetune_lr * 2, 1.0, 0.0
    with pytest.raises(ValueError, match=r"K2_plain .*finetune_lr: 0.001 -> 0.002.*fresh --workdir"):
        fewshot_dm.run(c, wd)


def test_zero_kl_weight_never_evaluates_the_kl(pretrained):
    """kl_weight=0 (the authors' released runs) with a zero-width prior (init_sigma=0, whose prior
    sigma defaults to 0): training stays finite, because the infinite KL is never computed (0 * inf
    made every parameter NaN at step 1); asking for a nonzero weight names the fix instead."""
    post = bnn.mean_field(bnn.bayesian_mask(pretrained), init_sigma=0.0, min_sigma=0.0)
    seen = []
    kw = dict(steps=3, lr=1e-3, key=jax.random.PRNGKey(6), batch_size=4, posterior=post,
              callback=lambda s, st, o, p, m: seen.append(dict(m)), callback_every=1)
    params, state = fewshot.fine_tune(MODEL, SCHED, pretrained, IMGS, LABELS, kl_weight=0.0, **kw)
    assert all(np.all(np.isfinite(np.asarray(x))) for x in jax.tree_util.tree_leaves((params, state)))
    assert len(seen) == 4 and seen[0] == {}  # step 0, then steps 1-3
    assert all(np.isfinite(m["loss"]) and "kl" not in m for m in seen[1:])
    assert not _leaves_equal(params, pretrained)
    with pytest.raises(ValueError, match="zero-width prior"):
        fewshot.fine_tune(MODEL, SCHED, pretrained, IMGS, LABELS, kl_weight=1e-3, **kw)


def test_classifier_free_guidance_combines_conditional_and_null_predictions(pretrained):
    # the 10-class test model: class 9 plays the null label here (IMGS/LABELS are only used for shapes)
    x = jnp.asarray(IMGS)
    t = jnp.array([5, 50, 99], jnp.int32)
    cond = jnp.array([1, 4, 7], jnp.int32)
    eps_c = MODEL.apply({"params": pretrained}, x, t, cond)
    eps_u = MODEL.apply({"params": pretrained}, x, t, jnp.full_like(cond, 9))
    for scale in (0.0, 1.0, 7.5):
        got = fewshot._guided_eps_fn(MODEL, scale, 9)(pretrained, x, t, cond)
        np.testing.assert_allclose(got, eps_u + scale * (eps_c - eps_u), rtol=1e-5, atol=1e-5)
    key = jax.random.PRNGKey(8)
    plain = fewshot.sample(MODEL, pretrained, SCHED, cond, key, num_steps=5)
    same = fewshot.sample(MODEL, pretrained, SCHED, cond, key, num_steps=5, guidance_scale=1.0, null_label=9)
    guided = fewshot.sample(MODEL, pretrained, SCHED, cond, key, num_steps=5, guidance_scale=3.0, null_label=9)
    np.testing.assert_allclose(same, plain, atol=1e-5)
    assert float(jnp.max(jnp.abs(guided - plain))) > 1e-3
    with pytest.raises(ValueError, match="needs null_label"):
        fewshot.sample(MODEL, pretrained, SCHED, cond, key, num_steps=5, guidance_scale=3.0)
    with pytest.raises(ValueError, match="needs null_label"):
        fewshot.sample(MODEL, pretrained, SCHED, cond, key, num_steps=5, guidance_scale=3.0, null_label=10)


def test_pretrain_label_dropout_for_guidance_and_its_bad_input():
    x = np.asarray(IMGS)
    y = np.array([0, 1, 2], np.int32)
    kw = dict(steps=3, key=jax.random.PRNGKey(2), lr=1e-3, batch_size=4)
    base, _ = fewshot.pretrain(MODEL, SCHED, x, y, **kw)
    again, _ = fewshot.pretrain(MODEL, SCHED, x, y, p_uncond=0.0, null_label=9, **kw)
    dropped, _ = fewshot.pretrain(MODEL, SCHED, x, y, p_uncond=0.9, null_label=9, **kw)
    assert _leaves_equal(base, again)             # p_uncond = 0 keeps the earlier random stream
    emb = lambda p: np.asarray(p["class_embedding"]["embedding"])
    # only label dropout trains the null class's embedding row
    assert np.array_equal(emb(base)[9], emb(again)[9]) and not np.allclose(emb(dropped)[9], emb(base)[9])
    with pytest.raises(ValueError, match="needs null_label"):
        fewshot.pretrain(MODEL, SCHED, x, y, p_uncond=0.1, **kw)
    with pytest.raises(ValueError, match="also a training label"):
        fewshot.pretrain(MODEL, SCHED, x, y, p_uncond=0.1, null_label=2, **kw)
    with pytest.raises(ValueError, match=r"p_uncond=1.0 must be in \[0, 1\)"):
        fewshot.pretrain(MODEL, SCHED, x, y, p_uncond=1.0, null_label=9, **kw)
