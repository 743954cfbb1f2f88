"""NVML device access: one GPU, addressed by UUID, read without knowing what runs on it.

pynvml is imported on first use, so importing this module never fails on a machine without the
NVIDIA driver; every NVML failure surfaces as a `TelemetryError` subclass.
"""

from __future__ import annotations

import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any

MIB = 1 << 20

_init_lock = threading.Lock()
_nvml_module: ModuleType | None = None


class TelemetryError(Exception):
    """Base of every error raised by the telemetry layer."""


class NvmlUnavailableError(TelemetryError):
    """NVML cannot be loaded or initialised on this node, or it sees no GPU."""


class GpuNotFoundError(TelemetryError):
    """NVML knows no GPU with the given UUID or index on this node."""


class EnergyCounterUnsupportedError(TelemetryError):
    """The GPU has no total-energy counter (older than Volta, or the driver refuses)."""


class NvmlCallError(TelemetryError):
    """An NVML call failed; `code` is NVML's return code."""

    def __init__(self, function: str, code: int | None, message: str) -> None:
        self.function = function
        self.code = code
        super().__init__(f"{function}: {message}")


class NvmlNotSupportedError(NvmlCallError):
    """The call exists but this GPU or driver does not support it."""


def _nvml() -> ModuleType:
    """Import and initialise pynvml once per process; NVML stays initialised until exit."""
    global _nvml_module
    if _nvml_module is not None:
        return _nvml_module
    with _init_lock:
        if _nvml_module is not None:
            return _nvml_module
        try:
            import pynvml
        except ImportError as exc:
            raise NvmlUnavailableError(f"NVML not available: cannot import pynvml ({exc})") from exc
        try:
            pynvml.nvmlInit()
        except pynvml.NVMLError as exc:
            raise NvmlUnavailableError(f"NVML not available: {exc}") from exc
        _nvml_module = pynvml
        return pynvml


def _call(function: str, *args: Any) -> Any:
    """Call pynvml.<function>, turning NVMLError into a typed TelemetryError."""
    nv = _nvml()
    try:
        return getattr(nv, function)(*args)
    except nv.NVMLError as exc:
        code = getattr(exc, "value", None)
        if code == nv.NVML_ERROR_NOT_SUPPORTED:
            raise NvmlNotSupportedError(function, code, str(exc)) from exc
        if code in (
            nv.NVML_ERROR_NOT_FOUND,
            nv.NVML_ERROR_INVALID_ARGUMENT,
        ) and function.startswith("nvmlDeviceGetHandleBy"):
            raise GpuNotFoundError(f"no GPU {args[0]!r} on this node ({exc})") from exc
        raise NvmlCallError(function, code, str(exc)) from exc


def _optional(function: str, *args: Any) -> Any:
    """Like _call, but None where the GPU does not support the query (e.g. utilisation under
    MIG)."""
    try:
        return _call(function, *args)
    except NvmlNotSupportedError:
        return None


def nvml_status() -> tuple[bool, str | None]:
    """Whether NVML can measure on this node, and if not, a sentence saying why."""
    try:
        count = _call("nvmlDeviceGetCount")
    except TelemetryError as exc:
        return False, str(exc)
    if count == 0:
        return False, "no NVIDIA GPU on this node"
    return True, None


def device_count() -> int:
    """GPUs NVML sees on this node (all of them: NVML ignores CUDA_VISIBLE_DEVICES)."""
    count: int = _call("nvmlDeviceGetCount")
    return count


def uuids_for_indices(indices: Sequence[int | str]) -> list[str]:
    """NVML UUIDs for a worker's visible devices.

    NVML ignores CUDA_VISIBLE_DEVICES and numbers GPUs in PCI bus order, so pass the physical
    indices (the entries of CUDA_VISIBLE_DEVICES, Ray's accelerator ids), not torch's 0..n-1,
    and export CUDA_DEVICE_ORDER=PCI_BUS_ID so that CUDA agrees. Entries already given as
    "GPU-..." UUIDs are checked and passed through; MIG slices are refused because NVML does
    not meter their energy.
    """
    uuids = []
    for entry in indices:
        text = str(entry).strip()
        if text.isdigit():
            handle = _call("nvmlDeviceGetHandleByIndex", int(text))
            uuids.append(_call("nvmlDeviceGetUUID", handle))
        elif text.startswith("GPU-"):
            _call("nvmlDeviceGetHandleByUUID", text)
            uuids.append(text)
        else:
            raise ValueError(
                f"cannot resolve device {entry!r}: need a GPU index or a GPU-... UUID, "
                "not a MIG slice (NVML has no energy counter for MIG slices)"
            )
    return uuids


