"""Energy per answer: RAPL and NVML read through injected fakes, the estimate labelled as one, Wh per 1,000."""

from __future__ import annotations

import math
import sys
import types
from pathlib import Path
from typing import Any

import pytest

from agentflow import ConfigError, MissingDependencyError
from agentflow._energy import (
    DEFAULT_ESTIMATE,
    JOULES_PER_FLOP,
    NO_ENERGY,
    EnergyMeter,
    EnergyReading,
    EstimateMeter,
    FromFlops,
    FromTime,
    NvmlMeter,
    RaplMeter,
    Work,
    detect_meter,
    energy_for,
    energy_summary,
    wh_per_1000,
)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def zone(root: Path, name: str, label: str | None, uj: int, max_uj: int = 1_000_000_000) -> Path:
    d = root / name
    d.mkdir(parents=True)
    (d / "energy_uj").write_text(f"{uj}\n")
    (d / "max_energy_range_uj").write_text(f"{max_uj}\n")
    if label is not None:
        (d / "name").write_text(label + "\n")
    return d


def set_uj(d: Path, uj: int) -> None:
    (d / "energy_uj").write_text(f"{uj}\n")


# --- RAPL -------------------------------------------------------------------------------------------


def test_rapl_adds_package_and_dram_zones_and_skips_the_ones_inside_or_overlapping(tmp_path: Path) -> None:
    pkg = zone(tmp_path, "intel-rapl:0", "package-0", 5_000_000)
    core = zone(tmp_path, "intel-rapl:0:0", "core", 1_000_000)
    dram = zone(tmp_path, "intel-rapl:0:1", "dram", 2_000_000)
    psys = zone(tmp_path, "intel-rapl:1", "psys", 9_000_000)
    clock = Clock()
    meter = RaplMeter(tmp_path, clock=clock)
    assert isinstance(meter, EnergyMeter)
    assert meter.zones() == ["intel-rapl:0(package-0)", "intel-rapl:0:1(dram)"]

    meter.start()
    set_uj(pkg, 17_000_000)  # +12 J
    set_uj(dram, 2_500_000)  # +0.5 J
    set_uj(core, 9_000_000)  # inside the package: not counted again
    set_uj(psys, 99_000_000)  # the platform: overlaps the package
    clock.now += 4.0
    reading = meter.stop()

    assert reading.joules == pytest.approx(12.5)
    assert reading.measured and reading.method == "measured:rapl"
    assert "package-0" in reading.basis and "dram" in reading.basis and "4 s" in reading.basis
    assert reading.note == ""


def test_rapl_counter_wrap_around_is_corrected_with_its_range(tmp_path: Path) -> None:
    pkg = zone(tmp_path, "intel-rapl:0", "package-0", 262_000_000_000, max_uj=262_143_328_850)
    meter = RaplMeter(tmp_path, clock=Clock())
    meter.start()
    set_uj(pkg, 1_000_000)  # wrapped: 143_328_850 uJ to the top, then 1_000_000 past zero
    assert meter.stop().joules == pytest.approx((262_143_328_850 - 262_000_000_000 + 1_000_000) / 1e6)


def test_rapl_reads_again_accumulate_so_a_long_window_survives_several_wraps(tmp_path: Path) -> None:
    pkg = zone(tmp_path, "intel-rapl:0", "package-0", 900, max_uj=1000)
    meter = RaplMeter(tmp_path, clock=Clock())
    meter.start()
    set_uj(pkg, 400)  # +500 through a wrap
    assert meter.stop().joules == pytest.approx(500e-6)
    set_uj(pkg, 300)  # +900 through a second wrap
    assert meter.stop().joules == pytest.approx(1400e-6)
    set_uj(pkg, 350)  # +50
    assert meter.stop().joules == pytest.approx(1450e-6)


def test_rapl_without_names_counts_top_level_zones_only(tmp_path: Path) -> None:
    a = zone(tmp_path, "intel-rapl:0", None, 0)
    zone(tmp_path, "intel-rapl:0:0", None, 0)
    b = zone(tmp_path, "intel-rapl:1", None, 0)
    meter = RaplMeter(tmp_path, clock=Clock())
    meter.start()
    set_uj(a, 1_000_000)
    set_uj(b, 3_000_000)
    assert meter.stop().joules == pytest.approx(4.0)


