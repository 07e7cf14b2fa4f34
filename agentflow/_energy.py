"""Energy per answer: read from the hardware where the machine exposes it, otherwise estimated and labelled so.

Every figure is an `EnergyReading`: joules, a `method` (``measured:rapl``, ``measured:nvml``,
``estimated:flops``, ``estimated:time``) and a one-line `basis` saying how it was obtained.

- Measured: `RaplMeter` reads the CPU's RAPL counters under ``/sys/class/powercap`` (package and DRAM
  zones, counter wrap-around handled); `NvmlMeter` reads NVIDIA's total-energy counter through
  nvidia-ml-py (``pip install 'agentflow[energy]'``, imported only when used). Both count the whole
  device, every process on it: what the model servers burn is in it, and so is anything else running.
- Estimated: `FromFlops` (FLOPs x joules per FLOP) and `FromTime` (seconds x a stated power). They are
  strategies over one `Work` value and combine with ``|`` (the first that applies answers).

`detect_meter()` picks what this machine can read and says why; `energy_for(seconds, flops, device)` is
the after-the-fact estimate for a bill or a report; `wh_per_1000` gives the report's Wh per 1,000
questions (the unit of the AI Energy Score).

Why not CodeCarbon or Zeus: both measure the same counters (RAPL, NVML), but CodeCarbon pulls pandas,
requests, prometheus-client and more, and looks up the machine's location on the network, and Zeus
pulls numpy, pandas and scikit-learn; the counters themselves take a few lines. NVML is read through
NVIDIA's own maintained bindings (nvidia-ml-py) rather than by hand.
"""

from __future__ import annotations

import importlib
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from ._exceptions import ConfigError, MissingDependencyError

__all__ = [
    "DEFAULT_ESTIMATE",
    "DEFAULT_RAPL_ROOT",
    "GPU_WATTS",
    "JOULES_PER_FLOP",
    "NO_ENERGY",
    "WATTS_PER_CPU_CORE",
    "EnergyMeter",
    "EnergyReading",
    "Estimate",
    "EstimateMeter",
    "FromFlops",
    "FromTime",
    "NvmlMeter",
    "RaplMeter",
    "Work",
    "detect_meter",
    "energy_for",
    "energy_summary",
    "wh_per_1000",
]

DEVICES = ("cpu", "gpu")

WATTS_PER_CPU_CORE = 10.0
"""One busy core's share of its chip's TDP (a 160 W, 16-core server part). An assumption, stated in every basis."""

GPU_WATTS = 300.0
"""A busy data-centre GPU's board power (between an L4's 72 W and an H100 SXM's 700 W)."""

JOULES_PER_FLOP: Mapping[str, float] = {
    # 2 cores x 10 W over the ~1e11 FLOP/s llama.cpp sustained on this project's 2-core benchmark
    # machine (benchmarks/README.md: the 1.5B model, 2.1e14 FLOPs in 1777 s).
    "cpu": 2.0e-10,
    # A 400 W GPU sustaining 40 TFLOP/s of inference (about 13% of an A100's dense bf16 peak).
    "gpu": 1.0e-11,
}

DEFAULT_RAPL_ROOT = Path("/sys/class/powercap")

_INSTALL = "pip install 'agentflow[energy]'"


def _check_device(device: str) -> str:
    if device not in DEVICES:
        raise ConfigError(f"unknown energy device {device!r}: use one of {', '.join(DEVICES)}")
    return device


# --- the value ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EnergyReading:
    """Energy used by some work: `joules`, how it was obtained (`method`, `basis`) and, for an estimate
    made because nothing could be measured, why (`note`). Adds with `+`; a sum with any estimated part
    is an estimate."""

    joules: float
    method: str
    basis: str
    note: str = ""

    @property
    def measured(self) -> bool:
        return self.method.startswith("measured:")

    @property
    def wh(self) -> float:
        return self.joules / 3600.0

    def __add__(self, other: EnergyReading) -> EnergyReading:
        if other == NO_ENERGY:
            return self
        if self == NO_ENERGY:
            return other
        if self.method == other.method:
            method = self.method
        else:
            prefix = "measured" if self.measured and other.measured else "estimated"
            kinds = {k for r in (self, other) for k in r.method.partition(":")[2].split("+")}
            method = f"{prefix}:{'+'.join(sorted(kinds))}"
        if self.basis == other.basis:
            basis = self.basis
        elif len(self.basis) + len(other.basis) <= 240:
            basis = f"{self.basis} + {other.basis}"
        else:
            basis = f"sum of readings ({method})"
        return EnergyReading(self.joules + other.joules, method, basis, self.note or other.note)

    def to_dict(self) -> dict[str, Any]:
        keys = ("joules", "method", "measured", "basis", "note")
        return {k: getattr(self, k) for k in keys}

    @staticmethod
    def from_dict(data: Mapping[str, Any]) -> EnergyReading:
        return EnergyReading(
            float(data.get("joules", 0.0)),
            str(data.get("method", NO_ENERGY.method)),
            str(data.get("basis", NO_ENERGY.basis)),
            str(data.get("note", "")),
        )


