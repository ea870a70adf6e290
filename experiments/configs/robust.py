"""Presets for experiments/robust.py and experiments/robust_matrix.py.

    python -m experiments.robust --workdir=/tmp/robust --config=experiments/configs/robust.py:quick
    python -m experiments.robust_matrix --workdir=/work/runs/robust_matrix --config=experiments/configs/robust.py:matrix

``quick``: the tour row (SkyMask, FLTrust, median and FedAvg under Min-Max on 8x8 digits, 20 clients).
``matrix``: every attack x defense, with and without Pill, and the attacker-fraction sweep, on
8x8 digits with a small MLP (fits in well under an hour on 2 CPU cores).
``skymask``: the five attacks x (FedAvg, Krum, median, FLTrust, SkyMask), one attacker fraction per run:
    python -m experiments.robust --workdir=/work/runs/robust_skymask20 --config=experiments/configs/robust.py:skymask
    python -m experiments.robust --workdir=/work/runs/robust_skymask50 --config=experiments/configs/robust.py:skymask --config.attacker_fraction=0.5
``skymask50``: the 50% claim, 100 rounds (at 30 the benign half has not converged; see the preset):
    python -m experiments.robust --workdir=/work/runs/sky50_r100_s0 --config=experiments/configs/robust.py:skymask50
``skymask_adaptive``: the same setting and rules under FLTrust's adaptive attack (NDSS'21), with
(``fltrust_adaptive_root``) and without (``fltrust_adaptive``) the attacker knowing the server's root
update; rules without a root set (FedAvg, Krum, median) get the estimate in both rows:
    python -m experiments.robust --workdir=/work/runs/robust_fltrust_adapt50 --config=experiments/configs/robust.py:skymask_adaptive --config.attacker_fraction=0.5
``pill``: Pill (ours) with and without, on the 8 defenses + FedAvg, with a dose-response check:
    python -m experiments.robust_matrix --workdir=/work/runs/robust_pill --config=experiments/configs/robust.py:pill
``pill_cnn``: Pill (ours) nearer the paper's setting: 28x28 digits, the CNN (conv 30, conv 50, fc 100),
cross-silo 10 clients, 20% attackers with the paper's own-updates knowledge, 20 rounds; Pill with
tail='full', fallback='closer', pill_base='benign' (chosen on seed 0; seed 1 is the confirmation run).
Measured 2026-12-02: mean error ratio over the 8 defenses 0.75x (seed 0) and 0.76x (seed 1), detection
bypassed on 4 and 5 of the 6 defenses that flag anyone; the paper reports > 2x:
    python -m experiments.robust_matrix --workdir=/work/runs/robust_pill_cnn_noniid_s0 --config=experiments/configs/robust.py:pill_cnn
    python -m experiments.robust_matrix --workdir=/work/runs/robust_pill_cnn_noniid_s1 --config=experiments/configs/robust.py:pill_cnn --config.seed=1
    python -m experiments.robust_matrix --workdir=/work/runs/robust_pill_cnn_iid_s0 --config=experiments/configs/robust.py:pill_cnn --config.bias=0.1
``paper``: SkyMask's published setting (Fashion-MNIST CNN, 100 clients, 20% attackers,
non-IID bias 0.5, lr 0.5, batch 32, 2000 rounds; needs tfds and a lot of compute).
"""

import ml_collections

ALL_DEFENSES = ("fedavg", "krum", "multikrum", "bulyan", "median", "trimmed_mean", "geomed", "cclip", "fltrust",
                "flame", "foolsgold", "dnc", "skymask")
ALL_ATTACKS = ("none", "gaussian", "sign_flip", "ipm", "lie", "fang_trim", "fang_krum", "min_max", "min_sum",
               "label_flip", "backdoor")
# Pill's eight defenses [our stand-in: FLAME for norm-bounding, whose median-norm clipping it includes]
PILL_DEFENSES = ("krum", "trimmed_mean", "median", "bulyan", "fltrust", "foolsgold", "flame", "dnc")
PILL_ATTACKS = ("sign_flip", "fang_trim", "fang_krum", "min_max")


def _attack_by_defense_only(c: ml_collections.ConfigDict) -> None:
    """No Pill cells and no attacker-fraction sweep: only the attack x defense grid at one fraction."""
    c.pill_attacks = ()
    c.pill_defenses = ()
    c.fractions = ()
    c.sweep_defenses = ()
    c.sweep_attacks = ()


