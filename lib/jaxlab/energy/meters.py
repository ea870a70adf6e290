"""Energy and time meters behind one small protocol, detected at run time.

A :class:`Meter` is a record of pure-ish functions (optax style)::

    Meter(name, quantity, start, stop, simulate)
      start()            -> token         # reads the counters / clock now
      stop(token)        -> Measurement   # joules and seconds since ``start``
      simulate(layers)   -> Measurement   # only the ``simulated`` meter: cost of one training
                                          # iteration from an analytic device model; None otherwise

``quantity`` names what the meter really measures: ``"joules"`` (RAPL, NVML, Jetson, Android,
simulated) or ``"seconds"`` (wall clock; its ``joules`` are NaN, it is a *time* meter, not an
energy proxy).

Meters here:

* ``wallclock``  -- ``time.perf_counter``; use :func:`measure_iterations` (one step) or
  :func:`measure_interleaved` (several steps, windows interleaved) for warm-up,
  ``block_until_ready`` and medians over repeated windows.
* ``cputime``    -- process CPU time (``time.process_time``): time the process actually ran,
  robust to other jobs on a shared CPU (wall time is not).
* ``rapl``       -- Linux powercap sysfs (``/sys/class/powercap/intel-rapl*``): package + DRAM
  zones, ``energy_uj`` in microjoules, wraparound at ``max_energy_range_uj``. Since the PLATYPUS
  fix (CVE-2020-8694) ``energy_uj`` is readable by root only; the error says so.
* ``nvml``       -- ``nvmlDeviceGetTotalEnergyConsumption`` (millijoules since driver load,
  Volta or newer) through ``nvidia-ml-py`` (imported lazily). Counters update every 20-100 ms,
  so use windows of seconds.
* ``jetson``     -- INA3221 rails in sysfs: hwmon layout ``in<N>_input`` (mV) and
  ``curr<N>_input`` (mA), or the older ``ina3221x`` layout ``in_voltage<N>_input`` (mV),
  ``in_current<N>_input`` (mA). Power is sampled by a thread and integrated (trapezoid).
* ``android``    -- battery ``current_now`` (uA) and ``voltage_now`` (uV) read over ``adb shell``,
  sampled and integrated as |V*I|. Keep the phone unplugged, or the charger feeds the load.
* ``simulated``  -- :class:`DeviceModel`, a documented analytic model (see its docstring) with a
  tunable non-additive interaction between adjacent layers and multiplicative noise: the ground
  truth that tests THOR's subtraction, GP, active learning and pruning deterministically.

``detect_meters()`` lists what works on this machine; ``get_meter(name)`` builds one or raises
:class:`MeterUnavailableError` naming the missing sensor and the meters that do work here.
"""

from __future__ import annotations

import glob
import math
import os
import statistics
import subprocess
import threading
import time
from typing import Any, Callable, NamedTuple, Sequence

import numpy as np

__all__ = [
    "Measurement", "Meter", "MeterUnavailableError", "DeviceModel", "LayerCost",
    "wallclock_meter", "cputime_meter", "rapl_meter", "nvml_meter", "jetson_meter", "android_meter", "simulated_meter",
    "measure_iterations", "measure_interleaved", "detect_meters", "get_meter", "METER_NAMES",
    "rapl_zones", "rapl_delta_uj", "read_jetson_power_w", "parse_android_power_w", "integrate_power",
]

METER_NAMES = ("wallclock", "cputime", "rapl", "nvml", "jetson", "android", "simulated")


class Measurement(NamedTuple):
    """Energy and time of one window (or per iteration, after :func:`measure_iterations`).

    joules: energy in J (NaN for a time-only meter); seconds: wall time in s.
    """

    joules: float
    seconds: float

    def value(self, quantity: str) -> float:
        if quantity not in ("joules", "seconds"):
            raise ValueError(f"quantity={quantity!r}: use 'joules' or 'seconds'")
        return float(getattr(self, quantity))