NO_ENERGY = EnergyReading(0.0, "estimated:none", "nothing ran")
"""The reading of no work: the identity of `+`."""


def wh_per_1000(joules: float, answers: int) -> float:
    """Watt-hours per 1,000 answers from the joules of `answers` answers (NaN for no answers)."""
    if answers <= 0:
        return float("nan")
    return joules / answers * 1000.0 / 3600.0


def energy_summary(reading: EnergyReading, answers: int) -> dict[str, Any]:
    """The report's energy columns for `answers` answers: total joules, joules per answer, Wh per 1,000
    answers, the method, whether it was measured, and the basis."""
    return {
        "energy_j": reading.joules,
        "energy_j_per_answer": reading.joules / answers if answers > 0 else None,
        "energy_wh_per_1000": wh_per_1000(reading.joules, answers) if answers > 0 else None,
        "energy_method": reading.method,
        "energy_measured": reading.measured,
        "energy_basis": reading.basis,
        "energy_note": reading.note,
    }


# --- estimates: strategies over one Work value ----------------------------------------------------


@dataclass(frozen=True, slots=True)
class Work:
    """What an estimate looks at: wall seconds, estimated FLOPs and the device ("cpu" or "gpu")."""

    seconds: float = 0.0
    flops: float = 0.0
    device: str = "cpu"


class Estimate:
    """An energy estimate from `Work`; returns None when it does not apply. `a | b` tries a, then b."""

    def __call__(self, work: Work) -> EnergyReading | None:
        raise NotImplementedError

    def __or__(self, other: Estimate) -> Estimate:
        return _First((self, other))


@dataclass(frozen=True, slots=True)
class _First(Estimate):
    parts: tuple[Estimate, ...]

    def __call__(self, work: Work) -> EnergyReading | None:
        for part in self.parts:
            reading = part(work)
            if reading is not None:
                return reading
        return None


@dataclass(frozen=True, slots=True)
class FromFlops(Estimate):
    """FLOPs x joules per FLOP; `joules_per_flop` None takes `JOULES_PER_FLOP[device]`. Applies when FLOPs > 0.

    Independent of concurrency and of cache hits (which are counted at what they would have cost)."""

    joules_per_flop: float | None = None

    def __call__(self, work: Work) -> EnergyReading | None:
        if work.flops <= 0:
            return None
        rate = JOULES_PER_FLOP[_check_device(work.device)] if self.joules_per_flop is None else self.joules_per_flop
        source = f"{work.device} default" if self.joules_per_flop is None else "given"
        return EnergyReading(
            work.flops * rate,
            "estimated:flops",
            f"estimate: {work.flops:.2g} FLOPs x {rate:.2g} J/FLOP ({source})",
        )


@dataclass(frozen=True, slots=True)
class FromTime(Estimate):
    """Wall seconds x a stated power: `cores` x `watts_per_core` on a CPU (cores None: all of this
    machine's), `gpu_watts` on a GPU. Assumes the device is busy the whole time. Applies when seconds > 0."""

    watts_per_core: float = WATTS_PER_CPU_CORE
    cores: int | None = None
    gpu_watts: float = GPU_WATTS

    def __call__(self, work: Work) -> EnergyReading | None:
        if work.seconds <= 0:
            return None
        if _check_device(work.device) == "gpu":
            how = f"1 GPU x {self.gpu_watts:g} W"
            watts = self.gpu_watts
        else:
            cores = self.cores if self.cores is not None else (os.cpu_count() or 1)
            how = f"{cores} cores x {self.watts_per_core:g} W/core"
            watts = cores * self.watts_per_core
        return EnergyReading(watts * work.seconds, "estimated:time", f"estimate: {how} x {work.seconds:.3g} s busy")


DEFAULT_ESTIMATE: Estimate = FromFlops() | FromTime()
"""FLOPs when they are known (stable under concurrency and caching), else wall time."""


def energy_for(seconds: float, flops: float, device: str = "cpu", *, estimate: Estimate | None = None) -> EnergyReading:
    """The estimated energy of work that took `seconds` and `flops` on `device` ("cpu" or "gpu"), with
    `estimate` (default `DEFAULT_ESTIMATE`); `NO_ENERGY` when neither is positive."""
    work = Work(seconds, flops, _check_device(device))
    return (DEFAULT_ESTIMATE if estimate is None else estimate)(work) or NO_ENERGY


# --- meters -----------------------------------------------------------------------------------------


