"""Meter parsing and arithmetic against recorded sensor files written by the tests."""

import math
import os

import numpy as np
import pytest

from jaxlab.energy import meters as M


def _write(path, text):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)


def _rapl_tree(root, pkg_uj, dram_uj, core_uj=5, max_uj=262143328850):
    _write(f"{root}/intel-rapl:0/name", "package-0\n")
    _write(f"{root}/intel-rapl:0/energy_uj", f"{pkg_uj}\n")
    _write(f"{root}/intel-rapl:0/max_energy_range_uj", f"{max_uj}\n")
    _write(f"{root}/intel-rapl:0/intel-rapl:0:0/name", "core\n")
    _write(f"{root}/intel-rapl:0/intel-rapl:0:0/energy_uj", f"{core_uj}\n")
    _write(f"{root}/intel-rapl:0/intel-rapl:0:0/max_energy_range_uj", f"{max_uj}\n")
    _write(f"{root}/intel-rapl:0:1/name", "dram\n")  # sysfs also lists sub-zones flat
    _write(f"{root}/intel-rapl:0:1/energy_uj", f"{dram_uj}\n")
    _write(f"{root}/intel-rapl:0:1/max_energy_range_uj", f"{max_uj}\n")


def test_rapl_delta_wraparound_closed_form():
    assert M.rapl_delta_uj(100, 400, 1000) == 300
    assert M.rapl_delta_uj(900, 50, 1000) == 150  # wrapped once: 50 + 1000 - 900
    with pytest.raises(ValueError, match="outside"):
        M.rapl_delta_uj(1200, 5, 1000)


def test_rapl_meter_sums_package_and_dram_with_wrap(tmp_path):
    root = str(tmp_path / "powercap")
    max_uj = 1_000_000
    _rapl_tree(root, pkg_uj=990_000, dram_uj=10_000, max_uj=max_uj)
    zones = M.rapl_zones(root)
    assert sorted(z["name"] for z in zones) == ["dram", "package-0"]  # core not double counted
    meter = M.rapl_meter(root)
    tok = meter.start()
    # package wraps (990000 -> 20000: +30000 uJ), dram +5000 uJ, core changes are ignored
    _rapl_tree(root, pkg_uj=20_000, dram_uj=15_000, core_uj=999, max_uj=max_uj)
    m = meter.stop(tok)
    assert m.joules == pytest.approx(0.035, rel=1e-12)
    assert m.seconds >= 0


def test_rapl_permission_error_is_explained(tmp_path, monkeypatch):
    root = str(tmp_path / "powercap")
    _rapl_tree(root, 1, 1)
    real_open = open

    def fake_open(path, *a, **k):
        if str(path).endswith("energy_uj"):
            raise PermissionError(13, "Permission denied", path)
        return real_open(path, *a, **k)

    monkeypatch.setattr("builtins.open", fake_open)
    with pytest.raises(M.MeterUnavailableError, match="root"):
        M.rapl_meter(root)


def test_rapl_missing_names_the_sensor(tmp_path):
    with pytest.raises(M.MeterUnavailableError, match="intel-rapl"):
        M.rapl_meter(str(tmp_path / "nothing"))


def test_jetson_hwmon_units(tmp_path):
    root = str(tmp_path / "ina3221")
    d = f"{root}/1-0040/hwmon/hwmon3"
    _write(f"{d}/in1_label", "VDD_IN\n"); _write(f"{d}/in1_input", "5080\n"); _write(f"{d}/curr1_input", "1234\n")
    _write(f"{d}/in2_label", "VDD_CPU_GPU_CV\n"); _write(f"{d}/in2_input", "5000\n"); _write(f"{d}/curr2_input", "400\n")
    p = M.read_jetson_power_w(root)
    assert p == {"VDD_IN": pytest.approx(5.080 * 1.234), "VDD_CPU_GPU_CV": pytest.approx(2.0)}
    assert M.read_jetson_power_w(root, rails=["VDD_IN"]) == {"VDD_IN": pytest.approx(6.26872)}


def test_jetson_legacy_ina3221x_units(tmp_path):
    root = str(tmp_path / "ina3221x")
    d = f"{root}/0-0040/iio:device0"
    _write(f"{d}/rail_name_0", "VDD_SYS_GPU\n"); _write(f"{d}/in_voltage0_input", "19072\n")
    _write(f"{d}/in_current0_input", "40\n")
    assert M.read_jetson_power_w(root) == {"VDD_SYS_GPU": pytest.approx(19.072 * 0.040)}


def test_jetson_meter_integrates_constant_power(tmp_path):
    root = str(tmp_path / "ina3221")
    d = f"{root}/1-0040/hwmon/hwmon0"
    _write(f"{d}/in1_input", "5000\n"); _write(f"{d}/curr1_input", "2000\n")  # 10 W
    meter = M.jetson_meter(root, period_s=0.005)
    tok = meter.start()
    import time
    time.sleep(0.05)
    m = meter.stop(tok)
    assert m.joules == pytest.approx(10.0 * m.seconds, rel=1e-9)


def test_jetson_missing(tmp_path):
    with pytest.raises(M.MeterUnavailableError, match="INA3221"):
        M.jetson_meter(str(tmp_path))