class Meter(NamedTuple):
    name: str
    quantity: str  # "joules" or "seconds": what this meter truly measures
    start: Callable[[], Any]
    stop: Callable[[Any], Measurement]
    simulate: Callable[[Sequence["LayerCost"]], Measurement] | None = None


class MeterUnavailableError(RuntimeError):
    """A meter's sensor is missing or unreadable; the message names the fix and what works here."""


# ---------------------------------------------------------------------------------------------
# Wall clock
# ---------------------------------------------------------------------------------------------
def wallclock_meter() -> Meter:
    """Time-only meter (``perf_counter``); joules are NaN. Validates *time* additivity, not energy."""

    def start():
        return time.perf_counter()

    def stop(t0):
        return Measurement(float("nan"), time.perf_counter() - t0)

    return Meter("wallclock", "seconds", start, stop)


def cputime_meter() -> Meter:
    """Process CPU time (user + system, all threads) as a time meter; joules are NaN.

    On a machine shared with other jobs, wall time includes the time this process waited for a
    core; CPU time counts only the time it ran, so it is far more repeatable (it still includes
    cache and memory-bandwidth interference, and counts spinning worker threads).
    """

    def start():
        return (time.process_time(), time.perf_counter())

    def stop(token):
        c0, _ = token
        return Measurement(float("nan"), time.process_time() - c0)

    return Meter("cputime", "seconds", start, stop)


def _block(x):
    import jax

    return jax.block_until_ready(x)


def measure_iterations(meter: Meter, step: Callable[[Any], Any], state: Any, *, warmup: int = 2,
                       windows: int = 5, min_window_s: float = 0.05, max_iters: int = 10_000,
                       stats: dict | None = None) -> Measurement:
    """Per-iteration cost of ``state = step(state)``: median over ``windows`` timed windows.

    step: a (jitted) function returning the next state; it is called ``warmup`` times first so
    compilation and first-touch costs are excluded. Each window runs ``n`` iterations back to back
    (asynchronous dispatch pipelines them, as in a training loop) and blocks on the result before
    the meter stops, so the window covers the device work. ``n`` is calibrated so that a window
    lasts at least ``min_window_s`` (counters such as NVML update only every 20-100 ms; the
    wall clock needs windows well above timer and scheduler jitter on a shared CPU).
    Returns ``Measurement(joules/iter, seconds/iter)`` (medians over windows). When ``stats`` is a
    dict, it receives ``iters``, ``windows_s`` (per-iteration seconds of each window) and
    ``rel_spread`` ((max - min) / median), the noise figure we report.
    """
    if windows < 1 or warmup < 0:
        raise ValueError(f"windows={windows}, warmup={warmup}: need windows >= 1 and warmup >= 0")
    for _ in range(max(warmup, 1)):
        state = step(state)
    _block(state)
    # Calibrate the iteration count on one timed iteration (after warm-up).
    t0 = time.perf_counter()
    state = _block(step(state))
    one = max(time.perf_counter() - t0, 1e-7)
    n = int(min(max_iters, max(1, math.ceil(min_window_s / one))))
    joules, secs = [], []
    for _ in range(windows):
        token = meter.start()
        for _ in range(n):
            state = step(state)
        _block(state)
        m = meter.stop(token)
        joules.append(m.joules / n)
        secs.append(m.seconds / n)
    med_s = statistics.median(secs)
    med_j = statistics.median(joules) if not any(math.isnan(j) for j in joules) else float("nan")
    if stats is not None:
        stats.update(iters=n, windows_s=secs, rel_spread=(max(secs) - min(secs)) / med_s if med_s > 0 else 0.0)
    return Measurement(med_j, med_s)