def test_rapl_missing_or_unreadable_says_why_and_how_to_fix(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"no RAPL energy counters under .*does not expose them"):
        RaplMeter(tmp_path / "absent").zones()
    with pytest.raises(ConfigError, match=r"stop\(\) before start\(\)"):
        RaplMeter(tmp_path).stop()
    pkg = zone(tmp_path, "intel-rapl:0", "package-0", 0)
    (pkg / "energy_uj").write_text("not a number")
    with pytest.raises(ConfigError, match="could not be read"):
        RaplMeter(tmp_path).zones()


def test_rapl_permission_denied_names_the_fix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    zone(tmp_path, "intel-rapl:0", "package-0", 0)
    real = Path.read_text

    def deny(self: Path, *args: Any, **kwargs: Any) -> str:
        if self.name == "energy_uj":
            raise PermissionError(13, "Permission denied")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Path, "read_text", deny)
    with pytest.raises(ConfigError, match=r"not readable by this user: run as root.*chmod a\+r"):
        RaplMeter(tmp_path).zones()


# --- NVML ---------------------------------------------------------------------------------------------


def test_nvml_meter_reads_the_injected_counter_in_millijoules() -> None:
    counter = [1_000_000.0]
    clock = Clock()
    meter = NvmlMeter(lambda: counter[0], clock=clock)
    meter.start()
    counter[0] += 45_500.0
    clock.now += 2.5
    reading = meter.stop()
    assert reading.joules == pytest.approx(45.5)
    assert reading.measured and reading.method == "measured:nvml"
    assert "NVML" in reading.basis and "2.5 s" in reading.basis


class FakeNVMLError(Exception):
    pass


def fake_pynvml(energies_mj: list[float], *, fail: bool = False) -> types.ModuleType:
    """The few nvidia-ml-py functions the meter calls, over a list of per-GPU counters."""
    mod = types.ModuleType("pynvml")
    mod.NVMLError = FakeNVMLError  # type: ignore[attr-defined]

    def init() -> None:
        if fail:
            raise FakeNVMLError("NVML Shared Library Not Found")

    mod.nvmlInit = init  # type: ignore[attr-defined]
    mod.nvmlDeviceGetCount = lambda: len(energies_mj)  # type: ignore[attr-defined]
    mod.nvmlDeviceGetHandleByIndex = lambda i: i  # type: ignore[attr-defined]
    mod.nvmlDeviceGetTotalEnergyConsumption = lambda h: energies_mj[h]  # type: ignore[attr-defined]
    return mod


def test_nvml_meter_uses_nvidia_ml_py_lazily_and_sums_every_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    energies = [10_000.0, 20_000.0]
    monkeypatch.setitem(sys.modules, "pynvml", fake_pynvml(energies))
    meter = NvmlMeter(clock=Clock())
    meter.start()
    energies[0] += 3_000.0
    energies[1] += 1_000.0
    assert meter.stop().joules == pytest.approx(4.0)

    only_second = NvmlMeter(devices=[1], clock=Clock())
    only_second.start()
    energies[0] += 5_000.0
    energies[1] += 2_000.0
    assert only_second.stop().joules == pytest.approx(2.0)
    assert "GPU 1" in only_second.reason


def test_nvml_without_the_library_names_the_pip_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import fails as if not installed
    with pytest.raises(MissingDependencyError, match=r"pip install 'agentflow\[energy\]'"):
        NvmlMeter().start()


def test_nvml_without_a_driver_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", fake_pynvml([], fail=True))
    with pytest.raises(ConfigError, match=r"NVML could not read GPU energy.*Shared Library Not Found"):
        NvmlMeter().check()
    monkeypatch.setitem(sys.modules, "pynvml", fake_pynvml([]))
    with pytest.raises(ConfigError, match="found no NVIDIA GPU"):
        NvmlMeter().check()


# --- detection and the fallback ---------------------------------------------------------------------


def test_detect_falls_back_to_an_estimate_labelled_as_one_with_the_reasons(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)
    clock = Clock()
    meter = detect_meter(rapl_root=tmp_path / "no-powercap", estimate=FromTime(cores=2), clock=clock)
    assert isinstance(meter, EstimateMeter)
    assert "pip install 'agentflow[energy]'" in meter.reason and "no RAPL energy counters" in meter.reason

    meter.start()
    clock.now += 12.3
    reading = meter.stop()
    assert not reading.measured and reading.method == "estimated:time"
    assert reading.joules == pytest.approx(2 * 10.0 * 12.3)
    assert reading.basis == "estimate: 2 cores x 10 W/core x 12.3 s busy"
    assert reading.note == meter.reason