def test_android_units_and_sign():
    # current_now in uA (negative while discharging on many phones), voltage_now in uV
    assert M.parse_android_power_w("-450000\n3850000\n") == pytest.approx(0.45 * 3.85)
    assert M.parse_android_power_w("450000 3850000") == pytest.approx(1.7325)
    with pytest.raises(ValueError, match="two integers"):
        M.parse_android_power_w("12\n")


def test_android_meter_with_recorded_runner():
    calls = []
    readings = iter(["-1000000\n4000000\n"] * 10_000)  # 1 A at 4 V = 4 W

    def runner(args):
        calls.append(list(args))
        return next(readings)

    meter = M.android_meter(serial="emu-5554", runner=runner, period_s=0.005)
    assert calls[0][:3] == ["-s", "emu-5554", "shell"] and calls[0][-1].endswith("voltage_now")
    tok = meter.start()
    import time
    time.sleep(0.03)
    m = meter.stop(tok)
    assert m.joules == pytest.approx(4.0 * m.seconds, rel=1e-9)


def test_android_bad_output_is_unavailable():
    with pytest.raises(M.MeterUnavailableError, match="current_now"):
        M.android_meter(runner=lambda a: "error: no devices/emulators found")


def test_integrate_power_trapezoid_against_closed_form():
    t = np.linspace(0.0, 2.0, 2001)
    w = 3.0 + 2.0 * t  # integral over [0, 2] = 6 + 4 = 10 J (exact for the trapezoid rule)
    assert M.integrate_power(t, w) == pytest.approx(10.0, rel=1e-12)
    with pytest.raises(ValueError):
        M.integrate_power([0.0, 1.0], [1.0])


def test_nvml_with_fake_module_and_missing_module():
    class FakeNVML:
        counter = [1000]

        def nvmlInit(self):
            pass

        def nvmlDeviceGetHandleByIndex(self, i):
            return i

        def nvmlDeviceGetTotalEnergyConsumption(self, h):
            self.counter[0] += 2500  # mJ
            return self.counter[0]

    meter = M.nvml_meter(nvml=FakeNVML())
    tok = meter.start()
    assert meter.stop(tok).joules == pytest.approx(2.5)

    class Broken(FakeNVML):
        def nvmlInit(self):
            raise RuntimeError("NVML Shared Library Not Found")

    with pytest.raises(M.MeterUnavailableError, match="Volta"):
        M.nvml_meter(nvml=Broken())


def test_get_meter_errors_name_sensor_and_alternatives():
    with pytest.raises(ValueError, match="unknown"):
        M.get_meter("joulemeter")
    with pytest.raises(M.MeterUnavailableError) as e:
        M.get_meter("rapl", root="/nonexistent/powercap")
    assert "intel-rapl" in str(e.value) and "wallclock" in str(e.value) and "simulated" in str(e.value)
    found = M.detect_meters()
    assert found["wallclock"] == "ok" and found["simulated"] == "ok"


def test_wallclock_measure_iterations_counts_sleep():
    import time

    def step(s):
        time.sleep(0.002)
        return s + 1

    st = {}
    m = M.measure_iterations(M.wallclock_meter(), step, 0, warmup=1, windows=3, min_window_s=0.01, stats=st)
    assert 0.0019 < m.seconds < 0.02 and math.isnan(m.joules)
    assert st["iters"] >= 1 and len(st["windows_s"]) == 3


def test_device_model_additive_and_interaction_closed_form():
    from jaxlab.energy.meters import DeviceModel, LayerCost

    layers = [LayerCost("conv", 1e8, 1e6, 1e4), LayerCost("act", 1e5, 2e6, 0.0)]
    d0 = DeviceModel(gamma=0.0, noise=0.0)
    e = [d0.layer_cost(l)[0] for l in layers]
    # recompute layer 0 by hand (float64): roofline + launches
    t0 = max(1e8 / 20e9, (1e6 + 3e4) / 8e9) + 3 * 20e-6
    assert e[0] == pytest.approx(40e-12 * 1e8 + 150e-12 * (1e6 + 3e4) + 1.5 * t0, rel=1e-12)
    assert d0.iteration_cost(layers).joules == pytest.approx(sum(e) + 2e-3, rel=1e-12)
    d1 = d0._replace(gamma=0.3)
    assert d1.iteration_cost(layers).joules == pytest.approx(sum(e) + 2e-3 + 0.3 * math.sqrt(e[0] * e[1]), rel=1e-12)


def test_measure_interleaved_orders_and_medians():
    import time

    log = []

    def make(delay, tag):
        def step(s):
            log.append(tag)
            time.sleep(delay)
            return s
        return step

    st = []
    ms = M.measure_interleaved(M.wallclock_meter(), [make(0.001, "a"), make(0.004, "b")], [0, 0], warmup=1,
                               windows=3, min_window_s=0.004, stats=st)
    assert ms[0].seconds < ms[1].seconds and 0.0009 < ms[0].seconds < 0.01 and 0.0039 < ms[1].seconds < 0.03
    timed = log[log.index("b", 4):]  # after warm-up/calibration of both, windows alternate a, b, a, b ...
    runs = [k for i, k in enumerate(timed) if i == 0 or timed[i - 1] != k]
    assert runs[:4] == ["a", "b", "a", "b"] or runs[:4] == ["b", "a", "b", "a"]
    assert [len(s["windows_s"]) for s in st] == [3, 3]
    with pytest.raises(ValueError, match="states"):
        M.measure_interleaved(M.wallclock_meter(), [make(0, "a")], [0, 0])
