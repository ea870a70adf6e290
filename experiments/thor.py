"""THOR: profile layer variants, fit per-layer GPs, estimate held-out whole models, prune.

    python -m experiments.thor --workdir=runs/thor --config=experiments/configs/thor.py:quick
    python -m experiments.thor --workdir=runs/thor_paper --config=experiments/configs/thor.py:paper

Three studies, each labelled in summary.json:

* ``sim``  -- simulated device (analytic ground truth, joules/iteration; see
  ``jaxlab.energy.meters.DeviceModel``): THOR vs FLOPs-linear vs NeuralPower on held-out
  CNNs/MLPs against the known noise-free totals, a sweep of the non-additive interaction weight
  gamma, and active learning (max predictive variance) vs random sampling.
* ``wall`` -- the real meter available on this CPU: wall-clock seconds of one training iteration
  (forward + backward + SGD update, each network its own jitted step). It validates *time*
  additivity, not energy. The CPU is shared, so we report the spread of the timing windows.
* ``cpu``  -- the same windows read with the process CPU time (time the process actually ran),
  which other jobs on a shared CPU disturb far less than the wall clock.
* ``prune`` -- energy-aware pruning of a PFLlib-style digits CNN guided by the CPU-time THOR
  fit, vs L1-norm pruning at equal FLOPs: measured (CPU and wall) and predicted cost per
  iteration, accuracy.

Measurements go to ``<workdir>/profile_db_<meter>.jsonl`` (append-only), so a re-run or an
interrupted run re-uses every measurement already taken.
"""

from __future__ import annotations

import os
import statistics
import time

import numpy as np

from jaxlab.energy import baselines as B
from jaxlab.energy import meters as M
from jaxlab.energy import profiler as P
from jaxlab.energy import pruning as PR
from jaxlab.energy import thor as T
from jaxlab.utils.experiment import check_choice, check_ints, check_number
from jaxlab.utils.progress import progress
from jaxlab.utils.workdir import Workdir, markdown_table

FAMILIES = ("cnn", "mlp")


def _profile_chains(meter, chains, db, desc, before=None, **kw):
    """Prefix costs of every chain; ``before(i)`` (optional) runs before chain ``i`` is measured."""
    costs = []
    for i, c in enumerate(progress(chains, total=len(chains), desc=desc)):
        if before is not None:
            before(i)
        # the prefix variants of one chain are measured together, windows interleaved
        costs.append([m.value(meter.quantity) for m in P.measure_networks(meter, P.prefixes(c), db, **kw)])
    return costs


def _chain_samples(chains, costs):
    return [P.chain_samples(c, cs, i) for i, (c, cs) in enumerate(zip(chains, costs))]


def _variants(chains, costs):
    nets, vals = [], []
    for c, cs in zip(chains, costs):
        nets += P.prefixes(c)
        vals += list(cs)
    return nets, vals


def _fit_all(cfg, chains, costs, extra=()):
    """THOR, FLOPs-linear and NeuralPower fits; ``extra`` samples (e.g. the classifier-loss term's)
    go to THOR and NeuralPower, whose estimates are sums of terms."""
    samples = [s for ss in _chain_samples(chains, costs) for s in ss] + list(extra)
    thor = T.fit_thor(samples, **_fit_kw(cfg))
    fl = B.fit_flops_linear(*_variants(chains, costs))
    npw = B.fit_neuralpower(samples, seed=cfg.seed)
    return thor, fl, npw


def _predict_all(models, nets):
    thor, fl, npw = models
    est = [T.estimate(thor, n) for n in nets]
    return {"thor": [e.total for e in est], "thor_lower": [e.lower for e in est], "thor_upper": [e.upper for e in est],
            "thor_terms": [[[k, c] for k, c in e.per_layer] for e in est],
            "flops": [B.predict_flops_linear(fl, n) for n in nets], "neuralpower": [B.predict_neuralpower(npw, n) for n in nets]}


def _describe(net) -> str:
    """A one-line description of a network, e.g. ``b64 28x28x1: conv64k3 relu maxpool2 dense64 relu dense10``."""
    words = []
    for spec in net.layers:
        kind = P.layer_kind(spec)
        if kind == "conv":
            words.append(f"conv{spec.features}k{spec.kernel}" + (f"s{spec.stride}" if spec.stride != 1 else "")
                         + ("" if spec.padding == "SAME" else spec.padding.lower()))
        elif kind == "dense":
            words.append(f"dense{spec.features}")
        elif kind == "pool":
            words.append(f"{spec.kind}pool{spec.window}")
        elif kind == "act":
            words.append(spec.kind)
        elif kind == "lstm":
            words.append(f"lstm{spec.hidden}")
        else:
            words.append(kind)
    return f"b{net.batch} {'x'.join(str(d) for d in net.input_shape)}: " + " ".join(words)


def _per_model(held, fams, measured, pred) -> list[dict]:
    """Each held-out model's measured cost, every method's prediction and THOR's per-term breakdown
    (seconds, from :func:`_predict_all`), so a user can see which layer term a miss comes from."""
    rows = []
    for i, net in enumerate(held):
        rows.append({"model": _describe(net), "family": fams[i], "measured": measured[i],
                     **{m: pred[m][i] for m in ("thor", "flops", "neuralpower")},
                     "thor_error_pct": 100.0 * (pred["thor"][i] - measured[i]) / measured[i],
                     "thor_terms": pred["thor_terms"][i]})
    return rows


def _misses_table(rows, n: int = 8) -> str:
    """The ``n`` largest THOR misses as a Markdown table (ms), with their two largest terms."""
    worst = sorted(rows, key=lambda r: -abs(r["thor_error_pct"]))[:n]
    return markdown_table([
        {"model": r["model"], "measured ms": r["measured"] * 1e3, "THOR ms": r["thor"] * 1e3,
         "THOR error %": r["thor_error_pct"], "FLOPs ms": r["flops"] * 1e3,
         "largest THOR terms (ms)": ", ".join(f"{k} {c * 1e3:.3g}" for k, c in
                                            sorted(r["thor_terms"], key=lambda t: -t[1])[:2])} for r in worst])


