"""What the machine is: CPU, memory, OS, library versions, load, and which interpreter backends work here."""

from __future__ import annotations

import os
import platform
import time

import numpy as np

from ... import __version__

__all__ = ['describe_machine', 'importable', 'installed_backends', 'machine_info', 'tensorflow_available']


def machine_info() -> dict:
    """CPU, cores, memory, OS, Python and library versions, load: the line every table carries."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith(("model name", "hardware", "cpu model")):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    mem = None
    try:
        mem = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        pass
    import PIL

    return {"cpu": cpu, "machine": platform.machine(), "cpus": os.cpu_count(), "usable_cpus": usable,
            "memory_gb": mem, "os": platform.platform(terse=True), "python": platform.python_version(),
            "numpy": np.__version__, "pillow": PIL.__version__, "cxr_edge": __version__,
            "load_avg": [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None,
            "date": time.strftime("%Y-%m-%d %H:%M %Z")}


def describe_machine(m: dict) -> str:
    return (f"{m['cpu']} ({m['machine']}), {m['usable_cpus']} of {m['cpus']} CPUs usable, "
            f"{m['memory_gb']} GB, {m['os']}, Python {m['python']}, numpy {m['numpy']}, Pillow {m['pillow']}; "
            f"load average {m['load_avg']} at start")


def importable(name: str) -> bool:
    """Whether ``name`` could be imported, without importing it (TensorFlow takes seconds)."""
    import importlib.util

    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):  # a broken install, or an import blocker
        return False


def tensorflow_available() -> bool:
    return importable("tensorflow") and importable("tf_keras")


def installed_backends() -> list[str]:
    """The interpreter backends that work here (TensorFlow's only looked up: importing it costs seconds)."""
    from ...errors import BackendError
    from ...runtime.backends import BACKENDS
    from ...runtime.interpreter import interpreter_class

    def usable(name):
        if name == "tf.lite":
            return importable("tensorflow")
        try:
            return interpreter_class(name) is not None
        except BackendError:
            return False

    return [name for name in BACKENDS if usable(name)]

