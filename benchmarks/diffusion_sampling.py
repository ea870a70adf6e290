"""Sampling cost of a BNN-fine-tuned UNet (posterior mean weights) vs the base model.

python -m benchmarks.diffusion_sampling [--batch 64] [--steps 50] [--repeats 7]

The BNN's inference rule (arXiv 2405.19931: sample with sigma reset to 0) is ``post.mean(state)``:
a params tree with the base model's structure, so the same compiled sampler runs it. This prints the
best-of-N and median wall time of DDIM sampling for the base params, the mean-field BNN mean and the Bayesian-LoRA
merged mean, measured interleaved in one process, and their ratios to the base (1.00 = same cost).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxlab.diffusion import bnn, ddpm, fewshot
from jaxlab.diffusion.unet import UNet2DModel, count_params


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--repeats", type=int, default=15)
    args = ap.parse_args(argv)
    print("command:", " ".join([os.path.basename(sys.executable), "-m", "benchmarks.diffusion_sampling"] + (argv or sys.argv[1:])))
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, jax {jax.__version__} "
          f"{jax.default_backend()}, load avg {os.getloadavg()[0]:.1f}")
    model = UNet2DModel(fewshot.small_unet_config(8))
    sched = ddpm.linear_schedule(1000)
    labels = jnp.full((args.batch,), 9, jnp.int32)
    base = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 1)), jnp.zeros((1,)), labels[:1])["params"]
    mf = bnn.mean_field(bnn.bayesian_mask(base), init_sigma=0.01)
    st = mf.init(base)
    # perturb mu as fine-tuning would, so no path can shortcut to the pretrained arrays
    st["mu"] = jax.tree_util.tree_map(lambda x: x + 1e-3, st["mu"])
    lo = bnn.lora(bnn.bayesian_mask(base, bnn.LORA_INCLUDE), rank=4)
    lst = lo.init(base, jax.random.PRNGKey(1))
    variants = {"base": base, "bnn_mean": mf.mean(st), "bnn_lora_merged": lo.mean(lst)}
    print(f"UNet params {count_params(base)}; Bayesian leaves {bnn.count_selected(bnn.bayesian_mask(base), base)} scalars")
    key = jax.random.PRNGKey(2)
    for p in variants.values():  # compile (one compiled sampler serves all: same shapes)
        fewshot.sample(model, p, sched, labels, key, num_steps=args.steps).block_until_ready()
    times = {k: [] for k in variants}
    for _ in range(args.repeats):
        for k, p in variants.items():
            t0 = time.perf_counter()
            fewshot.sample(model, p, sched, labels, key, num_steps=args.steps).block_until_ready()
            times[k].append(time.perf_counter() - t0)
    best = {k: float(np.min(v)) for k, v in times.items()}
    med = {k: float(np.median(v)) for k, v in times.items()}
    print(f"DDIM {args.steps} steps, batch {args.batch}, {args.repeats} interleaved runs each "
          "(best-of-N is the headline: on a shared CPU the median mostly measures other jobs):")
    for k in variants:
        print(f"  {k:16s} best {best[k] * 1e3:8.1f} ms  ratio {best[k] / best['base']:.3f}   |  median "
              f"{med[k] * 1e3:8.1f} ms  ratio {med[k] / med['base']:.3f}")
    # the stronger statement: the three param trees compile to the very same program
    eps_fn = fewshot.eps_fn_for(model)
    hlo = {k: jax.jit(lambda p: ddpm.ddim_sample(eps_fn, p, sched, (args.batch, 8, 8, 1), key, labels,
                                                 num_steps=args.steps)).lower(p).as_text()
           for k, p in variants.items()}
    print("identical compiled sampler (HLO text) for base / bnn_mean / bnn_lora_merged:",
          len(set(hlo.values())) == 1)
    return best


if __name__ == "__main__":
    main()