def _mapes(pred, measured, families):
    out = {m: T.mape(pred[m], measured) for m in ("thor", "flops", "neuralpower")}
    per_family = {}
    for f in sorted(set(families)):
        idx = [i for i, g in enumerate(families) if g == f]
        per_family[f] = {m: T.mape([pred[m][i] for i in idx], [measured[i] for i in idx]) for m in ("thor", "flops", "neuralpower")}
    out["per_family"] = per_family
    out["band_coverage"] = float(np.mean([lo <= y <= hi for lo, hi, y in zip(pred["thor_lower"], pred["thor_upper"], measured)]))
    return out


def _heldout(rng, n, space):
    fams = [FAMILIES[i % len(FAMILIES)] for i in range(n)]
    return [T.sample_model(rng, f, space) for f in fams], fams


def _fit_kw(cfg) -> dict:
    """GP fitting options of every THOR fit in the study (``gp_hyper_prior_sd`` 0: type-II ML)."""
    sd = float(cfg.get("gp_hyper_prior_sd", 0.0))
    return {"steps": cfg.gp_steps, "floor_frac": cfg.floor_frac, "hyper_prior_sd": sd if sd > 0 else None,
            "meter_noise_floor": bool(cfg.get("gp_meter_noise_floor", True)),
            "exact_conv": bool(cfg.get("gp_exact_conv", False))}


def _al_curves(cfg_al, chains, samples_by_chain, evaluate, seed, n_seeds, fit_kw, acquisition="log", targets=None):
    """Active learning vs random sampling, paired per seed: for each seed both strategies start
    from the same initial chains, draw from the same pool and are scored on the same held-out
    models. ``al_fraction_of_random_configs``: chains AL needed to reach random sampling's final
    MAPE (at ``random_chains``), over ``random_chains``; per seed and on the seed-mean curves."""
    kw = dict(n_init=cfg_al.al_init, n_max=min(cfg_al.al_max, len(chains)), step=cfg_al.al_step, fit_kw=fit_kw)
    var, rand = [], []
    for s in range(n_seeds):
        var.append(T.active_learning(chains, lambda i: samples_by_chain[i], evaluate, strategy="variance", seed=seed + s,
                                     acquisition=acquisition, targets=targets, **kw))
        rand.append(T.active_learning(chains, lambda i: samples_by_chain[i], evaluate, strategy="random", seed=seed + s, **kw))
    ns = [p["n_chains"] for p in var[0]]

    def reach(curve, target):
        return next((n for n, v in zip(ns, curve) if v <= target), None)

    per_seed = []
    for v, r in zip(var, rand):
        rv, vv = [p["score"] for p in r], [p["score"] for p in v]
        hit = reach(vv, rv[-1])
        per_seed.append({"random_final_mape": rv[-1], "al_chains_to_reach": hit,
                         "fraction": (hit / ns[-1]) if hit is not None else None})
    var_mean = [float(np.mean([c[j]["score"] for c in var])) for j in range(len(ns))]
    rand_mean = [float(np.mean([c[j]["score"] for c in rand])) for j in range(len(ns))]
    hit = reach(var_mean, rand_mean[-1])
    fr = [p["fraction"] for p in per_seed]
    what = {"log": "greedy conditional variance of the chain's log cost (kriging believer batches)",
            "linear": "greedy conditional variance of the chain's cost in joules (linear units, kriging believer batches)",
            "layers": "greedy conditional variance of the sum of the chain's per-layer log costs (kriging believer batches)",
            "alc": "greedy expected reduction of the pool's total log-cost variance (ALC, thor.select_batch_alc)",
            "alc_models": "greedy expected reduction of the log-cost variance of a fresh draw of whole models "
                          "(ALC over target models, thor.select_batch_alc; not the held-out models)"}[acquisition]
    return {"acquisition": f"{what} [our choice]",
            "acquisition_key": acquisition, "step": cfg_al.al_step, "init": cfg_al.al_init, "seed_first": seed,
            "n_chains": ns, "variance": var_mean, "random_mean": rand_mean, "seeds": n_seeds,
            "variance_runs": [[p["score"] for p in c] for c in var], "random_runs": [[p["score"] for p in c] for c in rand],
            "random_final_mape": rand_mean[-1], "al_chains_to_reach_random_final": hit, "random_chains": ns[-1],
            "al_fraction_of_random_configs": (hit / ns[-1]) if hit is not None else None,
            "per_seed": per_seed,
            "fraction_per_seed_median": float(np.median([f if f is not None else np.inf for f in fr]))}