def measure_interleaved(meter: Meter, steps: Sequence[Callable[[Any], Any]], states: Sequence[Any], *,
                        warmup: int = 2, windows: int = 9, min_window_s: float = 0.02, max_iters: int = 10_000,
                        stats: list | None = None) -> list[Measurement]:
    """Like :func:`measure_iterations` for several steps, with their windows interleaved.

    Round r times one window of every step in turn, so a burst of load from other processes on
    a shared machine lands on all of them alike instead of inflating one; each step's result is
    the median of its windows. This matters for THOR's subtraction, where the per-layer cost is
    the difference of two variants' medians. ``stats`` (a list) receives one dict per step with
    ``iters``, ``windows_s``, ``rel_spread`` and the same for the process CPU time of each window
    (``cpu_windows_s``, ``cpu_seconds`` = median, ``cpu_rel_spread``): on a CPU shared with other
    jobs, wall time includes time spent descheduled, CPU time (all threads of this process)
    does not.
    """
    if len(steps) != len(states):
        raise ValueError(f"{len(steps)} steps but {len(states)} states")
    if windows < 1 or warmup < 0:
        raise ValueError(f"windows={windows}, warmup={warmup}: need windows >= 1 and warmup >= 0")
    states = list(states)
    iters = []
    for k, step in enumerate(steps):
        for _ in range(max(warmup, 1)):
            states[k] = step(states[k])
        _block(states[k])
        t0 = time.perf_counter()
        states[k] = _block(step(states[k]))
        one = max(time.perf_counter() - t0, 1e-7)
        iters.append(int(min(max_iters, max(1, math.ceil(min_window_s / one)))))
    joules = [[] for _ in steps]
    secs = [[] for _ in steps]
    cpu = [[] for _ in steps]
    for _ in range(windows):
        for k, step in enumerate(steps):
            n = iters[k]
            c0 = time.process_time()
            token = meter.start()
            st = states[k]
            for _ in range(n):
                st = step(st)
            _block(st)
            m = meter.stop(token)
            cpu[k].append((time.process_time() - c0) / n)
            states[k] = st
            joules[k].append(m.joules / n)
            secs[k].append(m.seconds / n)
    out = []
    for k in range(len(steps)):
        med_s = statistics.median(secs[k])
        med_j = float("nan") if any(math.isnan(j) for j in joules[k]) else statistics.median(joules[k])
        out.append(Measurement(med_j, med_s))
        if stats is not None:
            med_c = statistics.median(cpu[k])
            stats.append({"iters": iters[k], "windows_s": secs[k], "cpu_windows_s": cpu[k], "cpu_seconds": med_c,
                          "rel_spread": (max(secs[k]) - min(secs[k])) / med_s if med_s > 0 else 0.0,
                          "cpu_rel_spread": (max(cpu[k]) - min(cpu[k])) / med_c if med_c > 0 else 0.0})
    return out


# ---------------------------------------------------------------------------------------------
# RAPL (Linux powercap)
# ---------------------------------------------------------------------------------------------
RAPL_ROOT = "/sys/class/powercap"


def _read_text(path: str) -> str:
    with open(path) as f:
        return f.read().strip()


def rapl_zones(root: str = RAPL_ROOT) -> list[dict]:
    """Package and DRAM zones under ``root``: ``[{path, name, max_uj}]``.

    Counted: every top-level ``intel-rapl:<i>`` package zone and every zone named ``dram`` (a
    sub-zone ``intel-rapl:<i>:<j>`` on most servers, a top-level zone on some). ``core``/``uncore``
    sub-zones are inside the package counter and are skipped to avoid double counting.
    """
    zones = []
    for path in sorted(glob.glob(os.path.join(root, "intel-rapl:*"))):
        name_file = os.path.join(path, "name")
        if not os.path.exists(name_file):
            continue
        name = _read_text(name_file)
        top_level = os.path.basename(path).count(":") == 1
        if (top_level and name.startswith("package")) or name == "dram":
            zones.append({"path": path, "name": name,
                          "max_uj": int(_read_text(os.path.join(path, "max_energy_range_uj")))})
    return zones


