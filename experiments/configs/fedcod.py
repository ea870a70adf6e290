"""FedCod presets.  python -m experiments.fedcod --workdir=runs/fedcod --config=experiments/configs/fedcod.py:quick

quick: 4 silos on loopback (token-bucket shaper), 0.6 MB updates, 3 rounds per protocol (~30 s).
paper: 9 silos, each in its own network namespace with htb-shaped links when root (else loopback),
       2.9M-parameter MLP (11.7 MB updates); scenarios: heterogeneous WAN (server 20 Mbit/s per
       client, client-client 50-100 Mbit/s), homogeneous 50 Mbit/s, time-varying trace, a client's
       server link dropping mid-round, a client killed mid-round.
The official code's setting (N=9, upload k=9, r0=9, r_thres=45, r_delta=9, download k=9) is kept.
"""

import ml_collections


def get_config(preset: str = "quick") -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.n_clients = 9
    c.k = 9
    c.hidden = 39000            # digits MLP 64-H-10: 2.9M float32 params = 11.7 MB per update
    c.lr = 0.05
    c.local_epochs = 1
    c.rounds = 5
    c.clip = 1.0                # fixed-point range of an update entry [our choice]
    c.r0 = 9
    c.r_thres = 45
    c.r_delta = 9
    c.download = "recode"       # or "forward" (one-hop)
    c.backend = "auto"          # "netns" (root), "loopback", or "auto"
    c.server_mbit = 20.0
    c.c2c_mbit = (50.0, 100.0)
    c.server_delay_ms = 20.0
    c.c2c_delay_ms = (5.0, 15.0)
    c.homogeneous_mbit = 50.0
    c.homogeneous_delay_ms = 10.0
    c.upload_timeout_s = 20.0
    c.round_timeout_s = 240.0
    c.repair_s = 4.0            # no decode this long after the last TRAIN_DONE -> fresh parity
    c.scenarios = ("wan", "homogeneous", "trace", "link_drop", "kill")
    c.trace_file = ""           # CSV t_s,src,dst,rate_mbit; empty = the built-in fluctuation trace
    c.task = "digits_mlp"       # or "jaxlab_fedavg" (the jaxlab engine's model + local_train)
    if preset == "quick":
        c.n_clients = 4
        c.k = 4
        c.r0 = 4
        c.hidden = 2000         # 0.6 MB updates
        c.rounds = 3
        c.backend = "loopback"
        c.scenarios = ("wan",)
        c.upload_timeout_s = 10.0
        c.repair_s = 2.0
    elif preset != "paper":
        raise ValueError(f"unknown preset {preset!r}; use 'quick' or 'paper'")
    return c
