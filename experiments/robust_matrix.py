"""Every attack x defense, with and without Pill, plus the attacker-fraction sweep; heat maps + tables.

    python -m experiments.robust_matrix --workdir=/work/runs/robust_matrix --config=experiments/configs/robust.py:matrix

Four parts, one cell = one federated run (see :func:`experiments.robust.run_cell`):

1. ``matrix``: ``config.attacks x config.defenses`` at ``config.attacker_fraction``;
2. ``pill``: ``config.pill_attacks x config.pill_defenses`` with the Pill-wrapped attack
   ([our design], see :mod:`jaxlab.fl.robust.pill`), compared with the same cells of part 1
   (same attack, defense, attacker fraction, seed and code: only the Pill wrapper differs);
3. ``pill_dose``: ``config.pill_dose_attacks x config.pill_dose_defenses x config.pill_doses``,
   the Pill attack with its pill scaled ``pill_norm`` times beyond the largest one that still looks
   benign (a dose-response check of how loud the pill must be to hurt, and whether it is then seen);
4. ``sweep``: ``config.sweep_attacks x config.sweep_defenses x config.fractions``.

**Detection bypass** [our choice of criterion]: per defense, with ``keep_mal`` = the share of
attacker updates the rule kept (its FNR) and ``keep_ben`` = the share of benign updates kept
(1 - FPR), both summed over rounds and averaged over the Pill attacks, Pill *gets past* the rule's
detection when ``keep_mal >= keep_ben / 2``: the rule keeps an attacker at least half as often as
an honest client. (The earlier criterion ``keep_mal > 50%`` is also reported; it cannot be met by
Krum, which keeps one update of n, so at most f/n = 25% of the attackers' updates.) Median and
trimmed mean flag no client; their filtering is per coordinate, so for them [our diagnostic] the
same criterion is applied to ``coord_keep_*``, the share of a client's coordinates inside the
rank window the rule averages (:func:`jaxlab.fl.robust.defenses.coordinate_kept_share`), and
reported separately (``coordinate_wise_bypassed``, ``defenses_bypassed_of_8_incl_coordinate_wise``)
from the selection-based count ``defenses_bypassed_of_8``. Both criteria are also applied to the
base attacks without Pill (``base_bypass``,
``defenses_bypassed_of_8_by_base_attacks_incl_coordinate_wise``): a rule the base attack already
gets past is no evidence for Pill. Runs recorded before this diagnostic
have no ``coord_keep_*`` and show "n/a (flags nobody)".

Each finished cell is appended to ``metrics.jsonl``; a restarted run skips the cells already there
(resume). Outputs: ``heatmap_acc.png``, ``heatmap_fpr.png``, ``heatmap_fnr.png``,
``heatmap_pill.png``, ``sweep.png``, ``results.md`` and ``summary.json``.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from experiments.robust import check_config, fmt, pill_settings, run_cell, setup
from jaxlab.fl.robust.pill import DESIGN as PILL_DESIGN
from jaxlab.utils.workdir import Workdir, markdown_table


def _key(r):
    return (r["part"], r["attack"], r["defense"], bool(r["pill"]), round(float(r["fraction"]), 4),
            round(float(r.get("pill_norm", 1.0)), 4))


def _doses(config):
    return tuple(config.get("pill_doses", ()))


def cells_of(config):
    """``[(part, attack, defense, pill, fraction, pill_norm)]`` in running order."""
    fr0 = config.attacker_fraction
    out = [("matrix", a, d, False, fr0, 1.0) for a in config.attacks for d in config.defenses]
    out += [("pill", a, d, True, fr0, 1.0) for a in config.pill_attacks for d in config.pill_defenses]
    out += [("pill_dose", a, d, True, fr0, float(x)) for x in _doses(config)
            for a in config.get("pill_dose_attacks", ()) for d in config.get("pill_dose_defenses", ())]
    # the 50% column first: it is the one the SkyMask-vs-baselines claim rests on
    fracs = sorted(config.fractions, key=lambda fr: (not math.isclose(fr, 0.5), fr))
    out += [("sweep", a, d, False, fr, 1.0) for fr in fracs for a in config.sweep_attacks
            for d in config.sweep_defenses if not math.isclose(fr, config.attacker_fraction)]
    return out


def _heatmap(path, mat, rows, cols, title, fmt_pct=True, cmap="viridis", vmin=0.0, vmax=1.0):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(1.0 + 0.75 * len(cols), 1.0 + 0.45 * len(rows)))
    im = ax.imshow(np.where(np.isnan(mat), np.nan, mat), cmap=cmap, vmin=vmin, vmax=vmax, aspect="auto")
    ax.set_xticks(range(len(cols)), cols, rotation=45, ha="right")
    ax.set_yticks(range(len(rows)), rows)
    for i in range(len(rows)):
        for j in range(len(cols)):
            v = mat[i, j]
            ax.text(j, i, "n/a" if np.isnan(v) else (f"{100 * v:.0f}" if fmt_pct else f"{v:.1f}"), ha="center",
                    va="center", fontsize=7, color="w" if not np.isnan(v) and v < (vmin + vmax) / 2 else "k")
    ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.03)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _floats(r):
    """metrics.jsonl stores NaN as the string 'nan' (strict JSON); turn it back into a float."""
    return {k: (float(v) if isinstance(v, str) and v in ("nan", "inf", "-inf") else v) for k, v in r.items()}


def report(config, rows, wd: Workdir) -> dict:
    rows = [_floats(r) for r in rows]
    by = {_key(r)[:5]: r for r in rows if r["part"] != "pill_dose"}
    fr0 = round(float(config.attacker_fraction), 4)
    A, D = list(config.attacks), list(config.defenses)

    def mat(field, part="matrix", pill=False, attacks=A, defenses=D, fr=fr0):
        m = np.full((len(attacks), len(defenses)), np.nan)
        for i, a in enumerate(attacks):
            for j, d in enumerate(defenses):
                r = by.get((part, a, d, pill, fr)) or (by.get(("matrix", a, d, pill, fr)) if part == "sweep" else None)
                if r is not None and r.get(field) is not None:
                    m[i, j] = float(r[field]) if not isinstance(r[field], str) else np.nan
        return m

    tag = f"{config.dataset}, {config.num_clients} clients, {int(100 * config.attacker_fraction)}% attackers"
    acc = mat("acc")
    _heatmap(wd.file("heatmap_acc.png"), acc, A, D, f"test accuracy (%), {tag}")
    _heatmap(wd.file("heatmap_fpr.png"), mat("fpr"), A, D, f"detection FPR (%), {tag}", cmap="magma_r")
    _heatmap(wd.file("heatmap_fnr.png"), mat("fnr"), A, D, f"detection FNR (%), {tag}", cmap="magma_r")
    summary = {"setting": tag, "rounds": config.rounds, "model": f"{config.model}{tuple(config.hidden)}",
               "partition": f"{config.partition} bias {config.bias}", "cells_done": len(rows)}
    tables = ["## Accuracy (%) / FPR / FNR, attack x defense\n"]
    tab_rows = []
    for a in A:
        row = {"attack": a}
        for d in D:
            r = by.get(("matrix", a, d, False, fr0))
            if r is None:
                row[d] = "-"
                continue
            cell = f"{fmt(r['acc'])}"
            if not (isinstance(r.get("fnr"), float) and math.isnan(r["fnr"])):
                cell += f" ({fmt(r['fpr'])}/{fmt(r['fnr'])})"
            if "asr" in r:
                cell += f" asr {fmt(r['asr'])}"
            row[d] = cell
        tab_rows.append(row)
    tables.append(markdown_table(tab_rows, ["attack"] + D))
    summary["matrix"] = {f"{r['attack']}/{r['defense']}": {k: r.get(k) for k in ("acc", "fpr", "fnr", "asr", "f_defense")}
                         for r in rows if r["part"] == "matrix"}

    # Pill: error-rate ratio and detection bypass per defense
    PA, PD = list(config.pill_attacks), list(config.pill_defenses)
    if PA and PD:
        e_base, e_pill = 1 - mat("acc", attacks=PA, defenses=PD), 1 - mat("acc", "pill", True, PA, PD)
        fnr_b, fnr_p = mat("fnr", attacks=PA, defenses=PD), mat("fnr", "pill", True, PA, PD)
        fpr_p = mat("fpr", "pill", True, PA, PD)
        fpr_b = mat("fpr", attacks=PA, defenses=PD)
        ckm_b, ckb_b = mat("coord_keep_mal", attacks=PA, defenses=PD), mat("coord_keep_ben", attacks=PA, defenses=PD)
        ckm_p, ckb_p = mat("coord_keep_mal", "pill", True, PA, PD), mat("coord_keep_ben", "pill", True, PA, PD)
        ratio = e_pill / np.maximum(e_base, 1e-9)
        _heatmap(wd.file("heatmap_pill.png"), np.log2(ratio), PA, PD,
                 "log2(error rate with Pill / without), Pill = ours", fmt_pct=False, cmap="coolwarm", vmin=-2, vmax=2)

        def colmean(m, j):
            return np.nan if np.all(np.isnan(m[:, j])) else float(np.nanmean(m[:, j]))

        def half_as_often(mal, ben):
            """The bypass criterion; None where nothing was recorded (NaN)."""
            return None if np.isnan(mal) else bool(mal >= 0.5 * ben)

        prow, bypass_of, coord_bypass_of, base_bypass_of = [], {}, {}, {}
        eight = [d for d in PD if d not in ("fedavg", "skymask")]
        for j, d in enumerate(PD):
            keep_mal, keep_ben = colmean(fnr_p, j), 1.0 - colmean(fpr_p, j)
            none = by.get(("matrix", "none", d, False, fr0))
            bypass = half_as_often(keep_mal, keep_ben)
            old = None if bypass is None else bool(keep_mal > 0.5)
            bypass_of[d] = bypass
            # coordinate-wise rules: the same criterion on the share of coordinates the rule averaged
            c_mal, c_ben = colmean(ckm_p, j), colmean(ckb_p, j)
            c_bypass = None if bypass is not None else half_as_often(c_mal, c_ben)
            coord_bypass_of[d] = c_bypass
            # the same criteria for the base attacks without Pill: what Pill adds over them
            b = half_as_often(colmean(fnr_b, j), 1.0 - colmean(fpr_b, j))
            base_bypass_of[d] = b if b is not None else half_as_often(colmean(ckm_b, j), colmean(ckb_b, j))
            if bypass is not None:
                verdict = str(bypass)
            elif c_bypass is not None:
                verdict = f"{c_bypass} (coordinate-wise)"
            else:
                verdict = "n/a (flags nobody)"
            prow.append({"defense": d, "err_no_attack": fmt(None if none is None else 1 - none["acc"]),
                         "err_base": fmt(colmean(e_base, j)), "err_pill": fmt(colmean(e_pill, j)),
                         "ratio": f"{colmean(ratio, j):.2f}", "keep_mal_base": fmt(colmean(fnr_b, j)),
                         "keep_mal_pill": fmt(keep_mal), "keep_ben_pill": fmt(None if np.isnan(keep_mal) else keep_ben),
                         "coord_keep_mal_base": fmt(colmean(ckm_b, j)), "coord_keep_ben_base": fmt(colmean(ckb_b, j)),
                         "coord_keep_mal_pill": fmt(c_mal), "coord_keep_ben_pill": fmt(c_ben),
                         "base_bypass": "n/a" if base_bypass_of[d] is None else str(base_bypass_of[d]),
                         "bypass(keep_mal>=keep_ben/2)": verdict,
                         "old(keep_mal>50%)": "n/a" if old is None else str(old)})
        cols8 = [PD.index(d) for d in eight]
        sel8 = [d for d in eight if bypass_of[d] is not None]
        coord8 = [d for d in eight if coord_bypass_of[d] is not None]
        summary["pill"] = {"design": "pill (ours), see jaxlab.fl.robust.pill", "pill_design": PILL_DESIGN,
                           "settings [our choice]": pill_settings(config),
                           "mean_error_ratio_8_defenses": float(np.nanmean(ratio[:, cols8])) if cols8 else None,
                           "mean_error_base_8": float(np.nanmean(e_base[:, cols8])) if cols8 else None,
                           "mean_error_pill_8": float(np.nanmean(e_pill[:, cols8])) if cols8 else None,
                           "defenses_bypassed_of_8": int(sum(1 for d in sel8 if bypass_of[d])),
                           "defenses_with_detection_of_8": len(sel8),
                           # [our diagnostic] median / trimmed mean flag nobody; counted here by the share
                           # of the attackers' coordinates they averaged (coord_keep_*), same criterion
                           "coordinate_wise_bypassed": {d: coord_bypass_of[d] for d in coord8},
                           "defenses_bypassed_of_8_incl_coordinate_wise": int(
                               sum(1 for d in sel8 if bypass_of[d]) + sum(1 for d in coord8 if coord_bypass_of[d])),
                           "defenses_with_detection_of_8_incl_coordinate_wise": len(sel8) + len(coord8),
                           # the base attacks, without Pill, under the same two criteria (same run)
                           "defenses_bypassed_of_8_by_base_attacks_incl_coordinate_wise": int(
                               sum(1 for d in eight if base_bypass_of[d])),
                           "defenses_bypassed_old_criterion_of_8": int(sum(
                               1 for d in sel8 if colmean(fnr_p, PD.index(d)) > 0.5)),
                           "per_defense": {r["defense"]: r for r in prow},
                           "per_cell_ratio": {f"{a}/{d}": (None if np.isnan(ratio[i, j]) else float(ratio[i, j]))
                                              for i, a in enumerate(PA) for j, d in enumerate(PD)}}
        if "fedavg" in D:
            # reference: the ratio if each base attack got through every rule untouched, i.e. hurt as
            # much as it hurts plain FedAvg (same run); Pill can beat it only by a pill more harmful
            # than the whole base attack
            e_avg = 1 - np.array([[by[("matrix", a, "fedavg", False, fr0)]["acc"] if ("matrix", a, "fedavg", False, fr0) in by
                                   else np.nan] for a in PA])
            summary["pill"]["ref_ratio_if_base_attack_passed_every_rule_as_fedavg"] = \
                float(np.nanmean(e_avg / np.maximum(e_base[:, cols8], 1e-9))) if cols8 else None
        tables.append("\n## Pill (ours) vs the same attacks without Pill (mean over attacks; keep = share of "
                      "updates the rule kept, summed over rounds)\n")
        tables.append(markdown_table(prow, list(prow[0].keys())))
        cell_rows = [{"attack": a, **{d: (f"{100 * e_base[i, j]:.1f} -> {100 * e_pill[i, j]:.1f}"
                                          if not np.isnan(ratio[i, j]) else "-") for j, d in enumerate(PD)}}
                     for i, a in enumerate(PA)]
        tables.append("\n## Error rate (%) without -> with Pill, per cell\n")
        tables.append(markdown_table(cell_rows, ["attack"] + PD))

    # Pill dose-response: the pill scaled beyond the benign range
    dose = [r for r in rows if r["part"] == "pill_dose"]
    if dose:
        drows = []
        for r in sorted(dose, key=lambda r: (r["attack"], r["defense"], r["pill_norm"])):
            ref = by.get(("pill", r["attack"], r["defense"], True, fr0))
            sel = not (isinstance(r.get("fnr"), float) and math.isnan(r["fnr"]))
            drows.append({"attack": r["attack"], "defense": r["defense"], "pill_norm": f"{r['pill_norm']:g}",
                          "err": fmt(1 - r["acc"]), "err_at_pill_norm_1": fmt(None if ref is None else 1 - ref["acc"]),
                          "keep_mal": fmt(r["fnr"]) if sel else "n/a", "keep_ben": fmt(1 - r["fpr"]) if sel else "n/a"})
        summary["pill_dose"] = drows
        tables.append("\n## Pill dose-response: pill scaled pill_norm x beyond the largest benign-looking one\n")
        tables.append(markdown_table(drows, list(drows[0].keys())))

    # sweep
    FR = sorted(set(list(config.fractions) + ([config.attacker_fraction] if config.fractions else [])))
    SA, SD = list(config.sweep_attacks), list(config.sweep_defenses)
    if FR and SA and SD:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        base = by.get(("matrix", "none", "fedavg", False, fr0))
        fig, axes = plt.subplots(1, len(SA), figsize=(3.2 * len(SA), 3.0), sharey=True)
        axes = np.atleast_1d(axes)
        sweep = {}
        for ax, a in zip(axes, SA):
            for d in SD:
                ys = []
                for fr in FR:
                    r = by.get(("sweep", a, d, False, round(fr, 4))) or by.get(("matrix", a, d, False, round(fr, 4)))
                    ys.append(np.nan if r is None else r["acc"])
                    if r is not None:
                        sweep[f"{a}/{d}/{fr:g}"] = {k: r.get(k) for k in ("acc", "fpr", "fnr", "f_defense")}
                ax.plot([100 * f for f in FR], ys, marker="o", ms=3, label=d)
            if base is not None:
                ax.axhline(base["acc"], color="k", ls=":", lw=1)
            ax.set_title(a, fontsize=9)
            ax.set_xlabel("attackers (%)")
        axes[0].set_ylabel("test accuracy")
        axes[-1].legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(wd.file("sweep.png"), dpi=110)
        plt.close(fig)
        summary["sweep"] = sweep
        srows = []
        for d in SD:
            for a in SA:
                row = {"defense": d, "attack": a}
                for fr in FR:
                    r = by.get(("sweep", a, d, False, round(fr, 4))) or by.get(("matrix", a, d, False, round(fr, 4)))
                    row[f"{int(round(100 * fr))}%"] = "-" if r is None else fmt(r["acc"])
                srows.append(row)
        tables.append("\n## Attacker-fraction sweep: accuracy (%)\n")
        tables.append(markdown_table(srows, ["defense", "attack"] + [f"{int(round(100 * f))}%" for f in FR]))
    if base := by.get(("matrix", "none", "fedavg", False, fr0)):
        summary["no_attack_fedavg_acc"] = base["acc"]
    wd.write_text("results.md", "\n".join(tables))
    wd.write_summary(summary)
    return summary


def run(config, workdir) -> dict:
    from jaxlab.utils.progress import progress

    check_config(config)
    wd = Workdir(workdir)
    wd.write_config(config)
    # Pill cells of an earlier Pill design or other Pill settings are stale: run them again
    settings = pill_settings(config)
    rows = [r for r in wd.read_metrics() if "part" in r and (not r.get("pill") or (
        r.get("pill_design") == PILL_DESIGN and r.get("pill_settings", settings) == settings))]
    done = {_key(r) for r in rows}
    todo = [c for c in cells_of(config) if (c[0], c[1], c[2], c[3], round(float(c[4]), 4), round(c[5], 4)) not in done]
    s = setup(config) if todo else None
    step = 1 + max((int(r.get("step", -1)) for r in wd.read_metrics()), default=-1)
    for part, a, d, p, fr, pn in progress(todo, total=len(todo), desc="robust matrix"):
        cs = s
        if pn != 1.0:  # run_cell reads the pill scale from the config
            cfg = s.config.copy_and_resolve_references()
            cfg.pill_norm = pn
            cs = dataclasses.replace(s, config=cfg)
        row = {"part": part, **run_cell(cs, a, d, fr, p)}
        if p:
            row["pill_norm"], row["pill_design"] = pn, PILL_DESIGN
        row.pop("history", None)
        wd.log(step, **row)
        rows.append(row)
        step += 1
        if step % 20 == 0:
            report(config, rows, wd)
    return report(config, rows, wd)


def tour_row(workdir) -> dict:
    from experiments.robust import tour_row as quick_row

    return quick_row(workdir)


if __name__ == "__main__":
    from jaxlab.utils.experiment import cli

    cli(run, "robust")
