"""Presets for experiments/chrion.py (Chrion: CPU+accelerator collaborative RNN inference).

    python -m experiments.chrion --workdir=runs/chrion --config=experiments/configs/chrion.py:quick
    python -m experiments.chrion --workdir=runs/chrion_paper --config=experiments/configs/chrion.py:paper

``quick``: one small bidirectional LSTM and one GRU (tour and tests, ~1-2 min on 2 shared cores).
``paper``: the spec's grid (LSTM/GRU, hidden 256-1024, 2-4 layers, uni/bi, T 16-64). Without a GPU
the accelerator is a second XLA host device with the emulated speed model below: every output
says "emulated". On a GPU machine the same code profiles jax.devices('gpu')[0] for real.
"""

import ml_collections


def _model(cell, hidden, layers, bidirectional, seq_len, batch=1, input_size=None):
    return {"cell": cell, "hidden": hidden, "layers": layers, "bidirectional": bidirectional,
            "seq_len": seq_len, "batch": batch, "input_size": input_size or hidden}


def get_config(preset: str = "quick") -> ml_collections.ConfigDict:
    if preset not in ("quick", "paper"):
        raise ValueError(f"unknown preset {preset!r}: use 'quick' or 'paper'")
    c = ml_collections.ConfigDict()
    c.preset = preset
    c.seed = 0
    c.host_devices = 2              # XLA host devices when no GPU (device 1 = emulated accelerator)
    # Emulated accelerator speed model [our choice]: floor = launch_s + speed_factor * CPU compute.
    c.emulate = ml_collections.ConfigDict(dict(launch_s=30e-6, speed_factor=0.25,
                                               link_alpha_s=10e-6, link_beta_Bps=12e9))
    c.profile_repeats = 10
    c.calibration_max_ops = 24
    c.calibration_samples = 6
    c.search_time_s = 6.0
    c.search_evals = 1500
    c.runs = 15                     # requests per plan for p50/p99 (interleaved across plans)
    c.slo_scale = 1.0               # SLO = slo_scale * accelerator-only predicted latency [our choice]
    c.k_sigma = 1.0                 # a plan meets the SLO when mean + k_sigma * std <= SLO
    c.poisson_requests = 30
    c.poisson_load = 0.6            # arrival rate = load / (measured p50 of the latency-optimal plan)
    c.exact = ml_collections.ConfigDict(dict(random_graphs=6, nodes=9, time_limit_s=30.0,
                                             model_seq_len=2, model_hidden=8))
    if preset == "quick":
        c.search_time_s = 3.0
        c.calibration_max_ops = 12
        c.calibration_samples = 4
        c.profile_repeats = 7
        c.runs = 12
        c.exact.random_graphs = 4
        c.models = [_model("LSTM", 256, 2, True, 16, batch=1), _model("GRU", 256, 2, False, 16, batch=1)]
    else:
        c.models = [_model(cell, h, l, bi, t)
                    for cell in ("LSTM", "GRU") for h in (256, 512, 1024) for l in (2, 4)
                    for bi in (False, True) for t in (16, 64)]
        c.profile_repeats = 20
        c.runs = 50
        c.search_time_s = 60.0
        c.search_evals = 20000
        c.poisson_requests = 200
        c.calibration_max_ops = 48
    return c
