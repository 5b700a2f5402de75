"""Which manifests of an image index `hubcache warm` fetches: those of the host's platform, or of
each `--platform OS/ARCH[/VARIANT]`, matched as containerd's default matcher does (arm64 is
arm64/v8; an entry with no variant matches any)."""

from __future__ import annotations

import platform as host
from dataclasses import dataclass
from typing import Any

_MACHINES = {"x86_64": ("amd64", ""), "amd64": ("amd64", ""), "aarch64": ("arm64", "v8"), "arm64": ("arm64", "v8"),
             "armv7l": ("arm", "v7"), "armv6l": ("arm", "v6"), "i686": ("386", ""), "i386": ("386", ""),
             "ppc64le": ("ppc64le", ""), "s390x": ("s390x", ""), "riscv64": ("riscv64", "")}


@dataclass(frozen=True)
class Platform:
    os: str
    architecture: str
    variant: str = ""

    def __str__(self) -> str:
        return "/".join(p for p in (self.os, self.architecture, self.variant) if p)

    def matches(self, entry: dict[str, Any]) -> bool:
        """Whether an index entry's `platform` object is this platform."""
        if str(entry.get("os", "")) != self.os or str(entry.get("architecture", "")) != self.architecture:
            return False
        theirs = str(entry.get("variant", "")) or ("v8" if self.architecture == "arm64" else "")
        return not self.variant or not theirs or theirs == self.variant


def parse(text: str) -> Platform:
    """`linux/amd64`, `linux/arm64/v8`, `linux/arm/v7`; `arm64` alone means linux. ValueError otherwise."""
    parts = text.strip().lower().split("/")
    if len(parts) == 1:
        parts = ["linux", *parts]
    if len(parts) > 3 or not all(parts):
        raise ValueError(f"--platform {text!r}: give OS/ARCH or OS/ARCH/VARIANT, e.g. linux/amd64 or linux/arm/v7")
    variant = parts[2] if len(parts) == 3 else ("v8" if parts[1] == "arm64" else "")
    return Platform(parts[0], parts[1], variant)


def of_host() -> Platform:
    arch, variant = _MACHINES.get(host.machine().lower(), (host.machine().lower(), ""))
    return Platform(host.system().lower() or "linux", arch, variant)


def select(index: dict[str, Any], wanted: list[Platform]) -> tuple[list[dict[str, Any]], list[Platform]]:
    """The index's manifest entries for the wanted platforms (the first match of each), and the
    platforms it has no manifest for."""
    chosen: list[dict[str, Any]] = []
    missing: list[Platform] = []
    entries = [m for m in index.get("manifests", []) if isinstance(m, dict)]
    for p in wanted:
        match = next((m for m in entries if isinstance(m.get("platform"), dict) and p.matches(m["platform"])), None)
        if match is None:
            missing.append(p)
        elif match not in chosen:
            chosen.append(match)
    return chosen, missing
