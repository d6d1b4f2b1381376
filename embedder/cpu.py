"""CPU features that decide reduced-precision compute: model name, SIMD flags, native bf16 and int8 support."""

from __future__ import annotations

import platform
from dataclasses import dataclass

CPUINFO_PATH = "/proc/cpuinfo"
# The /proc/cpuinfo flags that matter for the matrix products: AVX2/AVX-512 for fp32, AVX512_BF16 and AMX-BF16
# for bf16 dot products, VNNI and AMX-INT8 for int8 ones.
FEATURE_FLAGS = (
    "avx2",
    "avx512f",
    "avx512_bf16",
    "avx512_vnni",
    "avx_vnni",
    "amx_tile",
    "amx_bf16",
    "amx_int8",
    "avx512_fp16",
)
BF16_FLAGS = ("avx512_bf16", "amx_bf16")
INT8_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")


@dataclass(frozen=True)
class CpuFeatures:
    """What a CPU offers for reduced-precision matrix products."""

    model_name: str
    flags: frozenset[str]
    # x86 "cpu family" and "model" numbers ("family 25, model 17"): they tell generations apart where a VM's
    # name does not ("AMD EPYC")
    cpuid: str = ""

    @property
    def native_bf16(self) -> bool:
        """Whether bf16 dot products run in hardware (AVX512_BF16 or AMX-BF16), not emulated in fp32."""
        return any(f in self.flags for f in BF16_FLAGS)

    @property
    def native_int8(self) -> bool:
        """Whether int8 dot products run in hardware (VNNI or AMX-INT8)."""
        return any(f in self.flags for f in INT8_FLAGS)

    @property
    def amx(self) -> bool:
        """Whether the CPU has AMX tiles (matrix units: bf16/int8 GEMMs several times AVX-512's)."""
        return "amx_tile" in self.flags

    @property
    def name(self) -> str:
        """The model name, with the family and model numbers where /proc/cpuinfo gives them."""
        return f"{self.model_name} ({self.cpuid})" if self.cpuid else self.model_name

    def summary(self) -> str:
        """One line: the name, the flags of FEATURE_FLAGS it has, and native bf16/int8."""
        have = [f for f in FEATURE_FLAGS if f in self.flags]
        return (
            f"{self.name}; flags: {' '.join(have) or 'none of ' + ', '.join(FEATURE_FLAGS)}; "
            f"native bf16: {'yes' if self.native_bf16 else 'no'}; native int8: "
            f"{'yes' if self.native_int8 else 'no'}"
        )


def parse_cpuinfo(text: str) -> CpuFeatures:
    """CpuFeatures from /proc/cpuinfo text (x86 "flags", ARM "Features"); the first processor's entry is used."""
    name = ""
    numbers: dict[str, str] = {}
    flags: frozenset[str] | None = None
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if not sep:
            continue
        key = key.strip().lower()
        if key in ("model name", "hardware", "cpu model") and not name:
            name = value.strip()
        elif key in ("flags", "features") and flags is None:
            flags = frozenset(value.split())
        elif key in ("cpu family", "model") and value.strip().isdigit():  # x86's numbers, not POWER's text
            numbers.setdefault(key, value.strip())
    cpuid = ", ".join(f"{'family' if k == 'cpu family' else k} {v}" for k, v in sorted(numbers.items()))
    return CpuFeatures(model_name=name or "unknown CPU", flags=flags or frozenset(), cpuid=cpuid)


def cpu_features(path: str = CPUINFO_PATH) -> CpuFeatures:
    """This machine's CpuFeatures, from /proc/cpuinfo (no flags known where it cannot be read)."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return parse_cpuinfo(f.read())
    except OSError:
        return CpuFeatures(model_name=platform.processor() or "unknown CPU", flags=frozenset())
