"""Devices and the cost model Chrion's partitioner and simulator read.

Devices. Index 0 is always the host CPU (graph inputs arrive there). On a machine with a GPU the
accelerator is ``jax.devices('gpu')[0]`` with real profiles. Without one, a second XLA host
device (``XLA_FLAGS=--xla_force_host_platform_device_count=2`` set before jax is imported)
stands in for the GPU as an **emulated accelerator**: it computes every operator for real on that
host device, and its time is ``max(real, floor)`` with the speed model
``floor(op) = launch_s + speed_factor * (measured compute of op)`` enforced by sleeping
[our choice: per-timestep GPU kernels are launch-bound, so a fixed launch cost dominates tiny
operators]. An emulation cannot run faster than the core that hosts it, so for large operators the
emulated accelerator is never faster than this CPU; every output built on it says "emulated".

Costs (seconds, bytes):
  op_time[i, d]   = effective time of op i as one dispatch on device d (median over repeats)
  op_compute[i, d]= real measured time on d minus the fixed dispatch overhead (>= 0)
  op_std[i, d]    = robust std (1.4826 * MAD) of the measured times
  floor[i, d]     = emulated floor (0 on real devices)
  dispatch_s[d]   = measured time of a trivial jitted call on d
  alpha[a, b], beta[a, b]: transfer a->b costs alpha + bytes / beta (0 when a == b), fitted from
                    measured device_put copies (on an emulated link, the slower of the fit and the
                    PCIe-like model ``link_alpha_s``/``link_beta_Bps`` [our choice]).
A fused segment of ops S on device d costs ``max(dispatch_s[d] + sum op_compute[S, d], sum floor[S, d])``
[our choice: fusion removes all but one dispatch].
"""

from __future__ import annotations

from typing import Any, NamedTuple, Sequence

import numpy as np

__all__ = ["DeviceSpec", "CostModel", "available_devices", "cpu_core_devices", "edge_cost", "segment_time",
           "host_device_count_flag"]


def host_device_count_flag(n: int = 2) -> str:
    """The XLA flag that gives ``n`` CPU devices; must be in XLA_FLAGS before jax is imported."""
    return f"--xla_force_host_platform_device_count={int(n)}"


class DeviceSpec(NamedTuple):
    name: str          # "cpu", "gpu" or "gpu(emulated)"
    device: Any        # the jax.Device
    kind: str          # "cpu" | "accelerator"
    emulated: bool = False
    launch_s: float = 0.0
    speed_factor: float = 1.0
    link_alpha_s: float = 0.0
    link_beta_Bps: float = float("inf")


def available_devices(emulate_accelerator: bool = True, launch_s: float = 30e-6, speed_factor: float = 0.25,
                      link_alpha_s: float = 10e-6, link_beta_Bps: float = 12e9) -> list:
    """[cpu, accelerator] where possible: a real GPU if jax has one, else a second host device as an
    emulated accelerator (needs ``host_device_count_flag(2)`` in XLA_FLAGS before importing jax),
    else just [cpu]."""
    import jax
    cpus = jax.devices("cpu")
    cpu = DeviceSpec("cpu", cpus[0], "cpu")
    try:
        gpus = jax.devices("gpu")
    except RuntimeError:
        gpus = []
    if gpus:
        return [cpu, DeviceSpec("gpu", gpus[0], "accelerator")]
    if emulate_accelerator and len(cpus) >= 2:
        return [cpu, DeviceSpec("gpu(emulated)", cpus[1], "accelerator", True, float(launch_s), float(speed_factor),
                                float(link_alpha_s), float(link_beta_Bps))]
    return [cpu]