def rapl_delta_uj(start_uj: int, end_uj: int, max_uj: int) -> int:
    """Energy between two ``energy_uj`` readings; one wraparound at ``max_energy_range_uj``.

    The counter counts up to ``max_uj`` and restarts at 0, so a smaller end reading means it
    wrapped once: delta = end + max - start (the convention of Zeus and the kernel docs). Windows
    longer than one wrap period (minutes on most CPUs) must be split by the caller.
    """
    if not (0 <= start_uj <= max_uj and 0 <= end_uj <= max_uj):
        raise ValueError(f"RAPL readings {start_uj}, {end_uj} outside [0, max_energy_range_uj={max_uj}]")
    return end_uj - start_uj if end_uj >= start_uj else end_uj + max_uj - start_uj


def _read_energy_uj(zone: dict) -> int:
    path = os.path.join(zone["path"], "energy_uj")
    try:
        return int(_read_text(path))
    except PermissionError as e:
        raise MeterUnavailableError(
            f"RAPL: cannot read {path} (permission denied). Since the PLATYPUS fix (CVE-2020-8694) "
            "energy_uj is readable by root only: run as root, or grant read access with "
            f"`sudo chmod o+r {os.path.dirname(os.path.dirname(path))}/intel-rapl:*/energy_uj "
            f"{os.path.dirname(os.path.dirname(path))}/intel-rapl:*/*/energy_uj`.") from e


def rapl_meter(root: str = RAPL_ROOT) -> Meter:
    """CPU package + DRAM energy from powercap sysfs under ``root`` (injectable for tests)."""
    if not os.path.isdir(root) or not rapl_zones(root):
        raise MeterUnavailableError(
            f"RAPL: no powercap package zones under {root} (this kernel/VM exposes no intel-rapl "
            "interface; cloud VMs usually do not).")
    zones = rapl_zones(root)
    for z in zones:  # fail at construction, not mid-run, if the counters are root-only
        _read_energy_uj(z)

    def start():
        return (time.perf_counter(), [_read_energy_uj(z) for z in zones])

    def stop(token):
        t0, e0 = token
        e1 = [_read_energy_uj(z) for z in zones]
        uj = sum(rapl_delta_uj(a, b, z["max_uj"]) for a, b, z in zip(e0, e1, zones))
        return Measurement(uj * 1e-6, time.perf_counter() - t0)

    return Meter("rapl", "joules", start, stop)


# ---------------------------------------------------------------------------------------------
# NVML
# ---------------------------------------------------------------------------------------------
def _import_nvml():
    try:
        import pynvml  # provided by the nvidia-ml-py package
    except ImportError as e:
        raise MeterUnavailableError(
            "NVML: the Python bindings are not installed (`pip install nvidia-ml-py`), and an NVIDIA "
            "driver plus a Volta-or-newer GPU are needed for the total-energy counter.") from e
    return pynvml


def nvml_meter(device_index: int = 0, nvml: Any = None) -> Meter:
    """GPU energy from ``nvmlDeviceGetTotalEnergyConsumption`` (mJ). ``nvml`` injectable for tests."""
    nv = nvml if nvml is not None else _import_nvml()
    try:
        nv.nvmlInit()
        handle = nv.nvmlDeviceGetHandleByIndex(device_index)
        nv.nvmlDeviceGetTotalEnergyConsumption(handle)
    except MeterUnavailableError:
        raise
    except Exception as e:  # NVMLError_* (no driver, no GPU, counter not supported)
        raise MeterUnavailableError(
            f"NVML: cannot read the total-energy counter of GPU {device_index} ({type(e).__name__}: {e}); "
            "needs an NVIDIA driver and a Volta-or-newer GPU.") from e

    def start():
        return (time.perf_counter(), int(nv.nvmlDeviceGetTotalEnergyConsumption(handle)))

    def stop(token):
        t0, mj0 = token
        mj1 = int(nv.nvmlDeviceGetTotalEnergyConsumption(handle))
        return Measurement((mj1 - mj0) * 1e-3, time.perf_counter() - t0)

    return Meter("nvml", "joules", start, stop)


