"""experiments/cgi_dm.py end to end on a micro config: outputs, counts, known region, exact resume, errors."""

import json
import os

import numpy as np
import pytest

from experiments import cgi_dm
from experiments.configs.cgi_dm import get_config


def _micro():
    c = get_config("quick")
    c.pretrain_steps = 20
    c.classifier_steps = 10
    c.n_target_models = 1
    c.n_shadow_models = 1
    c.n_members = 3
    c.n_holdouts = 3
    c.finetune_steps = 4
    c.pgd_steps = 3
    c.baseline_noise_draws = 1
    c.pre_weight = 0.5
    c.mask_phases = 2
    return c


def test_cgi_experiment_micro_run_and_resume(tmp_path):
    wd = str(tmp_path / "cgi")
    s = cgi_dm.run(_micro(), wd)
    h = s["headline"]
    assert set(h) == set(cgi_dm.RECOVERY_METHODS + cgi_dm.SCORE_METHODS)
    for m, v in h.items():
        assert v["n_members"] == 3 and v["n_holdouts"] == 3 and v["n_models"] == 1, m
        assert v["n_shadow_members"] == 3 and v["n_shadow_holdouts"] == 3
        assert 0.0 <= v["auc"] <= 1.0 and 0.0 <= v["tpr_at_1pct_fpr"] <= 1.0
    assert s["mask"].endswith("kept fraction 0.500")
    for f in ("roc.png", "recoveries.png", "results.md", "summary.json", "config.json"):
        assert os.path.isfile(os.path.join(wd, f)), f

    # recoveries keep the known half of every image bit for bit; members and hold-outs are disjoint
    with np.load(os.path.join(wd, "models", "target0", "result.npz")) as z:
        x = z["x"]
        keep = np.broadcast_to(np.asarray(cgi_dm.cgi.checkerboard_mask((8, 8), 2), bool)[None, :, :, None], x.shape)
        for m in cgi_dm.RECOVERY_METHODS:
            np.testing.assert_array_equal(z[f"rec_{m}"][keep], x[keep])
            np.testing.assert_array_equal(z[f"rec_{m}_ph1"][~keep], x[~keep])  # complementary phase
        # the w=0.5 objective and the paper's w=1 give different recoveries; scores sum both phases
        assert not np.array_equal(z["rec_cgi_shared"], z["rec_cgi_shared_paper_weight"])
        u = ~keep
        l2 = lambda r, m: np.sqrt((((x - r) * m) ** 2).sum(axis=(1, 2, 3)))
        np.testing.assert_allclose(z["score_cgi_shared_neg_l2"],
                                   -(l2(z["rec_cgi_shared"], u) + l2(z["rec_cgi_shared_ph1"], keep)), rtol=1e-6)
        assert not np.array_equal(z["rec_cgi_shared"], x)
    with np.load(os.path.join(wd, "models", "shadow0", "result.npz")) as z:
        shadow_x = z["x"]
    flat = np.concatenate([x, shadow_x]).reshape(12, -1)
    assert len({r.tobytes() for r in flat}) == 12

    # a rerun resumes from the cached pretrained model and per-model results: same numbers
    s2 = cgi_dm.run(_micro(), wd)
    assert json.dumps(s2["all_scores"], sort_keys=True) == json.dumps(s["all_scores"], sort_keys=True)
    assert s2["pretrained_cached"] is True
    rows = [json.loads(l) for l in open(os.path.join(wd, "metrics.jsonl"))]
    assert [r["cached"] for r in rows if r.get("phase") == "model"][-2:] == [True, True]


def test_cgi_experiment_bad_input(tmp_path):
    c = _micro()
    c.n_target_models = 40  # 41 models x 6 images > the 180 nines
    with pytest.raises(ValueError, match="has only"):
        cgi_dm.run(c, str(tmp_path / "a"))
    c = _micro()
    c.mask_phases = 3
    with pytest.raises(ValueError, match="mask_phases"):
        cgi_dm.run(c, str(tmp_path / "b"))
    with pytest.raises(ValueError, match="unknown preset"):
        get_config("huge")
