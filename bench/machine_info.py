"""What every bench record says of the machine it ran on. Only the standard library: a bench's
process-pool workers import their module again and should pay for nothing more."""

from __future__ import annotations

import os
import platform
from importlib import metadata


def cpu_name() -> str:
    """The CPU's model name where the system tells it (Linux), else what Python knows."""
    cpu = platform.processor() or platform.machine()
    if os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as cpuinfo:
            names = [line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")]
        cpu = names[0] if names else cpu
    return cpu


def package_versions(*packages: str) -> dict[str, str | None]:
    """Each installed distribution's version; None for one that is not installed."""
    versions = {}
    for package in packages:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return versions


def machine(*packages: str) -> dict:
    """CPU, cores, Python and the versions of ``packages``."""
    return {"cpu": cpu_name(), "cores": os.cpu_count(), "python": platform.python_version(), **package_versions(*packages)}