# ---------------------------------------------------------------------------------------------
# Sampled power meters (Jetson INA3221, Android battery)
# ---------------------------------------------------------------------------------------------
def integrate_power(times_s: Sequence[float], watts: Sequence[float]) -> float:
    """Trapezoid integral of power samples: joules. times_s: [n] increasing seconds; watts: [n]."""
    t = np.asarray(times_s, dtype=np.float64)
    w = np.asarray(watts, dtype=np.float64)
    if t.shape != w.shape or t.ndim != 1:
        raise ValueError(f"times_s {t.shape} and watts {w.shape} must be equal-length 1-D sequences")
    if t.size < 2:
        return 0.0
    if np.any(np.diff(t) < 0):
        raise ValueError("times_s must be non-decreasing")
    return float(np.sum(0.5 * (w[1:] + w[:-1]) * np.diff(t)))


def _sampled_meter(name: str, read_w: Callable[[], float], period_s: float,
                   clock: Callable[[], float] = time.perf_counter) -> Meter:
    """A meter that samples ``read_w()`` (watts) every ``period_s`` on a thread and integrates."""

    def start():
        samples: list[tuple[float, float]] = [(clock(), read_w())]
        stop_event = threading.Event()

        def loop():
            while not stop_event.wait(period_s):
                samples.append((clock(), read_w()))

        th = threading.Thread(target=loop, daemon=True)
        th.start()
        return samples, stop_event, th

    def stop(token):
        samples, stop_event, th = token
        stop_event.set()
        th.join()
        samples.append((clock(), read_w()))
        ts, ws = zip(*samples)
        return Measurement(integrate_power(ts, ws), ts[-1] - ts[0])

    return Meter(name, "joules", start, stop)


JETSON_ROOTS = ("/sys/bus/i2c/drivers/ina3221", "/sys/bus/i2c/drivers/ina3221x")


def _jetson_rails(root: str) -> list[tuple[str, str, str]]:
    """(label, voltage file [mV], current file [mA]) for every INA3221 rail under ``root``."""
    rails = []
    # Upstream hwmon layout: <dev>/hwmon/hwmon*/in<N>_input (mV), curr<N>_input (mA), in<N>_label.
    for v in sorted(glob.glob(os.path.join(root, "*", "hwmon", "hwmon*", "in*_input"))):
        n = os.path.basename(v)[2:-len("_input")]
        c = os.path.join(os.path.dirname(v), f"curr{n}_input")
        if n.isdigit() and os.path.exists(c):
            lab = os.path.join(os.path.dirname(v), f"in{n}_label")
            rails.append((_read_text(lab) if os.path.exists(lab) else f"in{n}", v, c))
    # Older L4T ina3221x layout: <dev>/iio:device*/in_voltage<N>_input (mV), in_current<N>_input (mA).
    for v in sorted(glob.glob(os.path.join(root, "*", "iio:device*", "in_voltage*_input"))):
        n = os.path.basename(v)[len("in_voltage"):-len("_input")]
        c = os.path.join(os.path.dirname(v), f"in_current{n}_input")
        if n.isdigit() and os.path.exists(c):
            lab = os.path.join(os.path.dirname(v), f"rail_name_{n}")
            rails.append((_read_text(lab) if os.path.exists(lab) else f"rail{n}", v, c))
    return rails


def read_jetson_power_w(root: str, rails: Sequence[str] | None = None) -> dict[str, float]:
    """Instantaneous power per INA3221 rail in watts: V[mV] * I[mA] * 1e-6."""
    found = _jetson_rails(root)
    if rails is not None:
        found = [r for r in found if r[0] in rails]
    if not found:
        raise MeterUnavailableError(f"Jetson: no INA3221 rails (in*_input/curr*_input) under {root}")
    return {lab: int(_read_text(v)) * int(_read_text(c)) * 1e-6 for lab, v, c in found}


def jetson_meter(root: str | None = None, rails: Sequence[str] | None = None, period_s: float = 0.05) -> Meter:
    """Board energy from INA3221 rails (sum of ``rails``, default all) sampled every ``period_s``."""
    roots = [root] if root is not None else [r for r in JETSON_ROOTS if os.path.isdir(r)]
    for r in roots:
        if _jetson_rails(r):
            read_jetson_power_w(r, rails)  # validates the rail names now
            return _sampled_meter("jetson", lambda r=r: sum(read_jetson_power_w(r, rails).values()), period_s)
    raise MeterUnavailableError(
        f"Jetson: no INA3221 power monitor under {root or ' or '.join(JETSON_ROOTS)} (not a Jetson board).")