def test_detect_picks_rapl_then_adds_nvml_when_both_are_readable(tmp_path: Path) -> None:
    pkg = zone(tmp_path, "intel-rapl:0", "package-0", 0)
    counter = [0.0]

    def broken() -> float:
        raise ConfigError("no GPU here")

    clock = Clock()
    cpu_only = detect_meter(rapl_root=tmp_path, nvml_read=broken, clock=clock)
    assert isinstance(cpu_only, RaplMeter)
    assert cpu_only.reason.startswith("measured with RAPL") and "NVML: no GPU here" in cpu_only.reason

    both = detect_meter(rapl_root=tmp_path, nvml_read=lambda: counter[0], clock=clock)
    both.start()
    set_uj(pkg, 3_000_000)
    counter[0] += 7_000.0
    reading = both.stop()
    assert reading.joules == pytest.approx(10.0)
    assert reading.method == "measured:nvml+rapl" and reading.measured

    gpu = detect_meter("gpu", rapl_root=tmp_path, nvml_read=lambda: counter[0], clock=clock)
    assert isinstance(gpu, NvmlMeter)
    with pytest.raises(ConfigError, match="use 'auto', 'cpu' or 'gpu'"):
        detect_meter("tpu")


# --- estimates ----------------------------------------------------------------------------------------


def test_estimates_state_their_figures_and_prefer_flops() -> None:
    r = energy_for(12.3, 1.8e12)
    assert r.joules == pytest.approx(1.8e12 * JOULES_PER_FLOP["cpu"])
    assert r.method == "estimated:flops" and not r.measured
    assert r.basis == "estimate: 1.8e+12 FLOPs x 2e-10 J/FLOP (cpu default)"

    gpu = energy_for(12.3, 1.8e12, "gpu", estimate=FromFlops(2.0e-11))
    assert gpu.joules == pytest.approx(36.0) and "(given)" in gpu.basis

    no_flops = energy_for(12.3, 0.0, estimate=FromFlops() | FromTime(watts_per_core=5.0, cores=4))
    assert no_flops.joules == pytest.approx(4 * 5.0 * 12.3) and no_flops.method == "estimated:time"
    assert energy_for(10.0, 0.0, "gpu").basis == "estimate: 1 GPU x 300 W x 10 s busy"

    assert energy_for(0.0, 0.0) is NO_ENERGY
    assert DEFAULT_ESTIMATE(Work()) is None
    with pytest.raises(ConfigError, match="unknown energy device 'npu': use one of cpu, gpu"):
        energy_for(1.0, 1.0, "npu")


def test_readings_add_and_a_sum_with_an_estimate_is_an_estimate() -> None:
    a = EnergyReading(3.0, "measured:rapl", "measured: RAPL x")
    b = EnergyReading(1.5, "estimated:flops", "estimate: y")
    assert a + NO_ENERGY == a and NO_ENERGY + b == b
    s = a + b
    assert s.joules == pytest.approx(4.5)
    assert s.method == "estimated:flops+rapl" and not s.measured
    assert s.basis == "measured: RAPL x + estimate: y"
    same = a + a
    assert same.method == "measured:rapl" and same.basis == a.basis and same.joules == 6.0
    long = EnergyReading(1.0, "estimated:time", "t" * 200) + EnergyReading(1.0, "estimated:flops", "f" * 200)
    assert long.basis == "sum of readings (estimated:flops+time)"
    assert EnergyReading.from_dict(s.to_dict()) == s
    assert s.to_dict()["measured"] is False


# --- the report's arithmetic --------------------------------------------------------------------------


def test_wh_per_1000_answers() -> None:
    # 40 answers that used 720 J in all: 18 J each, 18,000 J per 1,000 = 5 Wh
    assert wh_per_1000(720.0, 40) == pytest.approx(5.0)
    assert wh_per_1000(3600.0, 1000) == pytest.approx(1.0)
    assert math.isnan(wh_per_1000(10.0, 0))
    summary = energy_summary(EnergyReading(720.0, "estimated:flops", "estimate: z"), 40)
    assert summary["energy_j_per_answer"] == pytest.approx(18.0)
    assert summary["energy_wh_per_1000"] == pytest.approx(5.0)
    assert summary["energy_method"] == "estimated:flops" and summary["energy_measured"] is False
    assert energy_summary(NO_ENERGY, 0)["energy_wh_per_1000"] is None
    assert EnergyReading(7200.0, "measured:nvml", "m").wh == pytest.approx(2.0)