@dataclass(frozen=True)
class GpuSample:
    """One cheap reading of a GPU; fields are None where the GPU does not report them.

    memory_used_mib is in MiB (2**20 bytes), as nvidia-smi reports it. throttle_reasons is NVML's
    clocks-event (throttle) bitmask; 0 means nothing is holding the clocks back.
    """

    t_s: float
    power_w: float | None
    temperature_c: float | None
    sm_clock_mhz: int | None
    mem_clock_mhz: int | None
    memory_used_mib: float | None
    utilization_pct: float | None
    throttle_reasons: int | None


class DeviceReader(ABC):
    """What the sampler needs from a GPU, so the measuring logic runs against a scripted device."""

    uuid: str
    name: str
    supports_energy_counter: bool
    power_method: str

    @abstractmethod
    def energy_mj(self) -> int:
        """Total-energy counter in mJ; raises EnergyCounterUnsupportedError where there is none."""

    @abstractmethod
    def power_instant_w(self) -> float:
        """Current power draw in W (cheap; used for the time series and the idle baseline)."""

    @abstractmethod
    def sample(self) -> GpuSample:
        """A cheap reading of power, temperature, clocks, memory, utilisation and throttling."""

    @abstractmethod
    def environment(self) -> dict[str, Any]:
        """Static facts that qualify a measurement (model, driver, power limit, MIG, processes)."""

    @abstractmethod
    def compute_process_pids(self) -> list[int]:
        """PIDs of compute processes on the GPU, to spot a neighbour spoiling the measurement."""


DeviceFactory = Callable[[str], DeviceReader]


class GpuDevice(DeviceReader):
    """A real GPU through NVML, opened by UUID (never by index, which depends on the process)."""

    def __init__(self, uuid: str) -> None:
        self.uuid = uuid
        self._handle = _call("nvmlDeviceGetHandleByUUID", uuid)
        self.name = _call("nvmlDeviceGetName", self._handle)
        self.supports_energy_counter = self._probe_energy_counter()
        self._power_field, self.power_method = self._resolve_power_method()
        self._throttle_function = self._resolve_throttle_function()

    def _probe_energy_counter(self) -> bool:
        """Volta or newer (as Zeus checks), confirmed by one read since drivers may still refuse."""
        nv = _nvml()
        arch = _optional("nvmlDeviceGetArchitecture", self._handle)
        if arch is not None and arch < nv.NVML_DEVICE_ARCH_VOLTA:
            return False
        try:
            _call("nvmlDeviceGetTotalEnergyConsumption", self._handle)
        except NvmlNotSupportedError:
            return False
        return True

    def _resolve_power_method(self) -> tuple[Any, str]:
        """Prefer the instant-power field; nvmlDeviceGetPowerUsage is a 1 s average on Ampere+."""
        nv = _nvml()
        field = getattr(nv, "NVML_FI_DEV_POWER_INSTANT", None)
        if field is not None:
            scope = getattr(nv, "NVML_POWER_SCOPE_GPU", None)
            field_id = field if scope is None else (field, scope)
            if self._read_field_w(field_id) is not None:
                return field_id, "power_instant"
        return None, "power_usage_avg"

    def _resolve_throttle_function(self) -> str:
        """nvmlDeviceGetCurrentClocksEventReasons is the new name; older drivers only have the
        old."""
        try:
            _call("nvmlDeviceGetCurrentClocksEventReasons", self._handle)
            return "nvmlDeviceGetCurrentClocksEventReasons"
        except (AttributeError, NvmlCallError):
            return "nvmlDeviceGetCurrentClocksThrottleReasons"

    def _read_field_w(self, field_id: Any) -> float | None:
        """A power field in W, or None when NVML reports it unsupported for this GPU."""
        nv = _nvml()
        value = _call("nvmlDeviceGetFieldValues", self._handle, [field_id])[0]
        if value.nvmlReturn != nv.NVML_SUCCESS:
            return None
        return _field_number(nv, value) / 1000.0

    def energy_mj(self) -> int:
        """Counter of energy used since the driver loaded, mJ; ~4 ms a call, updated every
        ~100 ms."""
        if not self.supports_energy_counter:
            raise EnergyCounterUnsupportedError(f"{self.name} ({self.uuid}) has no energy counter")
        return int(_call("nvmlDeviceGetTotalEnergyConsumption", self._handle))

    def power_instant_w(self) -> float:
        """Instant power in W from the field API (~6 us), else the driver's averaged reading."""
        if self._power_field is not None:
            power_w = self._read_field_w(self._power_field)
            if power_w is None:
                raise NvmlCallError("nvmlDeviceGetFieldValues", None, "instant power field failed")
            return power_w
        return _call("nvmlDeviceGetPowerUsage", self._handle) / 1000.0

    def sample(self) -> GpuSample:
        """Everything cheap in one go; the slow energy counter is deliberately left out."""
        nv = _nvml()
        memory = _optional("nvmlDeviceGetMemoryInfo", self._handle)
        utilization = _optional("nvmlDeviceGetUtilizationRates", self._handle)
        return GpuSample(
            t_s=time.time(),
            power_w=self.power_instant_w(),
            temperature_c=_optional(
                "nvmlDeviceGetTemperature", self._handle, nv.NVML_TEMPERATURE_GPU
            ),
            sm_clock_mhz=_optional("nvmlDeviceGetClockInfo", self._handle, nv.NVML_CLOCK_SM),
            mem_clock_mhz=_optional("nvmlDeviceGetClockInfo", self._handle, nv.NVML_CLOCK_MEM),
            memory_used_mib=None if memory is None else memory.used / MIB,
            utilization_pct=None if utilization is None else float(utilization.gpu),
            throttle_reasons=_optional(self._throttle_function, self._handle),
        )

    def compute_process_pids(self) -> list[int]:
        """PIDs as the driver sees them (host PIDs when this runs in a container)."""
        return [proc.pid for proc in _call("nvmlDeviceGetComputeRunningProcesses", self._handle)]

    def environment(self) -> dict[str, Any]:
        """Facts stored with every result so a figure can be judged later."""
        nv = _nvml()
        arch = _optional("nvmlDeviceGetArchitecture", self._handle)
        limit_mw = _optional("nvmlDeviceGetEnforcedPowerLimit", self._handle)
        mig = _optional("nvmlDeviceGetMigMode", self._handle)
        try:
            pids: list[int] | None = self.compute_process_pids()
        except NvmlCallError:
            pids = None
        return {
            "uuid": self.uuid,
            "name": self.name,
            "driver_version": _call("nvmlSystemGetDriverVersion"),
            "cuda_driver_version": _cuda_version_text(_call("nvmlSystemGetCudaDriverVersion")),
            "power_limit_w": None if limit_mw is None else limit_mw / 1000.0,
            "architecture": _arch_names(nv).get(arch, "unknown") if arch is not None else None,
            "architecture_code": arch,
            "mig_enabled": None if mig is None else mig[0] == nv.NVML_DEVICE_MIG_ENABLE,
            "compute_process_count": None if pids is None else len(pids),
            "compute_process_pids": pids,
            "energy_counter_supported": self.supports_energy_counter,
            "power_method": self.power_method,
        }


