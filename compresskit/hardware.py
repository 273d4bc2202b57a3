"""What the machine computes with: the CPU and the matrix instructions its kernels may use.

Float results differ in their last bits between CPUs (kernels pick AVX2, AVX-512 or AMX code) and
thread counts; environment.json records these facts so two runs can be compared knowingly.
"""

from __future__ import annotations

import platform
from functools import cache
from pathlib import Path
from typing import Any

import torch

# flags that change which matrix kernels run (bf16/int8 units included)
MATRIX_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "avx_vnni", "amx_bf16", "amx_int8",
                "amx_tile")


@cache
def cpu() -> dict[str, Any]:
    model, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                model = value.strip()
            elif key.strip() in ("flags", "Features"):
                flags = set(value.split())
                break
    except OSError:  # not Linux: what platform knows
        pass
    return {"model": model, "matrix_instructions": [f for f in MATRIX_FLAGS if f in flags]}


def environment() -> dict[str, Any]:
    return {"cpu": cpu(), "torch_threads": torch.get_num_threads(), "platform": platform.platform(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
