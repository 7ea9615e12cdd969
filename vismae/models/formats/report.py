"""What a load did, tensor by tensor: printed for people, summarized as JSON for scripts."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

# Lists longer than this are shortened in printed reports and error messages.
SHOWN = 12


@dataclass
class LoadReport:
    source: str
    format: str
    file: str  # the file the tensors were read from ("" for random init)
    loaded: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # renamed, resized, folded ...
    dropped: dict[str, list[str]] = field(default_factory=dict)  # why -> keys skipped on purpose
    missing: list[str] = field(default_factory=list)  # model tensors left at their initial values
    unexpected: list[str] = field(default_factory=list)  # checkpoint tensors with no place in the model
    mismatched: list[str] = field(default_factory=list)
    fresh: list[str] = field(default_factory=list)  # missing by design (the source never had them)
    decoder: str = ""  # pretraining init only: what happened to the decoder

    @property
    def skipped(self) -> int:
        return sum(len(keys) for keys in self.dropped.values()) + len(self.unexpected) + len(self.mismatched)

    def summary(self) -> dict:
        return {
            "format": self.format,
            "source": self.source,
            "loaded": len(self.loaded),
            "skipped": self.skipped,
            "missing": self.missing,
            "fresh": self.fresh,
            "unexpected": self.unexpected,
            **({"decoder": self.decoder} if self.decoder else {}),
        }

    def lines(self) -> list[str]:
        if not self.file:  # nothing was read: random init
            return [f"weights: {self.source}", *(f"  {note}" for note in self.notes)]
        lines = [f"weights: {self.source} read as {self.format} ({self.file})", f"  loaded {len(self.loaded)} tensors"]
        lines += [f"  {note}" for note in self.notes]
        for reason, keys in self.dropped.items():
            lines.append(f"  dropped {len(keys)} ({reason}): {shorten(module_prefixes(keys))}")
        for label, keys in (
            ("fresh (not in the source by design)", self.fresh),
            ("MISSING", self.missing),
            ("UNEXPECTED", self.unexpected),
            ("SHAPE MISMATCH", self.mismatched),
        ):
            if keys:
                lines.append(f"  {label} {len(keys)}: {shorten(keys)}")
        if self.decoder:
            lines.append(f"  decoder: {self.decoder}")
        return lines

    def print(self, file=None) -> None:
        print("\n".join(self.lines()), file=file or sys.stdout, flush=True)


def module_prefixes(keys: list[str]) -> list[str]:
    """``layers_up.0.blocks.1.attn.qkv.weight`` ... -> ``layers_up.*``: a readable digest of many keys."""
    prefixes = []
    for key in keys:
        head, _, rest = key.partition(".")
        prefix = f"{head}.*" if rest else head
        if prefix not in prefixes:
            prefixes.append(prefix)
    return prefixes


def shorten(items: list[str]) -> str:
    shown = ", ".join(items[:SHOWN])
    return shown + (f", ... ({len(items) - SHOWN} more)" if len(items) > SHOWN else "")
