"""What this machine's CPU can do, read from ``/proc/cpuinfo``: the one owner of CPU facts.

The machines this project runs on differ (AVX-512 with AVX512_BF16 and AMX, or AVX2 only), and
so does what TensorFlow does on them: bfloat16 matmuls are ~1.9x float32 where the CPU has
bfloat16 instructions and ~0.87x where it has not, and TensorFlow turns its oneDNN optimisations
on by default only on the newer CPUs.  Precision choices, tests that expect a CPU-dependent
behaviour and benchmark records all read the flags here; nothing hard-codes a CPU kind.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

CPUINFO = "/proc/cpuinfo"
BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})
# TensorFlow (tensorflow/core/util/util.cc, IsMKLEnabled) enables oneDNN by default on x86 Linux
# only where the CPU has one of these; elsewhere (e.g. AVX2-only Zen 3) it stays off and its
# "oneDNN custom operations are on" line never appears.  TF_ENABLE_ONEDNN_OPTS overrides it.
ONEDNN_DEFAULT_FLAGS = frozenset(
    {"avx512_vnni", "avx512_bf16", "avx_vnni", "amx_tile", "amx_int8", "amx_bf16"}
)
SHOWN_FLAGS = (
    "avx2",
    "avx512f",
    "avx512_vnni",
    "avx512_bf16",
    "avx_vnni",
    "amx_tile",
    "amx_bf16",
    "amx_int8",
)


def _cpuinfo_field(name: str) -> str:
    try:
        with open(CPUINFO, encoding="utf-8") as f:
            for line in f:
                if line.startswith(name) and ":" in line:
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags (empty where ``/proc/cpuinfo`` is not readable)."""
    return frozenset(_cpuinfo_field("flags").split())


def cpu_model() -> str:
    return _cpuinfo_field("model name") or "unknown CPU"


def has_bf16(flags: frozenset[str] | None = None) -> bool:
    """bfloat16 instructions (AVX512_BF16 or AMX): TF's bfloat16 matmuls beat float32 only there."""
    return bool((cpu_flags() if flags is None else flags) & BF16_FLAGS)


def training_precision(
    setting: str, layout: str | None = None, flags: frozenset[str] | None = None, gpu_bf16: bool = False
) -> str:
    """The Keras dtype policy a ``train.precision`` setting means on this machine: ``auto`` is
    mixed_bfloat16 where the CPU has bfloat16 instructions (or the GPU in use supports bfloat16) and
    the layout allows it (keras-bert's BERT attention is float32-only), float32 elsewhere; any other
    setting is itself."""
    if setting != "auto":
        return setting
    return "mixed_bfloat16" if (has_bf16(flags) or gpu_bf16) and layout != "bert" else "float32"


def gpu_supports_bf16() -> bool:
    """Whether every GPU TensorFlow sees has compute capability 8.0 or more (bfloat16 matmuls);
    False without a GPU or when TensorFlow is not imported (the driver never imports it for this)."""
    import sys

    tf = sys.modules.get("tensorflow")
    if tf is None:
        return False
    gpus = tf.config.list_physical_devices("GPU")
    details = [tf.config.experimental.get_device_details(g).get("compute_capability", (0, 0)) for g in gpus]
    return bool(details) and all(tuple(c) >= (8, 0) for c in details)


def onednn_on(flags: frozenset[str] | None = None, env: dict | None = None) -> bool:
    """Whether TensorFlow runs with its oneDNN optimisations on this CPU (and so prints
    "oneDNN custom operations are on"): ``TF_ENABLE_ONEDNN_OPTS`` if set, else TF's default."""
    setting = (os.environ if env is None else env).get("TF_ENABLE_ONEDNN_OPTS")
    if setting is not None and setting.strip() != "":
        return setting.strip().lower() in ("1", "true")
    return bool((cpu_flags() if flags is None else flags) & ONEDNN_DEFAULT_FLAGS)


def head_commit(root: str | Path | None = None) -> str:
    """The checkout's commit (``git rev-parse --short HEAD``), "" outside a git checkout."""
    root = Path(root) if root else Path(__file__).resolve().parents[2]
    try:
        done = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True
        )
    except OSError:
        return ""
    return done.stdout.strip() if done.returncode == 0 else ""


def machine_record() -> dict:
    """What every benchmark JSON records of its machine: CPU model, its flags, cores, commit."""
    flags = cpu_flags()
    return {
        "cpu_model": cpu_model(),
        "cpu_flags": sorted(flags),
        "cores": os.cpu_count(),
        "bf16_instructions": has_bf16(flags),
        "onednn_default": bool(flags & ONEDNN_DEFAULT_FLAGS),
        "commit": head_commit(),
    }


def describe() -> str:
    """One line for logs and CI: the model, the cores and the flags that matter here."""
    flags = cpu_flags()
    shown = [f for f in SHOWN_FLAGS if f in flags]
    return f"{cpu_model()}, {os.cpu_count()} cores, flags: {' '.join(shown) or 'none of ' + ' '.join(SHOWN_FLAGS)}"


if __name__ == "__main__":  # .ci/run prints it first
    print(f"CPU: {describe()}")