# ---------------------------------------------------------------------------------------------
def study_sim(cfg, wd: Workdir, log) -> dict:
    rng = np.random.default_rng(cfg.seed)
    space = T.DesignSpace()
    chains = [T.sample_chain(rng, space) for _ in range(cfg.sim.pool_chains)]
    held, fams = _heldout(rng, cfg.sim.heldout, space)
    out = {"meter": "simulated (analytic DeviceModel, joules/iteration)", "pool_chains": len(chains),
           "heldout_models": len(held), "noise": cfg.sim.noise, "gamma": {}}
    for gamma in cfg.sim.gammas:
        dev = M.DeviceModel(gamma=float(gamma), noise=cfg.sim.noise)
        meter = M.simulated_meter(dev, seed=cfg.seed + 1)
        costs = _profile_chains(meter, chains, None, f"sim profile gamma={gamma}")
        truth = [dev.iteration_cost([p.cost_record() for p in P.place(n)]).joules for n in held]
        pred = _predict_all(_fit_all(cfg, chains, costs), held)
        res = _mapes(pred, truth, fams)
        out["gamma"][str(gamma)] = res
        log(study="sim", gamma=float(gamma), **{f"mape_{m}": res[m] for m in ("thor", "flops", "neuralpower")})
        if gamma == 0.0:
            out.update(mape_thor=res["thor"], mape_flops=res["flops"], mape_neuralpower=res["neuralpower"],
                       per_family=res["per_family"], band_coverage=res["band_coverage"])
            out["scatter"] = {"truth": truth, **{k: pred[k] for k in ("thor", "flops", "neuralpower")}, "family": fams}
            out["active_learning"] = _sim_al(cfg, space, meter, dev, chains, costs, held, truth)
            al = out["active_learning"]
            for n, v, r in zip(al["n_chains"], al["variance"], al["random_mean"]):
                log(study="sim_al", n_chains=n, mape_variance=v, mape_random=r)
    return out


AL_POOL_SOURCES = ("design", "models")


def _al_pool_source(sc) -> str:
    """``sc.al_pool_source`` (``cfg.sim``), checked: a known source, and 'models' only with its own pool."""
    src = sc.get("al_pool_source", "design")
    if src not in AL_POOL_SOURCES:
        raise ValueError(f"sim.al_pool_source={src!r}: use one of {AL_POOL_SOURCES}")
    if src != "design" and sc.al_pool_chains < 1:
        raise ValueError(f"sim.al_pool_source={src!r} needs a separate AL pool: set sim.al_pool_chains > 0")
    return src


def _al_pool(cfg, space):
    """The separate active-learning pool of ``cfg.sim`` and its held-out models: ``(chains, held)``.

    Stream ``cfg.seed + 1000 + al_stream`` draws ``al_pool_chains`` design chains
    (:func:`thor.sample_chain`) and then the held-out models. ``al_pool_source='models'`` [our choice]
    replaces the candidates by windows of fresh CNN/MLP draws (:func:`thor.sample_model_chain`, stream
    ``cfg.seed + 3000 + al_stream``), so the chains AL and random sampling choose from have the shapes,
    neighbours and batches of the families THOR is scored on; the held-out models stay the same."""
    sc = cfg.sim
    src = _al_pool_source(sc)
    if sc.al_pool_chains < 1:
        raise ValueError(f"sim.al_pool_chains={sc.al_pool_chains}: the separate AL pool needs >= 1 chain")
    rng = np.random.default_rng(cfg.seed + 1000 + sc.al_stream)
    chains = [T.sample_chain(rng, space) for _ in range(sc.al_pool_chains)]
    held, _ = _heldout(rng, sc.heldout, space)
    if src == "models":
        mrng = np.random.default_rng(cfg.seed + 3000 + sc.al_stream)
        chains = [T.sample_model_chain(mrng, space) for _ in range(sc.al_pool_chains)]
    return chains, held


def _sim_al(cfg, space, meter, dev, chains, costs, held, truth) -> dict:
    """Active learning vs random sampling on the simulated device (gamma 0).

    With ``cfg.sim.al_pool_chains > 0`` [our choice] the candidate pool is its own, larger draw
    (:func:`_al_pool`: design chains or windows of model draws, ``al_pool_source``), with its own
    held-out models from the same stream: with the study's 80-chain pool and a 60-chain budget,
    random sampling ends with 3/4 of the pool, so neither strategy has much to choose. Both
    strategies draw from the same pool. ``al_stream`` lets settings be chosen on one draw (pool,
    held-out models, seeds) and confirmed on a fresh one."""
    sc = cfg.sim
    src = _al_pool_source(sc)
    if sc.al_pool_chains > 0:
        chains, held = _al_pool(cfg, space)
        costs = _profile_chains(meter, chains, None, "sim profile AL pool")
        truth = [dev.iteration_cost([p.cost_record() for p in P.place(n)]).joules for n in held]
    else:
        src = "study"
    targets = None
    if sc.al_acquisition == "alc_models":
        # the models whose variance ALC reduces: a fresh draw of the held-out families from their
        # own stream, so AL never sees the models it is scored on
        targets, _ = _heldout(np.random.default_rng(cfg.seed + 2000 + sc.al_stream), sc.al_targets, space)
    al = _al_curves(sc, chains, _chain_samples(chains, costs),
                    lambda m: T.mape([T.estimate(m, n).total for n in held], truth),
                    cfg.seed + sc.al_seed_offset, sc.al_random_seeds, _fit_kw(cfg), sc.al_acquisition, targets)
    al.update(pool_chains=len(chains), pool_source=src, al_stream=sc.al_stream if sc.al_pool_chains > 0 else None,
              heldout_models=len(held), al_targets=len(targets) if targets is not None else None)
    return al


def _kinds(net) -> set:
    return {p.kind for p in P.place(net)}


def _cover_kinds(rng, space, chains, held, min_chains: int = 3, max_tries: int = 2000):
    """Adds sampled chains until every layer kind of the held-out models was profiled in at least
    ``min_chains`` chains.

    A small pool (the quick preset) can miss a kind, e.g. BatchNorm, and a GP needs a few samples
    of a kind to estimate it (``fit_thor`` skips kinds with fewer than 2)."""
    from collections import Counter

    need = set().union(*(_kinds(n) for n in held)) if held else set()
    count = Counter(k for c in chains for k in _kinds(c))
    chains = list(chains)
    for _ in range(max_tries):
        short = {k for k in need if count[k] < min_chains}
        if not short:
            break
        c = T.sample_chain(rng, space)
        if _kinds(c) & short:
            chains.append(c)
            count.update(_kinds(c))
    return chains


CHAIN_SOURCES = ("design", "models", "mixed")