ANDROID_SYSFS = "/sys/class/power_supply/battery"


def parse_android_power_w(text: str) -> float:
    """Battery power in watts from ``cat current_now voltage_now`` output (uA then uV, one per line).

    The sign of ``current_now`` differs between vendors (negative while discharging on many), so
    the magnitude |I * V| is used.
    """
    vals = [v for v in text.split() if v]
    if len(vals) != 2:
        raise ValueError(f"android battery output {text!r}: expected two integers (current_now uA, voltage_now uV)")
    try:
        ua, uv = int(vals[0]), int(vals[1])
    except ValueError as e:
        raise ValueError(f"android battery output {text!r}: not integers") from e
    return abs(ua * 1e-6 * uv * 1e-6)


def _adb_runner(args: Sequence[str]) -> str:
    try:
        out = subprocess.run(["adb", *args], capture_output=True, text=True, timeout=10)
    except FileNotFoundError as e:
        raise MeterUnavailableError("Android: `adb` is not installed or not on PATH (apt install adb).") from e
    if out.returncode != 0:
        raise MeterUnavailableError(f"Android: `adb {' '.join(args)}` failed: {out.stderr.strip() or out.stdout.strip()}")
    return out.stdout


def android_meter(serial: str | None = None, runner: Callable[[Sequence[str]], str] | None = None,
                  period_s: float = 0.2, sysfs: str = ANDROID_SYSFS) -> Meter:
    """Phone battery energy over adb: samples |current_now * voltage_now| and integrates.

    runner(args) -> stdout runs ``adb <args>``; injectable so tests feed recorded output.
    """
    run = runner or _adb_runner
    prefix = ["-s", serial] if serial else []
    cmd = [*prefix, "shell", "cat", f"{sysfs}/current_now", f"{sysfs}/voltage_now"]

    def read_w():
        return parse_android_power_w(run(cmd))

    try:
        read_w()
    except MeterUnavailableError:
        raise
    except ValueError as e:
        raise MeterUnavailableError(f"Android: could not read {sysfs}/current_now and voltage_now: {e}") from e
    return _sampled_meter("android", read_w, period_s)


# ---------------------------------------------------------------------------------------------
# Simulated device (analytic ground truth)
# ---------------------------------------------------------------------------------------------
class LayerCost(NamedTuple):
    """What the device model needs of one layer of a training step (forward + backward + update).

    kind: layer type name; train_flops: floating-point operations of one training iteration;
    act_bytes: activation bytes read + written (forward and backward); param_bytes: parameter
    bytes (read, gradient written, optimizer update).
    """

    kind: str
    train_flops: float
    act_bytes: float
    param_bytes: float