@runtime_checkable
class EnergyMeter(Protocol):
    """Measures a window: `start()`, then `stop()` returns the energy since `start()`. `stop()` may be
    called again; each call returns the energy since `start()`. `reason` says why this meter was chosen."""

    reason: str

    def start(self) -> None: ...

    def stop(self) -> EnergyReading: ...


def _read_int(path: Path) -> int:
    try:
        return int(path.read_text().strip())
    except PermissionError as exc:
        raise ConfigError(
            f"RAPL counter {path} is not readable by this user: run as root, or make it readable "
            f"(`sudo chmod a+r {path}`), or use an estimate (detect_meter() falls back to one)"
        ) from exc
    except (OSError, ValueError) as exc:
        raise ConfigError(f"RAPL counter {path} could not be read ({exc}): use an estimate instead") from exc


@dataclass(frozen=True, slots=True)
class _Zone:
    name: str
    energy: Path
    max_uj: int


class RaplMeter:
    """CPU energy from the RAPL counters under `root` (``/sys/class/powercap``): every ``package-*``
    and ``dram`` zone (``core``/``uncore`` are inside the package, ``psys`` overlaps it), or every
    top-level zone where zones have no names. A counter that wrapped between two reads is corrected
    with its ``max_energy_range_uj``; reading it at least once per wrap (minutes at full load) keeps
    long windows exact."""

    def __init__(self, root: Path | str = DEFAULT_RAPL_ROOT, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.root = Path(root)
        self.reason = f"RAPL counters under {self.root}"
        self._clock = clock
        self._zones: list[_Zone] = []
        self._last: list[int] = []
        self._uj = 0
        self._t0 = 0.0

    def zones(self) -> list[str]:
        """The zones this meter adds up; ConfigError saying why when there are none or they cannot be read."""
        self._zones = self._discover()
        self._read()
        return [z.name for z in self._zones]

    def _discover(self) -> list[_Zone]:
        dirs = sorted(p for p in self.root.glob("*rapl:*") if (p / "energy_uj").exists()) if self.root.is_dir() else []
        if not dirs:
            raise ConfigError(
                f"no RAPL energy counters under {self.root}: this machine (or VM) does not expose them; "
                "use NVML on a GPU or an estimate (detect_meter() falls back to one)"
            )
        named = {d: (d / "name").read_text().strip() if (d / "name").exists() else "" for d in dirs}
        if any(named.values()):
            chosen = [d for d in dirs if named[d].startswith("package") or named[d] == "dram"]
        else:
            chosen = [d for d in dirs if d.name.count(":") == 1]
        if not chosen:
            raise ConfigError(f"RAPL under {self.root} has no package or dram zone (found {sorted(named.values())})")
        return [
            _Zone(f"{d.name}({named[d] or 'zone'})", d / "energy_uj", _read_int(d / "max_energy_range_uj"))
            for d in chosen
        ]

    def _read(self) -> list[int]:
        return [_read_int(z.energy) for z in self._zones]

    def start(self) -> None:
        self._zones = self._discover()
        self._last = self._read()
        self._uj = 0
        self._t0 = self._clock()

    def stop(self) -> EnergyReading:
        if not self._zones:
            raise ConfigError("RaplMeter.stop() before start(): call start() when the work begins")
        now = self._read()
        for zone, before, after in zip(self._zones, self._last, now, strict=True):
            delta = after - before
            self._uj += delta + zone.max_uj if delta < 0 else delta
        self._last = now
        seconds = self._clock() - self._t0
        names = ", ".join(z.name for z in self._zones)
        return EnergyReading(
            self._uj / 1e6, "measured:rapl", f"measured: RAPL {names} over {seconds:.3g} s (whole machine)"
        )


def _pynvml_reader(devices: Sequence[int] | None) -> Callable[[], float]:
    """A function returning the summed NVML total-energy counters (mJ) of `devices` (None: every GPU)."""
    try:
        nvml = importlib.import_module("pynvml")
    except ImportError as exc:
        raise MissingDependencyError("nvidia-ml-py (NVML bindings, to measure GPU energy)", _INSTALL) from exc
    try:
        nvml.nvmlInit()
        indices = range(nvml.nvmlDeviceGetCount()) if devices is None else devices
        handles = [nvml.nvmlDeviceGetHandleByIndex(i) for i in indices]
        if not handles:
            raise ConfigError("NVML found no NVIDIA GPU: measure the CPU with RAPL or use an estimate")

        def read() -> float:
            return float(sum(nvml.nvmlDeviceGetTotalEnergyConsumption(h) for h in handles))

        read()  # fail here, not mid-run, on a GPU older than Volta (no energy counter)
    except nvml.NVMLError as exc:
        raise ConfigError(
            f"NVML could not read GPU energy ({exc}): check the NVIDIA driver and that the GPU is Volta or "
            "newer, or use an estimate (detect_meter() falls back to one)"
        ) from exc
    return read


class NvmlMeter:
    """GPU energy from NVML's total-energy counter (``nvmlDeviceGetTotalEnergyConsumption``, millijoules
    since the driver loaded), through nvidia-ml-py, imported on first use. `read_mj` replaces the
    library with any function returning the counter in mJ (tests, other bindings); `devices` picks GPUs
    by index (None: all)."""

    def __init__(
        self,
        read_mj: Callable[[], float] | None = None,
        *,
        devices: Sequence[int] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._read_mj = read_mj
        self._devices = devices
        self._clock = clock
        self._start_mj: float | None = None
        self._t0 = 0.0
        which = "every GPU" if devices is None else "GPU " + ", ".join(map(str, devices))
        self.reason = f"NVML energy counter of {which}"

    def _reader(self) -> Callable[[], float]:
        if self._read_mj is None:
            self._read_mj = _pynvml_reader(self._devices)
        return self._read_mj

    def check(self) -> None:
        """Read the counter once: MissingDependencyError or ConfigError saying why it cannot be read."""
        self._reader()()

    def start(self) -> None:
        self._start_mj = self._reader()()
        self._t0 = self._clock()

    def stop(self) -> EnergyReading:
        if self._start_mj is None:
            raise ConfigError("NvmlMeter.stop() before start(): call start() when the work begins")
        mj = self._reader()() - self._start_mj
        seconds = self._clock() - self._t0
        return EnergyReading(mj / 1e3, "measured:nvml", f"measured: {self.reason} over {seconds:.3g} s (whole device)")


class EstimateMeter:
    """No counter to read: times the window with `clock` and estimates its energy with `estimate`
    (default `FromTime()`) on `device`. `reason` (why nothing was measured) goes into each reading's note."""

    def __init__(
        self,
        estimate: Estimate | None = None,
        *,
        device: str = "cpu",
        reason: str = "estimate chosen",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._estimate = FromTime() if estimate is None else estimate
        self._device = _check_device(device)
        self.reason = reason
        self._clock = clock
        self._t0: float | None = None

    def start(self) -> None:
        self._t0 = self._clock()

    def stop(self) -> EnergyReading:
        if self._t0 is None:
            raise ConfigError("EstimateMeter.stop() before start(): call start() when the work begins")
        reading = self._estimate(Work(self._clock() - self._t0, 0.0, self._device)) or NO_ENERGY
        return EnergyReading(reading.joules, reading.method, reading.basis, self.reason)


class _SumMeter:
    def __init__(self, meters: Sequence[EnergyMeter], reason: str) -> None:
        self.meters = tuple(meters)
        self.reason = reason

    def start(self) -> None:
        for m in self.meters:
            m.start()

    def stop(self) -> EnergyReading:
        total = NO_ENERGY
        for m in self.meters:
            total = total + m.stop()
        return total


def detect_meter(
    device: str = "auto",
    *,
    rapl_root: Path | str = DEFAULT_RAPL_ROOT,
    nvml_read: Callable[[], float] | None = None,
    estimate: Estimate | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> EnergyMeter:
    """The best meter this machine offers, its `reason` saying what was chosen and why the rest were not.

    `device` "auto" adds the GPU's NVML counter and the CPU's RAPL counters (whichever can be read),
    "gpu" tries NVML only, "cpu" RAPL only; with nothing readable it is an `EstimateMeter` (device
    "gpu" estimates for a GPU, otherwise a CPU). `nvml_read` replaces nvidia-ml-py (see `NvmlMeter`).
    """
    if device not in ("auto", *DEVICES):
        raise ConfigError(f"unknown energy device {device!r}: use 'auto', 'cpu' or 'gpu'")
    found: list[EnergyMeter] = []
    why_not: list[str] = []
    if device in ("auto", "gpu"):
        nvml = NvmlMeter(nvml_read, clock=clock)
        try:
            nvml.check()
            found.append(nvml)
        except ConfigError as exc:  # MissingDependencyError is a ConfigError
            why_not.append(f"NVML: {exc}")
    if device in ("auto", "cpu"):
        rapl = RaplMeter(rapl_root, clock=clock)
        try:
            rapl.zones()
            found.append(rapl)
        except ConfigError as exc:
            why_not.append(f"RAPL: {exc}")
    skipped = f"; not measured: {'; '.join(why_not)}" if why_not else ""
    if len(found) == 1:
        found[0].reason = f"measured with {found[0].reason}{skipped}"
        return found[0]
    if found:
        return _SumMeter(found, "measured with " + " + ".join(m.reason for m in found) + skipped)
    return EstimateMeter(
        estimate,
        device="gpu" if device == "gpu" else "cpu",
        reason="estimated, no hardware counter: " + "; ".join(why_not),
        clock=clock,
    )