def _variant_key(net) -> str:
    return P.network_key(net._replace(num_classes=None), "x")


def _without_heldout(chains, held, redraw, max_tries: int = 100):
    """``chains`` with every chain that has a held-out model among its prefix variants replaced by
    ``redraw()`` (a design-space chain) until none has: a window of a fresh random model (chain source
    'models' / 'mixed') can coincide with a small held-out model, and profiling it would give the
    estimator that model's answer (seen 2026-12-07: seed 10 with 'mixed' chains). Chains without such a
    variant are kept as they are, so draws without a collision are unchanged."""
    held_keys = {_variant_key(n) for n in held}
    out = []
    for c in chains:
        for _ in range(max_tries):
            if not any(_variant_key(v) in held_keys for v in P.prefixes(c)):
                break
            c = redraw()
        else:
            raise RuntimeError(f"no profiling chain without a held-out model in {max_tries} draws")
        out.append(c)
    return out


def _chain_source(cw) -> str:
    src = cw.get("chain_source", "design")
    if src not in CHAIN_SOURCES:
        raise ValueError(f"wall.chain_source={src!r}: use one of {CHAIN_SOURCES}")
    return src


def _wall_chains(cw, rng, space, seed):
    """The wall-clock profiling pool: ``cw.pool_chains`` chains from ``cw.chain_source``:
    'design' (:func:`thor.sample_chain`, random stacks over the design space), 'models'
    (:func:`thor.sample_model_chain`, windows of fresh random CNNs/MLPs, own stream) or 'mixed'
    (half each) [our choice, compared in the study]."""
    src = _chain_source(cw)
    n_models = {"design": 0, "models": cw.pool_chains, "mixed": cw.pool_chains // 2}[src]
    chains = [T.sample_chain(rng, space) for _ in range(cw.pool_chains - n_models)]
    mrng = np.random.default_rng(seed + 102)   # model windows: their own stream
    return chains + [T.sample_model_chain(mrng, space) for _ in range(n_models)]


_REPEAT_NOTE = {
    False: "MAPE of a second measurement of the same held-out models (same settings, taken after the first) "
           "against the first: the machine's own floor",
    True: "MAPE of the odd rounds' pooled measurement of the held-out models against the even rounds' (both "
          "spread over the profiling span): the machine's own floor"}
_HELDOUT_PROTOCOL = {
    False: "held-out models measured after the profiling (groups of 4), then a second time",
    True: "[our choice] held-out models measured in {rounds} rounds spread evenly over the profiling ({interleave}); "
          "measured = median of the even rounds' windows pooled, repeat = the odd "
          "rounds': the truth is taken over the same span, so the same average machine state, as the profile"}


def _window_kw(cfg, windows: int, **extra) -> dict:
    """Measurement settings of the wall-clock study: ``windows``, the study's window length, its
    window statistic (``cfg.wall.statistic``, read when results are read; see profiler.measure_networks)
    and the layer implementation the training steps are built with (``cfg.wall.layer_impl``, see
    profiler.SpecNet)."""
    return dict(windows=int(windows), min_window_s=cfg.wall.min_window_s,
                statistic=cfg.wall.get("statistic", "median"), impl=cfg.wall.get("layer_impl", P.DEFAULT_LAYER_IMPL),
                **_loop_kw(cfg), **extra)


def _loop_kw(cfg) -> dict:
    """``loop`` only when it is not the default, so callers' settings dicts stay as they were."""
    loop = cfg.wall.get("loop", P.DEFAULT_LOOP)
    return {} if loop == P.DEFAULT_LOOP else {"loop": loop}


def _heldout_rounds(cw) -> int:
    rounds = int(cw.get("heldout_rounds", 0))
    if rounds < 0 or rounds == 1:
        raise ValueError(f"wall.heldout_rounds={rounds}: use 0 (held-out models measured after profiling) "
                         "or >= 2 (rounds spread over the profiling; even rounds measure, odd rounds repeat)")
    return rounds


def _round_positions(n_chains: int, rounds: int) -> dict[int, list[int]]:
    """{chain index: rounds measured just before it}: round r runs before chain int((r + 1/2) n / rounds),
    so the rounds split the profiling span evenly (several share an index when rounds > chains)."""
    at: dict[int, list[int]] = {}
    for r in range(rounds):
        at.setdefault(int((r + 0.5) * n_chains / rounds), []).append(r)
    return at


def _round_levels(meter, held, db, tags, clock, hk) -> list[float]:
    """Per round, the geometric mean over the held-out models of (round median / all rounds' pooled
    median): the machine's speed drift over the profiling span (1.0 = average)."""
    pooled = np.array([m.seconds for m in P.pooled_measurements(meter, held, db, tags, clock=clock, **hk)])
    return [float(np.exp(np.mean(np.log(np.array([m.seconds for m in P.pooled_measurements(
        meter, held, db, [t], clock=clock, **hk)]) / pooled)))) for t in tags]


def study_wall(cfg, wd: Workdir, log):
    """Wall-clock study; the same measurements also give a process-CPU-time study ("cpu")."""
    rng = np.random.default_rng(cfg.seed + 100)
    space = T.DesignSpace(max_train_flops=cfg.wall.max_train_flops)
    chains = _wall_chains(cfg.wall, rng, space, cfg.seed)
    if cfg.wall.get("cover_conv_configs", False):
        # the first-layer conv grid, from its own stream so the pool's other chains stay the same
        chains += T.conv_config_chains(np.random.default_rng(cfg.seed + 103), space)
    if cfg.wall.get("cover_pool_configs", False):
        # the max-pool input grid (channels x batch), from its own stream as well
        chains += T.pool_config_chains(np.random.default_rng(cfg.seed + 104), space)
    # held-out models from their own stream, so that the held-out set does not change with the
    # size of the profiling pool
    held, fams = _heldout(np.random.default_rng(cfg.seed + 101), cfg.wall.heldout, space)
    chains = _without_heldout(_cover_kinds(rng, space, chains, held), held, lambda: T.sample_chain(rng, space))
    meter = M.wallclock_meter()
    db = P.ProfileDB(wd.file("profile_db_wallclock.jsonl"))
    kw, hk = _window_kw(cfg, cfg.wall.windows), _window_kw(cfg, cfg.wall.heldout_windows)
    rounds = _heldout_rounds(cfg.wall)
    tags = ([f"heldout_round{r}" for r in range(0, rounds, 2)], [f"heldout_round{r}" for r in range(1, rounds, 2)])
    compiled: dict = {}
    at = _round_positions(len(chains), rounds)

    # a difference of a few us between two ~60 us steps: more windows than a chain's [our choice]
    lk = _window_kw(cfg, cfg.wall.get("loss_windows", 31))
    loss_nets = [n for b in sorted({h.batch for h in held} | set(space.batches)) for n in P.loss_pair(b)]

    # heldout_group > 0 [our choice]: each round interleaves groups of that many models of similar training FLOPs,
    # as a chain's prefix variants are (a ~30 us MLP measured 50-57 us interleaved with 40 ms CNNs, 37-49 us
    # with the other small MLPs); 0: all held-out models interleaved together
    gsz = int(cfg.wall.get("heldout_group", 0)) or len(held)
    by_cost = sorted(range(len(held)), key=lambda j: P.network_train_flops(held[j]))
    groups = [by_cost[g:g + gsz] for g in range(0, len(held), gsz)]

    def heldout_round(i):
        if i == 0 and cfg.wall.get("loss_term", False):
            # the classifier-loss term's pairs, windows interleaved, at the start of the profile
            P.measure_networks(meter, loss_nets, db, tag="loss_pairs", **lk)
        for r in at.get(i, ()):
            for g in groups:
                P.measure_networks(meter, [held[j] for j in g], db, tag=f"heldout_round{r}", compiled=compiled, **hk)

    t0 = time.perf_counter()
    _profile_chains(meter, chains, db, "wall-clock profile", before=heldout_round, **kw)
    t_prof = time.perf_counter() - t0
    compiled.clear()
    variant_keys = {_variant_key(v) for c in chains for v in P.prefixes(c)}
    assert not any(_variant_key(n) in variant_keys for n in held), "held-out model was profiled"
    if rounds:
        def held_costs(which, clock):
            return [m.seconds for m in P.pooled_measurements(meter, held, db, tags[which], clock=clock, **hk)]
    else:
        hk1, hk2 = dict(hk, tag="heldout"), dict(hk, tag="heldout_repeat")
        for g in progress(range(0, len(held), 4), total=-(-len(held) // 4), desc="held-out models (groups of 4)"):
            P.measure_networks(meter, held[g:g + 4], db, **hk1)
        # the same held-out models measured a second time, later: the MAPE between the two
        # measurements is the floor that no estimator can beat on this machine
        for g in progress(range(0, len(held), 4), total=-(-len(held) // 4), desc="held-out models, repeat"):
            P.measure_networks(meter, held[g:g + 4], db, **hk2)

        def held_costs(which, clock):
            return [m.seconds for m in P.measure_networks(meter, held, db, clock=clock, **(hk1, hk2)[which])]
    recs = list(db.records.values())
    out, fitted = {}, {}
    for clock, label in (("meter", "wall"), ("cpu", "cpu")):
        costs = [[m.seconds for m in P.measure_networks(meter, P.prefixes(c), db, clock=clock, **kw)] for c in chains]
        measured, repeat = held_costs(0, clock), held_costs(1, clock)
        extra = []
        if cfg.wall.get("loss_term", False):
            lc = [m.seconds for m in P.measure_networks(meter, loss_nets, db, tag="loss_pairs", clock=clock, **lk)]
            extra = [P.loss_sample(loss_nets[j], lc[j], lc[j + 1]) for j in range(0, len(loss_nets), 2)]
        models = _fit_all(cfg, chains, costs, extra)
        pred = _predict_all(models, held)
        res = _mapes(pred, measured, fams)
        spread_key = "rel_spread" if clock == "meter" else "cpu_rel_spread"
        spreads = [r[spread_key] for r in recs if r.get(spread_key) is not None]
        out[label] = {
            "meter": ("wallclock: wall seconds per training iteration (time, not energy)" if clock == "meter" else
                      "cputime: process CPU seconds per training iteration, from the same windows (time, not energy)"),
            "pool_chains": len(chains), "heldout_models": len(held), "profile_seconds": t_prof,
            "window_statistic": kw["statistic"], "layer_impl": kw["impl"],
            "timing_loop": kw.get("loop", P.DEFAULT_LOOP),
            "mape_thor": res["thor"], "mape_flops": res["flops"], "mape_neuralpower": res["neuralpower"],
            "per_family": res["per_family"], "band_coverage": res["band_coverage"],
            "thor_vs_flops_reduction": 1.0 - res["thor"] / res["flops"],
            "repeat_measurement_mape": T.mape(repeat, measured),
            "repeat_measurement_note": _REPEAT_NOTE[bool(rounds)],
            "heldout_protocol": _HELDOUT_PROTOCOL[bool(rounds)].format(
                rounds=rounds, interleave=f"each round interleaving groups of {gsz} models of similar training FLOPs"
                if gsz < len(held) else "all models interleaved in each round"),
            "loss_term": ({"per_batch_s": {str(e.features["batch"]): e.cost for e in extra},
                           "note": "[our choice] classifier loss (softmax cross-entropy minus the variants' mean-square "
                                   "readout over [batch, 10]) profiled as its own term (profiler.loss_pair) and added "
                                   "to THOR's and NeuralPower's sums"} if extra else None),
            "heldout_round_levels": _round_levels(meter, held, db, [f"heldout_round{r}" for r in range(rounds)], clock, hk) if rounds else None,
            "timing_noise": {"median_rel_spread_of_windows": float(statistics.median(spreads)) if spreads else None,
                             "p90_rel_spread_of_windows": float(np.quantile(spreads, 0.9)) if spreads else None,
                             "windows": cfg.wall.windows, "heldout_windows": cfg.wall.heldout_windows,
                             "load_average_at_end": os.getloadavg()},
            "scatter": {"measured": measured, **{k: pred[k] for k in ("thor", "flops", "neuralpower")}, "family": fams},
            "models": _per_model(held, fams, measured, pred)}
        log(study=label, mape_thor=res["thor"], mape_flops=res["flops"], mape_neuralpower=res["neuralpower"])
        fitted[label] = (costs, measured)
    if cfg.wall.al_max > 0:
        # active learning on the CPU-time measurements [our choice: the repeatable clock here]
        costs, measured = fitted["cpu"]
        sbc = _chain_samples(chains, costs)
        al = _al_curves(cfg.wall, chains, sbc, lambda m: T.mape([T.estimate(m, n).total for n in held], measured),
                        cfg.seed, cfg.wall.al_random_seeds, _fit_kw(cfg))
        out["cpu"]["active_learning"] = al
        for n, v, r in zip(al["n_chains"], al["variance"], al["random_mean"]):
            log(study="cpu_al", n_chains=n, mape_variance=v, mape_random=r)
    return out, meter, db, chains, fitted["cpu"][0]


def study_prune(cfg, wd: Workdir, log, meter, db, chains, costs) -> dict:
    from jaxlab.data.digits import load_digits

    pc = cfg.prune
    base = PR.digits_cnn(batch=pc.batch, width=pc.width)
    # Extra profiling chains around the CNN's layers [our choice]: windows of the CNN itself and
    # narrower copies, so the GPs have seen the shapes the greedy search visits.
    rng = np.random.default_rng(cfg.seed + 7)
    extra = []
    for _ in range(pc.extra_chains):
        w = float(rng.uniform(0.1, 1.0))
        net = PR.digits_cnn(batch=pc.batch, width=w * pc.width)
        start = int(rng.integers(0, len(net.layers) - 3))
        shape = P.place(net._replace(num_classes=None))[start].in_shape
        extra.append(P.Network(shape, net.layers[start:start + 3], pc.batch))
    kw = _window_kw(cfg, cfg.wall.windows)
    _profile_chains(meter, extra, db, "profile CNN-shaped chains", **kw)
    extra_costs = [[m.seconds for m in P.measure_networks(meter, P.prefixes(c), db, clock="cpu", **kw)] for c in extra]
    all_chains, all_costs = list(chains) + extra, list(costs) + extra_costs
    samples = [s for ss in _chain_samples(all_chains, all_costs) for s in ss]
    thor = T.fit_thor(samples, **_fit_kw(cfg))
    predict = lambda n: T.estimate(thor, n).total

    x, y = load_digits(28)
    x, y = np.asarray(x), np.asarray(y)
    perm = np.random.default_rng(cfg.seed).permutation(len(x))
    n_test = len(x) // 5
    te, tr = perm[:n_test], perm[n_test:]
    params = PR.train_classifier(base, x[tr], y[tr], epochs=pc.epochs, lr=pc.lr, seed=cfg.seed)
    acc_base = PR.evaluate_classifier(base, params, x[te], y[te])
    imp = PR.unit_importance(base, params)
    keep_e, steps = PR.energy_aware_prune(base, imp, predict, budget=pc.budget)
    net_e, p_e = PR.apply_keep(base, params, keep_e)
    keep_l, frac = PR.l1_prune_to_flops(base, imp, P.network_train_flops(net_e))
    net_l, p_l = PR.apply_keep(base, params, keep_l)
    res = {"budget": pc.budget, "l1_uniform_fraction": frac, "greedy_steps": len(steps)}
    for name, net, p in (("original", base, params), ("energy_aware", net_e, p_e), ("l1_equal_flops", net_l, p_l)):
        if name != "original":
            p = PR.train_classifier(net, x[tr], y[tr], epochs=pc.finetune_epochs, lr=pc.lr / 2, seed=cfg.seed, params=p)
        acc = PR.evaluate_classifier(net, p, x[te], y[te])
        res[name] = {"widths": [net.layers[i].features for i in PR.prunable_layers(base)], "accuracy": acc,
                     "train_flops": P.network_train_flops(net), "predicted_s": predict(net)}
        res[name]["_net"] = net
    # measured together (windows interleaved) three times, so load changes on the shared CPU hit all alike
    names = ("original", "energy_aware", "l1_equal_flops")
    for rep in range(3):
        pk = _window_kw(cfg, cfg.wall.heldout_windows, tag=f"prune{rep}")
        ms = P.measure_networks(meter, [res[n]["_net"] for n in names], db, **pk)
        cs = P.measure_networks(meter, [res[n]["_net"] for n in names], db, clock="cpu", **pk)
        for name, m, c in zip(names, ms, cs):
            res[name].setdefault("measured_wall_runs_s", []).append(m.seconds)
            res[name].setdefault("measured_cpu_runs_s", []).append(c.seconds)
    for name in names:
        res[name]["measured_s"] = float(statistics.median(res[name]["measured_cpu_runs_s"]))
        res[name]["measured_wall_s"] = float(statistics.median(res[name]["measured_wall_runs_s"]))
        del res[name]["_net"]
    res["cost_measure"] = "measured_s / predicted_s: process CPU seconds per training iteration; measured_wall_s: wall clock"
    o = res["original"]
    for name in ("energy_aware", "l1_equal_flops"):
        r = res[name]
        r["measured_wall_saving"] = 1.0 - r["measured_wall_s"] / o["measured_wall_s"]
        r["measured_saving"] = 1.0 - r["measured_s"] / o["measured_s"]
        r["predicted_saving"] = 1.0 - r["predicted_s"] / o["predicted_s"]
        r["accuracy_drop_points"] = 100.0 * (o["accuracy"] - r["accuracy"])
        r["flops_saving"] = 1.0 - r["train_flops"] / o["train_flops"]
    res["base_accuracy"] = acc_base
    log(study="prune", **{f"{n}_measured_s": res[n]["measured_s"] for n in ("original", "energy_aware", "l1_equal_flops")})
    return res


# ---------------------------------------------------------------------------------------------
def _plots(wd: Workdir, summary: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    for study, key, unit in (("wall", "measured", "s"), ("cpu", "measured", "s"), ("sim", "truth", "J")):
        s = summary.get(study)
        if not s or "scatter" not in s:
            continue
        sc = s["scatter"]
        fig, axes = plt.subplots(1, 3, figsize=(13, 4.2))
        y = np.array(sc[key])
        for ax, m in zip(axes, ("thor", "flops", "neuralpower")):
            p = np.array(sc[m])
            for f, mk in zip(FAMILIES, "ox"):
                idx = [i for i, g in enumerate(sc["family"]) if g == f]
                ax.scatter(y[idx], p[idx], marker=mk, label=f)
            lo, hi = y.min() * 0.7, y.max() * 1.4
            ax.plot([lo, hi], [lo, hi], "k--", lw=1)
            ax.set_xscale("log"); ax.set_yscale("log")
            ax.set_xlabel(f"{key} [{unit}/iteration]"); ax.set_ylabel("predicted")
            ax.set_title(f"{study}: {m}  MAPE {s['mape_' + m]:.1f}%")
            ax.legend()
        fig.tight_layout(); fig.savefig(wd.file(f"scatter_{study}.png"), dpi=110); plt.close(fig)
    fig, ax = plt.subplots(figsize=(7, 4))
    labels, w = [], 0.25
    rows = [(st, f, v) for st in ("sim", "wall", "cpu") if summary.get(st) for f, v in summary[st]["per_family"].items()]
    for j, m in enumerate(("thor", "flops", "neuralpower")):
        ax.bar(np.arange(len(rows)) + (j - 1) * w, [v[m] for _, _, v in rows], w, label=m)
    ax.set_xticks(np.arange(len(rows)), [f"{st}/{f}" for st, f, _ in rows])
    ax.set_ylabel("MAPE [%]"); ax.set_yscale("log"); ax.legend(); ax.set_title("MAPE per model family")
    fig.tight_layout(); fig.savefig(wd.file("mape_per_family.png"), dpi=110); plt.close(fig)
    als = _al_studies(summary)
    if als:
        fig, axes = plt.subplots(1, len(als), figsize=(6 * len(als), 4), squeeze=False)
        for ax, (st, al) in zip(axes[0], als):
            ax.plot(al["n_chains"], al["variance"], "o-", label=f"active (max variance, mean of {al.get('seeds', 1)} seeds)")
            ax.plot(al["n_chains"], al["random_mean"], "s--", label=f"random (mean of {len(al['random_runs'])} seeds)")
            ax.set_xlabel("profiled chains (3-layer configs)"); ax.set_ylabel("held-out MAPE [%]")
            ax.set_title(f"{st}: active learning ({al.get('pool_source', 'study')} pool); AL's chains to reach "
                         f"random's final / random's: {_frac(al.get('al_fraction_of_random_configs'))}", fontsize=9)
            ax.legend()
        fig.tight_layout(); fig.savefig(wd.file("active_learning.png"), dpi=110); plt.close(fig)
    sim = summary.get("sim")
    if sim and len(sim["gamma"]) > 1:
        g = sorted(sim["gamma"], key=float)
        fig, ax = plt.subplots(figsize=(6, 4))
        for m in ("thor", "flops", "neuralpower"):
            ax.plot([float(v) for v in g], [sim["gamma"][v][m] for v in g], "o-", label=m)
        ax.axhline(5.0, color="k", ls=":", lw=1)
        ax.set_xlabel("interaction weight gamma (0 = additive)"); ax.set_ylabel("MAPE [%]"); ax.legend()
        ax.set_title("simulated device: where additivity breaks")
        fig.tight_layout(); fig.savefig(wd.file("additivity_gamma.png"), dpi=110); plt.close(fig)


def _al_studies(summary: dict) -> list:
    """``[(study, active-learning record)]`` of the studies that ran one."""
    return [(st, summary[st]["active_learning"]) for st in ("sim", "cpu") if summary.get(st, {}).get("active_learning")]


def _frac(f) -> str:
    return "not reached" if f is None or not np.isfinite(f) else f"{f:.2f}"


def _check_al(config, part: str, pool: int) -> None:
    """Active-learning settings of ``config.<part>`` (``sim`` or ``wall``) against a pool of ``pool`` chains."""
    check_ints(config, f"{part}.al_init", f"{part}.al_step", f"{part}.al_random_seeds")
    a = config[part]
    if not a.al_init <= min(a.al_max, pool):
        raise ValueError(f"{part}.al_init={a.al_init} must be <= {part}.al_max={a.al_max} and <= the {pool} chains "
                         "of the pool AL draws from")


def _check_config(config) -> None:
    """Rejects bad values with one ValueError naming the field, before any profiling and before the workdir
    is touched (e.g. seed=-1 used to fail inside numpy after the workdir was written)."""
    check_ints(config, "seed", low=0, why="seeds of numpy's generators")
    check_ints(config, "gp_steps")
    check_number(config, "floor_frac", 0, 1, low_open=True, why="cost floor as a fraction of the median cost")
    check_number(config, "gp_hyper_prior_sd", 0, why="0: type-II ML fits")
    if config.sim.enabled:
        check_ints(config, "sim.pool_chains", "sim.heldout")
        check_ints(config, "sim.al_pool_chains", "sim.al_seed_offset", "sim.al_stream", low=0)
        check_number(config, "sim.noise", 0)
        if 0.0 not in tuple(config.sim.gammas):
            raise ValueError(f"sim.gammas={config.sim.gammas!r} must include 0.0 (the additive device every "
                             "headline figure and the active-learning study use)")
        check_choice(config, "sim.al_acquisition", T.ACQUISITIONS)
        if config.sim.al_acquisition == "alc_models":
            check_ints(config, "sim.al_targets")
        _al_pool_source(config.sim)
        _check_al(config, "sim", config.sim.al_pool_chains or config.sim.pool_chains)
    if config.wall.enabled:
        check_ints(config, "wall.pool_chains", "wall.heldout", "wall.windows", "wall.heldout_windows",
                   "wall.loss_windows")
        check_ints(config, "wall.heldout_group", "wall.al_max", low=0)
        check_number(config, "wall.min_window_s", 0)
        check_choice(config, "wall.statistic", tuple(P.WINDOW_STATISTICS))
        check_choice(config, "wall.layer_impl", P.LAYER_IMPLS)
        check_choice(config, "wall.loop", P.LOOPS)
        check_number(config, "wall.max_train_flops", 0, low_open=True)
        _chain_source(config.wall)
        _heldout_rounds(config.wall)
        if config.wall.al_max > 0:
            _check_al(config, "wall", config.wall.pool_chains)
    if config.prune.enabled:
        check_ints(config, "prune.batch", "prune.epochs")
        check_ints(config, "prune.finetune_epochs", "prune.extra_chains", low=0)
        check_number(config, "prune.width", 0, low_open=True)
        check_number(config, "prune.budget", 0, 1, low_open=True, high_open=True,
                     why="target share of the original predicted cost")
        check_number(config, "prune.lr", 0, low_open=True)


def run(config, workdir) -> dict:
    _check_config(config)
    wd = Workdir(workdir)
    wd.write_config(config, meters_detected=M.detect_meters())
    counter = iter(range(10 ** 9))
    log = lambda **kv: wd.log(next(counter), **kv)
    t0 = time.perf_counter()
    summary: dict = {"system": "THOR (arXiv 2501.16397)", "preset": config.preset,
                     "meters_detected": M.detect_meters(),
                     "note": "No energy counter on this machine (see meters_detected); energy results use the simulated "
                             "device, real-meter results use the wall clock (time per training iteration)."}
    if config.sim.enabled:
        summary["sim"] = study_sim(config, wd, log)
    if config.wall.enabled:
        walls, meter, db, chains, costs = study_wall(config, wd, log)
        summary.update(walls)
        if config.prune.enabled:
            summary["prune"] = study_prune(config, wd, log, meter, db, chains, costs)
    elif config.prune.enabled:
        # pruning on its own: THOR fitted on the CNN-shaped profiling chains only
        summary["prune"] = study_prune(config, wd, log, M.wallclock_meter(),
                                       P.ProfileDB(wd.file("profile_db_wallclock.jsonl")), [], [])
    summary["seconds"] = time.perf_counter() - t0
    _plots(wd, summary)
    rows = []
    for st in ("sim", "wall", "cpu"):
        if st in summary:
            rows.append({"study": st, "models": summary[st]["heldout_models"], "THOR MAPE %": summary[st]["mape_thor"],
                         "FLOPs MAPE %": summary[st]["mape_flops"], "NeuralPower MAPE %": summary[st]["mape_neuralpower"],
                         "repeat-measurement MAPE % (floor)": summary[st].get("repeat_measurement_mape", "n/a (analytic)")})
    text = markdown_table(rows)
    als = _al_studies(summary)
    if als:
        text += "\n\n" + markdown_table([
            {"study": st, "pool": al.get("pool_source", "study"), "seeds": al["seeds"],
             "random's final MAPE % (chains)": f"{al['random_final_mape']:.2f} ({al['random_chains']})",
             "AL chains to reach it / random's, seed-mean curve": _frac(al["al_fraction_of_random_configs"]),
             "same, per-seed median": _frac(al["fraction_per_seed_median"])} for st, al in als])
    for st in ("wall", "cpu"):
        if summary.get(st, {}).get("models"):
            text += f"\n\n**{st}: the largest THOR misses** (all {len(summary[st]['models'])} models: summary.json `{st}.models`)\n\n"
            text += _misses_table(summary[st]["models"])
    wd.write_text("results.md", text)
    return wd.write_summary(summary)


def tour_row(workdir) -> dict:
    from experiments.configs.thor import get_config

    s = run(get_config("quick"), workdir)
    sim, wall, cpu = s["sim"], s["wall"], s["cpu"]
    return {"system": "THOR energy/time estimation",
            "dataset": "random CNNs/MLPs (simulated device + this CPU)",
            "headline": (f"sim {sim['heldout_models']} models: THOR MAPE {sim['mape_thor']:.1f}% vs FLOPs {sim['mape_flops']:.1f}% "
                         f"/ NeuralPower {sim['mape_neuralpower']:.1f}%; this CPU, {wall['heldout_models']} models from "
                         f"{wall['pool_chains']} chains: wall-clock THOR {wall['mape_thor']:.1f}% vs FLOPs {wall['mape_flops']:.1f}%, "
                         f"CPU-time THOR {cpu['mape_thor']:.1f}% vs FLOPs {cpu['mape_flops']:.1f}%")}


if __name__ == "__main__":
    from jaxlab.utils.experiment import cli

    cli(run, "thor")