class DeviceModel(NamedTuple):
    """Analytic energy/time of one training iteration on a made-up battery device [our choice].

    Per layer (roofline with a launch cost)::

        t_l = max(F_l / peak_flops, B_l / mem_bw) + kernels_l * t_launch
        e_l = e_flop * F_l + e_byte * B_l + p_static * t_l

    with F_l the training FLOPs and B_l = act_bytes + 3 * param_bytes. Per iteration a fixed cost
    (loss, optimizer bookkeeping, framework dispatch): ``e_fixed``, ``t_fixed``. Adjacent layers
    interact (cache reuse, fusion, DVFS) with weight ``gamma``::

        E = sum_l e_l + e_fixed + gamma * sum_l sqrt(e_l * e_{l+1})

    (same for time), times lognormal noise ``exp(noise * z)``. With gamma = 0 the cost is exactly
    layer-additive; gamma > 0 breaks additivity, which THOR's subtraction cannot see.
    Defaults loosely resemble a phone SoC (20 GFLOP/s, 8 GB/s, 40 pJ/FLOP, 150 pJ/byte, 1.5 W
    static), so the small CNNs and MLPs used here cost millijoules per iteration.
    """

    peak_flops: float = 20e9
    mem_bw: float = 8e9
    t_launch: float = 20e-6
    e_flop: float = 40e-12
    e_byte: float = 150e-12
    p_static: float = 1.5
    e_fixed: float = 2e-3
    t_fixed: float = 0.5e-3
    gamma: float = 0.0
    noise: float = 0.02

    def layer_cost(self, layer: LayerCost) -> tuple[float, float]:
        """(joules, seconds) of one layer, noise-free and without interaction."""
        kernels = {"conv": 3, "dense": 3, "lstm": 12, "bn": 4, "pool": 2, "act": 2}.get(layer.kind, 2)
        b = layer.act_bytes + 3.0 * layer.param_bytes
        t = max(layer.train_flops / self.peak_flops, b / self.mem_bw) + kernels * self.t_launch
        e = self.e_flop * layer.train_flops + self.e_byte * b + self.p_static * t
        return e, t

    def iteration_cost(self, layers: Sequence[LayerCost], rng: np.random.Generator | None = None) -> Measurement:
        """Noisy cost of one training iteration of the network ``layers`` (in order)."""
        costs = [self.layer_cost(l) for l in layers]
        e = sum(c[0] for c in costs) + self.e_fixed
        t = sum(c[1] for c in costs) + self.t_fixed
        for (e1, t1), (e2, t2) in zip(costs[:-1], costs[1:]):
            e += self.gamma * math.sqrt(e1 * e2)
            t += self.gamma * math.sqrt(t1 * t2)
        if rng is not None and self.noise > 0:
            e *= math.exp(self.noise * rng.standard_normal())
            t *= math.exp(self.noise * rng.standard_normal())
        return Measurement(e, t)


def simulated_meter(device: DeviceModel | None = None, seed: int = 0) -> Meter:
    """Meter over :class:`DeviceModel`: ``simulate(layers)`` returns the noisy per-iteration cost.

    ``start``/``stop`` only time the wall clock (nothing real is measured); the profiler calls
    ``simulate`` instead of running code when it is set. Noise draws come from ``seed``, so a run
    is reproducible.
    """
    dev = device or DeviceModel()
    rng = np.random.default_rng(seed)

    def start():
        return time.perf_counter()

    def stop(t0):
        return Measurement(float("nan"), time.perf_counter() - t0)

    return Meter("simulated", "joules", start, stop, simulate=lambda layers: dev.iteration_cost(layers, rng))


# ---------------------------------------------------------------------------------------------
# Detection
# ---------------------------------------------------------------------------------------------
def _try(name: str, **kw) -> tuple[Meter | None, str | None]:
    builders = {"wallclock": wallclock_meter, "cputime": cputime_meter, "rapl": rapl_meter, "nvml": nvml_meter,
                "jetson": jetson_meter, "android": android_meter, "simulated": simulated_meter}
    try:
        return builders[name](**kw), None
    except MeterUnavailableError as e:
        return None, str(e)


def detect_meters() -> dict[str, str]:
    """``{name: "ok" | reason}`` for every meter on this machine (wall clock and simulated always ok)."""
    return {name: (reason or "ok") for name in METER_NAMES for _, reason in [_try(name)]}


def get_meter(name: str, **kwargs) -> Meter:
    """Builds meter ``name`` (one of :data:`METER_NAMES`); kwargs go to its builder.

    Raises ValueError for an unknown name and :class:`MeterUnavailableError` when the sensor is
    missing, naming the missing sensor and the meters that work here.
    """
    if name not in METER_NAMES:
        raise ValueError(f"meter {name!r} is unknown: use one of {', '.join(METER_NAMES)}")
    meter, reason = _try(name, **kwargs)
    if meter is not None:
        return meter
    working = [n for n, r in detect_meters().items() if r == "ok"]
    raise MeterUnavailableError(f"meter {name!r} is not available here: {reason} "
                                f"Meters that work on this machine: {', '.join(working)}.")