def _cuda_version_text(version: int) -> str:
    """NVML encodes CUDA 12.8 as 12080."""
    return f"{version // 1000}.{version % 1000 // 10}"


def _arch_names(nv: ModuleType) -> dict[int, str]:
    """NVML architecture codes to names, read from pynvml so new architectures need no edit."""
    prefix = "NVML_DEVICE_ARCH_"
    return {getattr(nv, n): n[len(prefix):].lower() for n in dir(nv) if n.startswith(prefix)}


def _field_number(nv: ModuleType, value: Any) -> float:
    """The number in an nvmlFieldValue_t, read through the union member its valueType names."""
    members = {
        nv.NVML_VALUE_TYPE_DOUBLE: "dVal",
        nv.NVML_VALUE_TYPE_UNSIGNED_INT: "uiVal",
        nv.NVML_VALUE_TYPE_UNSIGNED_LONG: "ulVal",
        nv.NVML_VALUE_TYPE_UNSIGNED_LONG_LONG: "ullVal",
        nv.NVML_VALUE_TYPE_SIGNED_LONG_LONG: "sllVal",
        nv.NVML_VALUE_TYPE_SIGNED_INT: "siVal",
        nv.NVML_VALUE_TYPE_UNSIGNED_SHORT: "usVal",
    }
    return float(getattr(value.value, members.get(value.valueType, "uiVal")))


def free_memory_mib(uuids: Sequence[str]) -> list[float] | None:
    """Device memory free now on each of these GPUs (by UUID), MiB; None when unreadable."""
    try:
        return [_call("nvmlDeviceGetMemoryInfo", _call("nvmlDeviceGetHandleByUUID", uuid)).free
                / 2**20 for uuid in uuids]
    except TelemetryError:
        return None


def used_memory_mib(indices: Sequence[int | str]) -> float | None:
    """Device memory used now on these GPUs (NVML ids), summed, MiB; None when unreadable."""
    try:
        used = [GpuDevice(uuid).sample().memory_used_mib for uuid in uuids_for_indices(indices)]
    except TelemetryError:
        return None
    known = [mib for mib in used if mib is not None]
    return sum(known) if len(known) == len(used) else None