def cpu_core_devices(n: int = 2) -> list:
    """``n`` real XLA host devices as separate CPU workers (needs ``host_device_count_flag(n)`` in
    XLA_FLAGS before importing jax): Chrion's partitioner and engine over the cores of one CPU.

    XLA:CPU runs a small RNN recurrence (a matrix-vector product per step) on a single core
    (measured: process CPU time / wall time = 1.00 for a ``lax.scan`` LSTM at hidden 256; from
    hidden 512 its thread pool splits each step's product, CPU / wall 1.9 and 1.7-1.9x faster than
    pinned to one core, re-measured 2026-12-02), so a single XLA device leaves the other cores idle
    on small models; separate host devices driven by one worker
    thread each run independent operators (directions, the layer x time wavefront) concurrently
    [our choice: the CPU-side analogue of Chrion's CPU+GPU split; nothing here is emulated].

    Tried and dropped (measured on this project's 2-core VM, 2026-12-02): one jitted
    ``shard_map`` program over the host devices instead of a worker per device, with a
    bidirectional node split by direction (one ``all_gather`` per node) or a chain of
    unidirectional layers pipelined over time chunks (one ``ppermute`` per chunk). It matched
    ORT's outputs but ran 1.3-2.1x slower than the single-device scan on every model tried
    (LSTM/GRU, hidden 256-1024, 1-4 layers): even the same program replicated on both devices,
    with no collective at all, took 1.4-1.9x one device's time, and a collective between busy
    cores costs ~20 us, so a per-step split of the hidden units (what ORT's threads do) lost too."""
    import jax
    cpus = jax.devices("cpu")
    if n < 1:
        raise ValueError(f"n={n}: need at least one CPU device")
    if len(cpus) < n:
        raise ValueError(f"{n} CPU devices requested but jax has {len(cpus)}: set XLA_FLAGS="
                         f"{host_device_count_flag(n)} before importing jax")
    return [DeviceSpec(f"cpu{i}", cpus[i], "cpu") for i in range(n)]


class CostModel(NamedTuple):
    op_time: np.ndarray      # [n_ops, n_dev] seconds
    op_compute: np.ndarray   # [n_ops, n_dev] seconds
    op_std: np.ndarray       # [n_ops, n_dev] seconds
    floor: np.ndarray        # [n_ops, n_dev] seconds
    dispatch_s: np.ndarray   # [n_dev] seconds
    alpha: np.ndarray        # [n_dev, n_dev] seconds
    beta: np.ndarray         # [n_dev, n_dev] bytes / second
    device_names: tuple
    emulated: tuple          # [n_dev] bool
    seg_fixed: np.ndarray | None = None    # [n_dev] seconds per fused dispatch
    seg_per_arg: np.ndarray | None = None  # [n_dev] seconds per argument/result buffer
    seg_scale: np.ndarray | None = None    # [n_dev] fused compute / sum of per-op compute

    @property
    def n_devices(self) -> int:
        return self.op_time.shape[1]

    def describe(self) -> str:
        parts = []
        for d, n in enumerate(self.device_names):
            parts.append(f"{n}{' [emulated]' if self.emulated[d] else ''}: dispatch {self.dispatch_s[d] * 1e6:.1f} us")
        if self.n_devices > 1:
            parts.append(f"link 0->1 alpha {self.alpha[0, 1] * 1e6:.1f} us, beta {self.beta[0, 1] / 1e9:.2f} GB/s")
        return "; ".join(parts)


def edge_cost(cm: CostModel, nbytes: float, src: int, dst: int) -> float:
    """Seconds to move ``nbytes`` from device src to dst (0 on the same device)."""
    if src == dst or nbytes <= 0:
        return 0.0
    return float(cm.alpha[src, dst] + nbytes / cm.beta[src, dst])


def segment_time(cm: CostModel, ops: Sequence[int], device: int, n_args: int | None = None) -> float:
    """Seconds for one fused dispatch of ``ops`` on ``device``.

    With a fusion calibration (``profiler.calibrate_fusion``):
    ``seg_fixed + seg_per_arg * n_args + seg_scale * sum op_compute`` (a single op keeps its
    measured time); without: ``dispatch + sum op_compute``. The emulated floor applies on top.
    """
    ops = list(ops)
    compute = float(np.sum(cm.op_compute[ops, device]))
    if len(ops) == 1:
        real = cm.dispatch_s[device] + compute   # the op's own measured time
    elif cm.seg_fixed is not None and n_args is not None:
        real = cm.seg_fixed[device] + cm.seg_per_arg[device] * n_args + cm.seg_scale[device] * compute
    else:
        real = cm.dispatch_s[device] + compute
    return float(max(real, np.sum(cm.floor[ops, device])))