def get_config(preset: str = "quick") -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.preset = preset
    c.seed = 0
    c.dataset = "digits8"
    c.data_dir = ""
    c.num_clients = 20
    c.partition = "fang"          # Fang et al.'s bias assignment (SkyMask's non-IID split)
    c.bias = 0.5
    c.root_size = 100
    c.model = "mlp"
    c.hidden = (32,)
    c.lr = 0.1
    c.batch_size = 10
    c.local_epochs = 1
    c.server_lr = 1.0
    c.rounds = 30
    c.join_ratio = 1.0
    c.knowledge = "benign"
    c.attacker_fraction = 0.2
    c.cclip_tau = 1.0
    # SkyMask's mask step (lr * grad clip 1e-7 per epoch). The repo tunes it per architecture (1e7 CNN/LR,
    # 1e8 ResNet20); 1e6 for the 2,410-parameter digits MLP [our choice: 1e7 saturates the masks, see skymask.py]
    c.skymask_lr = 1e6
    c.pill_search = "max"
    c.pill_norm = 1.0
    c.pill_tail = "unit"              # see jaxlab.fl.robust.pill.pill_mask
    c.pill_fallback = "honest"        # see jaxlab.fl.robust.pill.pill_attack
    c.pill_carrier_mix = 0.5
    c.pill_base = "zero"              # the pill's poison deviates from 0 or from the benign estimate
    c.pill_benign_quantile = 0.05
    c.eval_every = 0
    if preset == "quick":
        c.rounds = 15
        c.defenses = ("fedavg", "median", "fltrust", "skymask")
        c.attacks = ("min_max",)
        _attack_by_defense_only(c)
    elif preset == "matrix":
        c.defenses = ALL_DEFENSES
        c.attacks = ALL_ATTACKS
        c.pill_attacks = PILL_ATTACKS
        c.pill_defenses = PILL_DEFENSES + ("fedavg", "skymask")
        c.fractions = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8)
        c.sweep_defenses = ("fedavg", "krum", "median", "fltrust", "skymask")
        c.sweep_attacks = ("lie", "fang_trim", "fang_krum", "min_max", "min_sum")
    elif preset == "skymask":
        # the SkyMask claim: matrix setting, the five attacks x SkyMask and the baselines it
        # must beat; run once per fraction (--config.attacker_fraction=0.2 or 0.5)
        # "oracle" = FedAvg over the truly benign clients (defenses.oracle_mean), SkyMask's ceiling.
        # 50% attackers, seeds 0 / 1 / 2 (2026-12-03, --config.attacker_fraction=0.5 --config.seed=S, ~3 min each):
        # SkyMask FPR = FNR = 0 under all five attacks and 0.0-0.2 points below the oracle every time; its gap to
        # no-attack FedAvg (92.8 / 94.0 / 93.7) is 3.2 / 4.2 / 1.1 points and the oracle's is 3.0 / 4.0 / 1.1:
        # at 50% the benign half's data alone (Fang's non-IID split) is what costs the 3-4 points, not detection.
        c.defenses = ("fedavg", "krum", "median", "fltrust", "skymask", "oracle")
        c.attacks = ("none", "lie", "fang_trim", "fang_krum", "min_max", "min_sum")
        _attack_by_defense_only(c)
    elif preset == "skymask50":
        # The 50% claim run long enough for the benign half to converge: 100 rounds instead of 30 [our choice;
        # the paper trains for hundreds of rounds]. At 30 rounds the oracle itself sat 3-4 points below
        # no-attack FedAvg (above). 2026-12-05, seeds 0 / 1 / 2 (~2-4 min each):
        #   python -m experiments.robust --workdir=/work/runs/sky50_r100_s0 --config=experiments/configs/robust.py:skymask50 --config.seed=0
        # no-attack FedAvg 96.3 / 95.6 / 97.0; SkyMask 93.5 / 92.6 / 94.4 under each of the five attacks, FPR = FNR = 0,
        # i.e. 2.8 / 3.0 / 2.6 points below (oracle 93.8 / 92.6 / 94.2); Krum and the median fall to 0.2-39.7.
        # FLTrust falls 4.2 / 6.2 / 5.6 points at most under these five; under :skymask_adaptive with the same
        # 100 rounds (--config.attacker_fraction=0.5 --config.rounds=100) 12.0 / 6.5 / 9.1 points (84.3 / 89.1 / 87.9),
        # where SkyMask keeps 92.6-94.4 (seed 0: FPR 11-14%, FNR 11-14%; seeds 1-2 <= 4.5%).
        # The same 100 rounds at 20% attackers keep SkyMask's accuracy within 1.6 points of no-attack FedAvg but
        # not its LIE detection (seeds 0 / 1: LIE FPR 37.9 / 33.1%, FNR 56 / 47%; Min-Sum FNR 15 / 7%): once the
        # model converges, LIE's shift is inside the benign spread of the masks. So the 20% claim is the
        # 30-round :skymask run (FPR = FNR = 0 there) and this preset is only for 50%.
        c.defenses = ("fedavg", "krum", "median", "fltrust", "skymask", "oracle")
        c.attacks = ("none", "lie", "fang_trim", "fang_krum", "min_max", "min_sum")
        # FLTrust's own adaptive attack with root-data knowledge joins the five: the attack the issue's "FLTrust
        # falls by more than 10 points" needs. direction='unit' [our choice, fixed for all seeds]: with Fang's
        # 'sign' direction FLTrust fell 12.0 / 6.5 / 9.1 points over 100 rounds at seeds 0 / 1 / 2, with 'unit'
        # 15.2 / 10.4 / 11.8 (81.1 / 85.2 / 85.2; SkyMask 93.5 / 92.6 / 94.4 there, FPR and FNR <= 1%).
        # This preset, seeds 0 / 1 / 2 (2026-12-05, ~4 min each): summary.json skymask_claim.holds true / false / true;
        # SkyMask 2.77 / 3.01 / 2.55 points below no-attack FedAvg under all six attacks (seed 1 misses by 0.01 point,
        # one test image is 0.23; the oracle is 3.01 below too), max FPR / FNR 1% / 1%, 0 / 0, 0 / 0;
        # max_drop_vs_no_attack_fedavg: FLTrust 15.2 / 10.4 / 11.8, Krum 88.2 / 95.4 / 85.2, median 86.8 / 84.0 / 87.0.
        # Fresh seeds 3 / 4 (2026-12-07, the preset as it stands, incl. the spec's Fang-Krum bound; ~4 min each):
        # holds true / true; SkyMask 0.23 / 1.40 points below no-attack FedAvg (96.98 / 96.51%) under all six
        # attacks, FPR = FNR = 0, equal to the oracle; FLTrust 18.1 / 19.8 points down (adaptive attack), Krum
        # 88.9 / 89.1 (min_sum), median 91.0 (fang_trim) / 86.7 (fang_krum).
        # Fresh seeds 5 / 6 (2026-12-07, same command with --config.seed=5 / 6): holds false / true; SkyMask 3.47 /
        # 1.16 points below no-attack FedAvg (96.06 / 96.76%) under all six attacks, max FPR / FNR 0 / 0 and 1% / 1%;
        # seed 5 misses by 0.47 point with perfect detection (the oracle of truly benign clients is 3.70 below: the
        # benign half's data alone cannot reach no-attack FedAvg there). FLTrust 17.4 / 19.4 points down (adaptive
        # attack), Krum 89.6 (min_sum) / 87.7 (fang_krum), median 85.2 / 86.3 (fang_krum).
        # Over seeds 0-6 the claim holds on 5 of 7; both misses (seeds 1, 5) have FPR = FNR <= 1% and the oracle as low.
        # 150 rounds instead of 100 (2026-12-07, --config.rounds=150, seeds 0-6, ~2 min each): no better. Holds on
        # 4 of 7 (seeds 2 / 3 / 4 / 6: 2.55 / -0.23 / 1.86 / 0.93 points below no-attack FedAvg); misses on seeds
        # 0 / 1 / 5 by 0.002 / 0.47 / 0.24 (3.00 / 3.47 / 3.24 below; oracle 2.54 / 3.70 / 3.24 below); max FPR and
        # FNR 0-6%; FLTrust 11.8-20.1, Krum 85.6-96.3, median 84.3-89.8 points down. The benign half's data, not
        # training length, sets the gap, so the preset stays at 100 rounds.
        c.attacks = c.attacks + ("fltrust_adaptive_root",)
        c.attack_hparams = {"fltrust_adaptive_root": {"direction": "unit"}}
        c.attacker_fraction = 0.5
        c.rounds = 100
        _attack_by_defense_only(c)
    elif preset == "skymask_adaptive":
        c.defenses = ("fedavg", "krum", "median", "fltrust", "skymask")
        c.attacks = ("none", "fltrust_adaptive_root", "fltrust_adaptive")
        # Fang's s = sign of the before-attack aggregate (NDSS'21); 'unit' = the aggregate's direction:
        #   --config.attack_hparams.fltrust_adaptive_root.direction=unit
        c.attack_hparams = {"fltrust_adaptive_root": {"direction": "sign"}, "fltrust_adaptive": {"direction": "sign"}}
        _attack_by_defense_only(c)
    elif preset == "pill":
        # Pill (ours) vs the same attacks without it on the matrix setting, every cell measured in
        # this one run (same code, seed and attacker fraction), plus the no-attack error of each rule
        # and a dose-response of louder pills (pill_norm x the largest benign-looking pill).
        # python -m experiments.robust_matrix --workdir=/work/runs/robust_pill --config=experiments/configs/robust.py:pill
        c.defenses = PILL_DEFENSES + ("fedavg",)
        c.attacks = ("none",) + PILL_ATTACKS
        c.pill_attacks = PILL_ATTACKS
        c.pill_defenses = PILL_DEFENSES + ("fedavg",)
        c.pill_doses = (3.0, 10.0, 30.0)
        c.pill_dose_attacks = ("sign_flip",)
        c.pill_dose_defenses = ("fedavg", "krum", "median", "fltrust")
        c.fractions = ()
        c.sweep_defenses = ()
        c.sweep_attacks = ()
    elif preset == "pill_cnn":
        # Pill nearer the paper's setting: 28x28 digits (MNIST-shaped), a CNN, cross-silo 10 clients,
        # 20% attackers that see only their own honest updates (the paper's knowledge), the four
        # attacks x the eight defenses + FedAvg, with and without Pill; non-IID by default,
        # IID with --config.bias=0.1 (Fang's split with bias 1/C).
        # Dose response (2026-12-03, seed 0, sign_flip, /work/scratch/pilldose*.py calling
        # experiments.robust.run_cell): FedAvg error with no attack 4.2%, sign-flip 8.2%, Pill at
        # pill_norm 1 / 2 / 3 / 5 / 10 / 100 = 3.5 / 4.9 / 6.1 / 22.0 / 90.2 / 90.2%, so the poison that
        # fits inside the benign cosine/distance bounds is 3-5x too small to hurt, while 5-10x wrecks
        # an undefended model. benign_quantile 0.25 / 0.5 at pill_norm 1 gave 4.0 / 4.4% (the bounds
        # widen little). Under the 8 defenses a louder pill still does not raise the error (pill_norm
        # 3 / 5 vs no Pill: Krum 15.7 / 15.7 vs 11.4, trimmed mean 5.1 / 5.1 vs 8.2, median 4.7 / 4.9
        # vs 6.5, Bulyan 5.1 / 5.1 vs 7.5, FLTrust 6.3 / 4.0 vs 5.1, FoolsGold 5.6 / 5.6 vs 5.6,
        # FLAME 4.2 / 5.4 vs 7.0, DnC 6.3 / 5.4 vs 5.6). The coordinate-wise rules drop the pill's
        # out-of-range coordinates; the louder pill's attacker FNR (share of attacker updates not
        # flagged) is FLAME 0.25 / 0.15, DnC 0.10 / 0.03, FLTrust 0.80 / 0.30 (FLTrust rescales every
        # update to the root update's norm, which shrinks a loud pill), Bulyan 0.62 / 0.55, Krum 0 / 0.
        # Longer runs (2026-12-06, seed 0, FedAvg, 100 rounds instead of 20, /work/scratch/pillrounds.py calling
        # experiments.robust.run_cell): no attack 2.8%, sign-flip 90.2%, Pill(sign-flip) 3.0%, Pill(Fang-Trim)
        # 3.0%; with carrier_mix 0 (the whole distance budget left to the pill) and benign_quantile 0.5,
        # Pill(sign-flip) 3.3% (20 rounds, carrier_mix 0, quantile 0.05: sign-flip 3.5%, Fang-Trim 4.0%). The
        # benign-looking pill does not build up over rounds: at this dose its push on the pill coordinates is
        # about what the benign clients' descent takes back each round [our reading, not measured], so the pill units stop
        # learning rather than break.
        # Boundary of the benign range (2026-12-07, seed 0, --config.attacks="('none','sign_flip')"
        # --config.pill_attacks="('sign_flip',)" --config.pill_benign_quantile=1.0, 27 cells, ~8 min): the pill
        # update as far from the benign estimate as the farthest benign update (and as little aligned as the
        # least aligned one) instead of the most typical 5%. Sign-flip error without -> with Pill: Krum 11.4 -> 6.8,
        # trimmed mean 7.9 -> 3.7, median 6.5 -> 4.9, Bulyan 7.5 -> 4.2, FLTrust 5.1 -> 5.1, FoolsGold 5.6 -> 5.6,
        # FLAME 7.0 -> 4.7, DnC 5.8 -> 4.4, FedAvg 8.2 -> 4.2; mean ratio over the 8 defenses 0.73x (0.78x for
        # sign-flip at 0.05 in the full matrix), 5 of the 6 flagging defenses bypassed. Not adopted.
        # Fresh runs with the per-coordinate kept share of the median and trimmed mean (2026-12-07, seeds 0 / 1,
        # the module docstring's commands with workdirs /work/runs/pill_cnn_coord_s0 / _s1, 18 min each): mean error
        # ratio 0.76x / 0.78x; selection-based bypass 4 / 5 of 6 (seed 1 adds DnC); per coordinate the Pill attackers'
        # share inside the averaged window is trimmed mean 50.3 / 54.9% vs honest 62.4 / 61.3%, median 15.3 / 16.2%
        # vs 21.2 / 21.0%, so both pass: 6 / 7 of 8 (defenses_bypassed_of_8_incl_coordinate_wise). The base attacks
        # without Pill pass 5 / 5 of 8 by the same criteria (trimmed mean 51.3 / 55.1%, median 16.9 / 18.3%): with
        # 'own' knowledge they are not extreme in most coordinates either. FoolsGold keeps 0 / 1.2% of Pill's updates.
        # Tail / budget probe (2026-12-07, seed 0, 20 rounds, sign-flip under FedAvg, /work/scratch/pillrounds.py
        # calling experiments.robust.run_cell; no-attack error 4.2%): a pill of one unit per layer (tail 'unit', the
        # distance budget spread over fewer coordinates) with the whole budget (carrier_mix 0) at the median benign
        # distance (benign_quantile 0.5): 3.97%; tail 'unit' at this preset's other settings 3.50%; the same with
        # pill_base 'zero' 3.74%; tail 'full', carrier_mix 0, quantile 0.5: 4.21%. No variant hurts.
        c.dataset = "digits"
        c.model = "cnn"
        c.hidden = (100,)
        c.num_clients = 10
        c.rounds = 20
        c.knowledge = "own"
        c.pill_tail = "full"
        c.pill_fallback = "closer"
        c.pill_base = "benign"
        c.defenses = PILL_DEFENSES + ("fedavg",)
        c.attacks = ("none",) + PILL_ATTACKS
        c.pill_attacks = PILL_ATTACKS
        c.pill_defenses = PILL_DEFENSES + ("fedavg",)
        c.fractions = ()
        c.sweep_defenses = ()
        c.sweep_attacks = ()
    elif preset == "paper":
        c.dataset = "fashion_mnist"
        c.num_clients = 100
        c.model = "cnn"
        c.hidden = (100,)
        c.lr = 0.5
        c.batch_size = 32
        c.skymask_lr = 1e7            # the repo's value for its FMNIST CNN
        c.rounds = 2000
        c.eval_every = 50
        c.defenses = ALL_DEFENSES
        c.attacks = ALL_ATTACKS
        c.pill_attacks = PILL_ATTACKS
        c.pill_defenses = PILL_DEFENSES + ("fedavg", "skymask")
        c.fractions = (0.2, 0.4, 0.6, 0.8)
        c.sweep_defenses = ("fedavg", "krum", "median", "fltrust", "skymask")
        c.sweep_attacks = ("fang_trim", "fang_krum", "min_max", "min_sum")
    else:
        raise ValueError(f"unknown preset {preset!r}: choose 'quick', 'matrix', 'skymask', 'skymask50', "
                         "'skymask_adaptive', 'pill', 'pill_cnn' or 'paper'")
    return c
