"""Pill (ours): chained pill construction, the exact SimAdjust/DistAdjust solve against a float64
brute force and closed forms, the attack's invariants, bad input, and the matrix's Pill report."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlab.fl.robust.attacks import make_attack
from jaxlab.fl.robust.flat import flattener
from jaxlab.fl.robust.pill import pill_attack, pill_mask, stealth_coefficients


def _mlp_params(rng):
    return {"base": {"fc0": {"kernel": jnp.asarray(rng.normal(size=(6, 5)), jnp.float32), "bias": jnp.zeros(5)},
                     "fc1": {"kernel": jnp.asarray(rng.normal(size=(5, 4)), jnp.float32), "bias": jnp.zeros(4)}},
            "head": {"kernel": jnp.asarray(rng.normal(size=(4, 3)), jnp.float32), "bias": jnp.zeros(3)}}


def test_pill_mask_chains_max_units_and_ranks_the_start():
    rng = np.random.default_rng(3)
    p = _mlp_params(rng)
    mask, units = pill_mask(p, "max")
    k0, k1 = np.asarray(p["base"]["fc0"]["kernel"]), np.asarray(p["base"]["fc1"]["kernel"])
    u0 = int(np.abs(k0).sum(0).argmax())
    u1 = int(np.abs(k1[u0]).argmax())
    assert units.tolist() == [u0, u1, -1]
    m = flattener(p).unflatten(mask)
    assert np.asarray(m["base"]["fc0"]["kernel"])[:, u0].all() and np.asarray(m["base"]["fc0"]["kernel"]).sum() == 6
    assert np.asarray(m["base"]["fc1"]["kernel"])[:, u1].all() and np.asarray(m["base"]["fc1"]["kernel"]).sum() == 5
    assert np.asarray(m["head"]["kernel"])[u1].all() and np.asarray(m["head"]["kernel"]).sum() == 3
    assert float(mask.sum()) == (6 + 1) + (5 + 1) + (3 + 3)
    # rank r starts at the r-th strongest first-layer unit, then chains as usual
    order = np.argsort(-np.abs(k0).sum(0))
    u0b = int(order[1])
    assert pill_mask(p, "max", rank=1)[1].tolist() == [u0b, int(np.abs(k1[u0b]).argmax()), -1]
    assert int(pill_mask(p, "min")[1][0]) == int(np.abs(k0).sum(0).argmin())
    with pytest.raises(ValueError, match="pill search"):
        pill_mask(p, "biggest")


def _solve(p, c, gh, t, dist):
    f32 = lambda v: jnp.asarray(v, jnp.float32)  # noqa: E731
    return tuple(float(v) for v in stealth_coefficients(f32(p), f32(c), f32(gh), t, dist))


def test_stealth_coefficients_closed_form():
    # g_hat = e2, pill = e1, carrier = e2: cos >= t is y >= t |(x, y)|, the distance bound is the disk
    # x^2 + (y - 1)^2 <= D^2. Loose cosine: the disk's rightmost point (D, 1) is the answer.
    p, c, gh = np.array([1.0, 0.0]), np.array([0.0, 1.0]), np.array([0.0, 1.0])
    s, a, ok = _solve(p, c, gh, 0.5, 0.5)
    assert ok and abs(s - 0.5) < 1e-5 and abs(a - 1.0) < 1e-5
    # tight cosine: the cone's edge meets the circle at rho = t + sqrt(D^2 - 1 + t^2), x = rho sqrt(1 - t^2)
    t, D = 0.95, 0.5
    rho = t + math.sqrt(D * D - 1 + t * t)
    s, a, ok = _solve(p, c, gh, t, D)
    assert ok and abs(s - rho * math.sqrt(1 - t * t)) < 1e-5 and abs(a - rho * t) < 1e-5
    # g_hat off the plane by 1 (third axis): a distance bound below 1 is out of reach
    p3, c3, gh3 = np.array([1.0, 0, 0]), np.array([0, 1.0, 0]), np.array([0, 1.0, 1.0])
    assert not bool(_solve(p3, c3, gh3, 0.0, 0.9)[2]) and bool(_solve(p3, c3, gh3, 0.0, 1.1)[2])


@pytest.fixture(scope="module")
def attack_case():
    rng = np.random.default_rng(5)
    # a pill of ~8% of the parameters (real models: ~3%), so that it can hide
    params = {"base": {"fc0": {"kernel": jnp.asarray(rng.normal(size=(30, 20)), jnp.float32), "bias": jnp.zeros(20)},
                       "fc1": {"kernel": jnp.asarray(rng.normal(size=(20, 10)), jnp.float32), "bias": jnp.zeros(10)}},
              "head": {"kernel": jnp.asarray(rng.normal(size=(10, 3)), jnp.float32), "bias": jnp.zeros(3)}}
    d = flattener(params).size
    base = rng.normal(size=d) + 0.5
    g = (base[None, :] + 0.7 * rng.normal(size=(10, d))).astype(np.float32)
    is_mal = np.arange(10) < 3
    return params, jnp.asarray(g), jnp.asarray(is_mal)


def _benign_targets(g, is_mal, q):
    g64 = np.asarray(g, np.float64)
    ben = g64[~np.asarray(is_mal)]
    gh = ben.mean(0)
    cos = ben @ gh / (np.linalg.norm(ben, axis=1) * np.linalg.norm(gh))
    return gh, float(np.quantile(cos, 1 - q)), float(np.quantile(np.linalg.norm(ben - gh, axis=1), q))


@pytest.mark.parametrize("q", [0.05, 0.5])
def test_pill_attack_looks_benign_and_poisons_only_its_pill(attack_case, q):
    params, g, is_mal = attack_case
    key = jax.random.PRNGKey(0)
    out = np.asarray(pill_attack(make_attack("sign_flip"), benign_quantile=q).apply(g, is_mal, key, {"params": params}),
                     np.float64)
    np.testing.assert_array_equal(out[3:], np.asarray(g)[3:])
    gh, cos_t, dist_t = _benign_targets(g, is_mal, q)
    for k in range(3):
        row = out[k]
        assert not np.allclose(row, np.asarray(g)[k])  # a pill was sent, not the honest update
        m = np.asarray(pill_mask(params, "max", rank=k)[0]) > 0
        # both detection metrics inside the benign range (float64 re-computation)
        cos = row @ gh / (np.linalg.norm(row) * np.linalg.norm(gh))
        assert cos >= cos_t - 1e-3 and np.linalg.norm(row - gh) <= dist_t * (1 + 1e-3), (cos, cos_t)
        # the pill carries the sign-flip poison -g_hat (its deviation from g_hat is -2 g_hat) ...
        pill = row[m]
        cosp = pill @ (-gh[m]) / (np.linalg.norm(pill) * np.linalg.norm(gh[m]))
        assert cosp > 0.999 and np.linalg.norm(pill) > 0
        # ... and off the pill the update is a multiple of the carrier (g_hat + own)/2
        carrier = ((gh + np.asarray(g, np.float64)[k]) / 2)[~m]
        a = row[~m] @ carrier / (carrier @ carrier)
        np.testing.assert_allclose(row[~m], a * carrier, rtol=1e-4, atol=1e-5)
    # attackers carry different pills by default, one shared pill on request
    starts = [int(pill_mask(params, "max", rank=k)[1][0]) for k in range(3)]
    assert len(set(starts)) == 3
    shared = np.asarray(pill_attack(make_attack("sign_flip"), shared=True).apply(g, is_mal, key, {"params": params}))
    m0 = np.asarray(pill_mask(params, "max")[0]) > 0
    assert all(np.all(shared[k][m0] != 0) for k in range(3))


def test_pill_norm_scales_the_pill_and_keeps_the_carrier(attack_case):
    params, g, is_mal = attack_case
    key = jax.random.PRNGKey(1)
    one = np.asarray(pill_attack(make_attack("fang_trim")).apply(g, is_mal, key, {"params": params}))
    three = np.asarray(pill_attack(make_attack("fang_trim"), pill_norm=3.0).apply(g, is_mal, key, {"params": params}))
    for k in range(3):
        m = np.asarray(pill_mask(params, "max", rank=k)[0]) > 0
        np.testing.assert_allclose(three[k][m], 3 * one[k][m], rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(three[k][~m], one[k][~m], rtol=1e-6, atol=1e-7)


def _unhideable_case():
    """Two attackers (rows 0-1, their own honest updates) and four equal benign rows ``v``: cos_t = 1
    and dist_t = 0, so only g_hat = v itself looks benign."""
    rng = np.random.default_rng(7)
    params = _mlp_params(rng)
    d = flattener(params).size
    v = rng.normal(size=d).astype(np.float32)
    g = np.tile(v, (6, 1))
    g[:2] = rng.normal(size=(2, d))
    return params, g, v


def test_pill_sends_the_honest_update_when_it_cannot_hide():
    params, g, _ = _unhideable_case()   # no pill + carrier reaches g_hat
    out = np.asarray(pill_attack(make_attack("sign_flip")).apply(jnp.asarray(g), jnp.arange(6) < 2,
                                                                 jax.random.PRNGKey(0), {"params": params}))
    np.testing.assert_array_equal(out, g)


def test_pill_bad_input(attack_case):
    params, g, is_mal = attack_case
    base = make_attack("sign_flip")
    with pytest.raises(ValueError, match="pill search"):
        pill_attack(base, search="biggest")
    with pytest.raises(ValueError, match="carrier_mix"):
        pill_attack(base, carrier_mix=1.5)
    with pytest.raises(ValueError, match="pill_norm"):
        pill_attack(base, pill_norm=-1.0)
    with pytest.raises(ValueError, match="benign_quantile"):
        pill_attack(base, benign_quantile=2.0)
    with pytest.raises(ValueError, match="knowledge"):
        pill_attack(base, knowledge="oracle")
    with pytest.raises(ValueError, match="params"):
        pill_attack(base).apply(g, is_mal, jax.random.PRNGKey(0))
    with pytest.raises(ValueError, match="columns"):
        pill_attack(base, mask_fn=lambda p: jnp.ones(5)).apply(g, is_mal, jax.random.PRNGKey(0), {"params": params})


def test_matrix_report_pill_ratio_and_bypass(tmp_path):
    """The Pill summary on hand-made cells: mean of per-cell error ratios and the bypass criterion
    keep_mal >= keep_ben / 2 (Krum keeps 1 of 20 updates; median flags nobody)."""
    import ml_collections

    from experiments.robust_matrix import report
    from jaxlab.fl.robust.pill import DESIGN
    from jaxlab.utils.workdir import Workdir

    c = ml_collections.ConfigDict(dict(dataset="digits8", num_clients=20, attacker_fraction=0.2, rounds=3,
                                       model="mlp", hidden=(8,), partition="fang", bias=0.5,
                                       attacks=("none", "a1", "a2"), defenses=("krum", "median", "fltrust"),
                                       pill_attacks=("a1", "a2"), pill_defenses=("krum", "median", "fltrust"),
                                       fractions=(), sweep_attacks=(), sweep_defenses=()))
    nan = float("nan")
    cells = {  # (acc, fpr, fnr) without Pill / with Pill
        ("a1", "krum"): ((0.6, 0.95, 0.0), (0.5, 0.96, 0.2)), ("a2", "krum"): ((0.8, 0.95, 0.0), (0.8, 0.96, 0.2)),
        ("a1", "median"): ((0.9, nan, nan), (0.8, nan, nan)), ("a2", "median"): ((0.9, nan, nan), (0.9, nan, nan)),
        ("a1", "fltrust"): ((0.9, 0.1, 0.0), (0.9, 0.1, 0.3)), ("a2", "fltrust"): ((0.95, 0.1, 0.0), (0.9, 0.1, 0.5)),
    }
    rows = [dict(part="matrix", attack="none", defense=d, pill=False, fraction=0.2, acc=0.9, fpr=0.1, fnr=nan)
            for d in c.defenses]
    for (a, d), (b, p) in cells.items():
        rows.append(dict(part="matrix", attack=a, defense=d, pill=False, fraction=0.2, acc=b[0], fpr=b[1], fnr=b[2]))
        rows.append(dict(part="pill", attack=a, defense=d, pill=True, fraction=0.2, acc=p[0], fpr=p[1], fnr=p[2],
                         pill_norm=1.0, pill_design=DESIGN))
    summ = report(c, rows, Workdir(str(tmp_path)))["pill"]
    ratios = [(1 - p[0]) / (1 - b[0]) for b, p in cells.values()]
    assert abs(summ["mean_error_ratio_8_defenses"] - np.mean(ratios)) < 1e-9
    pd = summ["per_defense"]
    assert pd["krum"]["bypass(keep_mal>=keep_ben/2)"] == "True" and pd["krum"]["old(keep_mal>50%)"] == "False"
    assert pd["fltrust"]["bypass(keep_mal>=keep_ben/2)"] == "False"  # keeps 40% of attackers vs 90% of clients
    assert pd["median"]["bypass(keep_mal>=keep_ben/2)"].startswith("n/a")
    assert summ["defenses_bypassed_of_8"] == 1 and summ["defenses_with_detection_of_8"] == 2
    assert (tmp_path / "results.md").exists() and (tmp_path / "heatmap_pill.png").exists()
    # with the per-coordinate kept shares recorded, the median gets a coordinate-wise verdict, counted
    # apart from the selection-based one; the base attacks are judged by the same criteria
    coord = {False: (0.05, 0.15), True: (0.12, 0.14)}  # (coord_keep_mal, coord_keep_ben) without / with Pill
    rows2 = [dict(r, coord_keep_mal=coord[r["pill"]][0], coord_keep_ben=coord[r["pill"]][1])
             if r["defense"] == "median" and r["attack"] != "none" else r for r in rows]
    summ2 = report(c, rows2, Workdir(str(tmp_path / "coord")))["pill"]
    pd2 = summ2["per_defense"]
    assert pd2["median"]["bypass(keep_mal>=keep_ben/2)"] == "True (coordinate-wise)"  # 0.12 >= 0.14 / 2
    assert pd2["median"]["base_bypass"] == "False"  # 0.05 < 0.15 / 2
    assert pd2["krum"]["base_bypass"] == "False" and pd2["fltrust"]["base_bypass"] == "False"  # kept no attacker
    assert summ2["defenses_bypassed_of_8"] == 1 and summ2["coordinate_wise_bypassed"] == {"median": True}
    assert summ2["defenses_bypassed_of_8_incl_coordinate_wise"] == 2
    assert summ2["defenses_with_detection_of_8_incl_coordinate_wise"] == 3
    assert summ2["defenses_bypassed_of_8_by_base_attacks_incl_coordinate_wise"] == 0


def test_pill_mask_full_tail_keeps_every_unit_of_the_last_two_layers():
    rng = np.random.default_rng(4)
    p = _mlp_params(rng)   # fc0 6->5, fc1 5->4, head 4->3
    mask, units = pill_mask(p, "max", tail="full")
    k0 = np.asarray(p["base"]["fc0"]["kernel"])
    u0 = int(np.abs(k0).sum(0).argmax())
    assert units.tolist() == [u0, -1, -1]
    m = flattener(p).unflatten(mask)
    fc0, fc1, head = (np.asarray(m["base"]["fc0"]["kernel"]), np.asarray(m["base"]["fc1"]["kernel"]),
                      np.asarray(m["head"]["kernel"]))
    assert fc0[:, u0].all() and fc0.sum() == 6 and np.asarray(m["base"]["fc0"]["bias"]).sum() == 1
    # penultimate layer: only the weights leaving the pill unit, into every unit, and every bias
    assert fc1[u0].all() and fc1.sum() == 4 and np.asarray(m["base"]["fc1"]["bias"]).all()
    assert head.all() and np.asarray(m["head"]["bias"]).all()
    assert float(mask.sum()) == (6 + 1) + (4 + 4) + (12 + 3)
    two = {"base": {"fc0": p["base"]["fc0"]}, "head": {"kernel": jnp.ones((5, 3)), "bias": jnp.zeros(3)}}
    with pytest.raises(ValueError, match="tail='full' needs"):
        pill_mask(two, tail="full")
    with pytest.raises(ValueError, match="pill tail"):
        pill_mask(p, tail="half")


def test_pill_mask_full_tail_on_a_cnn_follows_the_channel_through_the_flatten():
    from jaxlab.models import make_cnn
    model = make_cnn(10, hidden=7, channels=(3, 4))
    # 20x20 -> conv 16 -> pool 8 -> conv 4 -> pool 2: fc1 sees 2 x 2 positions x 4 channels
    params = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 20, 20, 1)))["params"]
    mask, units = pill_mask(params, "max", tail="full")
    m = flattener(params).unflatten(mask)
    k1 = np.abs(np.asarray(params["base"]["conv1"]["kernel"]))     # [5, 5, 3, 4]
    u0 = int(np.abs(np.asarray(params["base"]["conv0"]["kernel"])).reshape(-1, 3).sum(0).argmax())
    u1 = int(k1[:, :, u0, :].sum((0, 1)).argmax())
    assert units.tolist() == [u0, u1, -1, -1]
    fc1 = np.asarray(m["base"]["fc1"]["kernel"])                    # [2 * 2 * 4, 7], NHWC flatten
    rows = np.flatnonzero(fc1.any(1))
    assert (rows % 4 == u1).all() and len(rows) == 4 and fc1[rows].all()
    assert np.asarray(m["head"]["kernel"]).all()


def _brute_force_max_s(p, c, b, gh, t, D, n=1500):
    """Largest s >= 0 over a float64 grid of (s, a >= 0) with g = s p + a (c + b) inside both bounds."""
    q = c + b
    G = gh @ gh
    smax = 6 * math.sqrt(G) + 3 * D
    S = np.linspace(0, smax, n)[:, None]
    A = np.linspace(0, 6 * (math.sqrt(G) + D) / np.linalg.norm(q), n)[None, :]
    pq, pg, qg, qq = p @ q, p @ gh, q @ gh, q @ q
    dot = S * pg + A * qg
    nrm2 = S ** 2 + 2 * S * A * pq + A ** 2 * qq
    feas = (dot >= t * np.sqrt(nrm2) * math.sqrt(G)) & (nrm2 - 2 * dot + G <= D * D)
    return (S[np.any(feas, axis=1), 0].max() if feas.any() else -1.0), S[1, 0]


@pytest.mark.parametrize("benign_base", [False, True])
def test_stealth_coefficients_match_a_float64_brute_force(benign_base):
    """Random planes, with the poison deviating from zero or (pill_base) from the benign pill values."""
    rng = np.random.default_rng(int(benign_base))
    checked = 0
    for _ in range(40):
        d = 30
        m = np.zeros(d)
        m[:5] = 1
        gh = rng.normal(size=d) + rng.uniform(-1, 1)
        b = gh * m if benign_base else np.zeros(d)                # the benign values on the pill
        p = (rng.normal(size=d) - (rng.uniform(0, 2) * gh if benign_base else 0)) * m  # often against them
        p /= np.linalg.norm(p)
        c = (gh + rng.normal(size=d) * rng.uniform(0.1, 2)) * (1 - m)
        G = gh @ gh
        t, D = rng.uniform(-0.2, 0.99), rng.uniform(0.1, 2) * math.sqrt(G)
        f32 = lambda v: jnp.asarray(v, jnp.float32)  # noqa: E731
        s, a, ok = (float(v) for v in stealth_coefficients(f32(p), f32(c), f32(gh), t, D,
                                                           pill_base=f32(b) if benign_base else None))
        s_brute, step = _brute_force_max_s(p, c, b, gh, t, D)
        if s_brute < 2 * step:  # no room for a pill (at most s ~ 0): either answer is right
            assert not ok or s < 3 * step
            continue
        assert ok
        g = s * p + a * (c + b)
        assert abs(s - s_brute) <= 2 * step + 1e-3 * s_brute, (s, s_brute)
        assert g @ gh >= t * np.linalg.norm(g) * math.sqrt(G) - 1e-3 * G
        assert np.linalg.norm(g - gh) <= D * (1 + 1e-3)
        checked += 1
    assert checked >= 15


def test_stealth_coefficients_benign_base_hand_checkable():
    # g_hat = (1, 1): pill axis e1 with benign value 1, carrier e2; poison p = -e1 (sign flip on the pill).
    # g = s p + a (c + b) = (a - s, a); with a loose cosine (t = -1) only the distance bound
    # (a - s - 1)^2 + (a - 1)^2 <= D^2 binds, and s = (a - 1) - (a - s - 1) is largest at
    # a - 1 = D/sqrt2, a - s - 1 = -D/sqrt2: s = sqrt2 D, a = 1 + D/sqrt2
    D = 0.5
    f32 = lambda v: jnp.asarray(v, jnp.float32)  # noqa: E731
    s, a, ok = stealth_coefficients(f32([-1.0, 0.0]), f32([0.0, 1.0]), f32([1.0, 1.0]), -1.0, D,
                                    pill_base=f32([1.0, 0.0]))
    assert bool(ok)
    np.testing.assert_allclose([float(s), float(a)], [math.sqrt(2) * D, 1 + D / math.sqrt(2)], rtol=1e-4)


def test_pill_benign_base_deviates_from_the_benign_pill_and_looks_benign(attack_case):
    params, g, is_mal = attack_case
    out = np.asarray(pill_attack(make_attack("fang_trim"), pill_base="benign").apply(
        g, is_mal, jax.random.PRNGKey(2), {"params": params}), np.float64)
    gh, cos_t, dist_t = _benign_targets(g, is_mal, 0.05)
    g64 = np.asarray(g, np.float64)
    for k in range(3):
        row = out[k]
        assert not np.allclose(row, g64[k])
        m = np.asarray(pill_mask(params, "max", rank=k)[0]) > 0
        cos = row @ gh / (np.linalg.norm(row) * np.linalg.norm(gh))
        assert cos >= cos_t - 1e-3 and np.linalg.norm(row - gh) <= dist_t * (1 + 1e-3)
        carrier = ((gh + g64[k]) / 2)[~m]
        a = row[~m] @ carrier / (carrier @ carrier)
        np.testing.assert_allclose(row[~m], a * carrier, rtol=1e-4, atol=1e-5)
        # on the pill: a * g_hat plus a deviation along Fang-Trim's push away from g_hat
        dev = row[m] - a * gh[m]
        assert np.linalg.norm(dev) > 0
        push = np.sign(-np.sign(g64[~np.asarray(is_mal)].sum(0)))[m]   # Fang-Trim moves against sum's sign
        assert np.mean(np.sign(dev) == push) > 0.9


def test_pill_closer_fallback_moves_the_carrier_to_the_benign_mean():
    params, g, v = _unhideable_case()
    # only g_hat itself looks benign (cos_t = 1, dist_t = 0): 'honest' abstains, 'closer' with the
    # benign pill base reaches g_hat with the carrier at the benign mean and no room for poison
    att = pill_attack(make_attack("sign_flip"), fallback="closer", pill_base="benign")
    out = np.asarray(att.apply(jnp.asarray(g), jnp.arange(6) < 2, jax.random.PRNGKey(0), {"params": params}))
    np.testing.assert_allclose(out[:2], np.tile(v, (2, 1)), rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(out[2:], g[2:])


def test_pill_closer_fallback_uses_the_first_feasible_carrier_mix(attack_case):
    params, g, is_mal = attack_case
    key = jax.random.PRNGKey(3)
    ctx = {"params": params}
    honest = np.asarray(pill_attack(make_attack("sign_flip"), carrier_mix=1.0).apply(g, is_mal, key, ctx))
    closer = np.asarray(pill_attack(make_attack("sign_flip"), carrier_mix=1.0, fallback="closer").apply(g, is_mal, key, ctx))
    gh = np.asarray(g, np.float64)[~np.asarray(is_mal)].mean(0)
    g64 = np.asarray(g, np.float64)
    fell_back = 0
    for k in range(3):
        m = np.asarray(pill_mask(params, "max", rank=k)[0]) > 0
        if not np.array_equal(honest[k], np.asarray(g)[k]):   # mix 1 feasible: the same answer
            np.testing.assert_allclose(closer[k], honest[k], rtol=1e-5, atol=1e-6)
            continue
        fell_back += 1
        assert not np.array_equal(closer[k], np.asarray(g)[k])   # it injects instead of abstaining
        # mix 1 infeasible: the carrier is one of (g_hat + f (g_own - g_hat)), f in {0.5, 0.25, 0}
        off = closer[k][~m].astype(np.float64)
        fits = []
        for f in (0.5, 0.25, 0.0):
            c = (gh + f * (g64[k] - gh))[~m]
            a = off @ c / (c @ c)
            fits.append(np.linalg.norm(off - a * c) / np.linalg.norm(off))
        assert min(fits) < 1e-4
    assert fell_back >= 1   # the case exercises the fallback (own updates too far for mix 1)


def test_pill_new_options_bad_input():
    base = make_attack("sign_flip")
    with pytest.raises(ValueError, match="pill tail"):
        pill_attack(base, tail="half")
    with pytest.raises(ValueError, match="fallback"):
        pill_attack(base, fallback="abstain")
    with pytest.raises(ValueError, match="pill_base"):
        pill_attack(base, pill_base="mean")
