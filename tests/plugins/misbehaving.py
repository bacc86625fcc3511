"""Plug-ins that break the contract on purpose, registered as real entry points by
tests/plugins/conftest.py (a dist-info directory on sys.path)."""

from __future__ import annotations

from typing import Any


class RaisingStage:
    """Raises while encoding."""

    def encode(self, source: Any, sink: Any) -> dict:
        source.read(1000)
        raise RuntimeError("the stage fell over")

    def decode(self, source: Any, sink: Any, params: Any) -> None:
        sink.write(source.read())


class ShortStage:
    """Encodes faithfully and gives one byte too few back."""

    def encode(self, source: Any, sink: Any) -> dict:
        while piece := source.read(1 << 20):
            sink.write(piece)
        return {"short": True}

    def decode(self, source: Any, sink: Any, params: Any) -> None:
        data = source.read()
        sink.write(data[:-1])


class DuplicatePolicy:
    """Names one node twice."""

    def rank(self, candidates: Any, request: Any) -> list:
        chosen = list(candidates)[: request.count - 1]
        return [*chosen, chosen[0]]


class StingyPolicy:
    """Keeps five nodes."""

    def rank(self, candidates: Any, request: Any) -> list:
        return list(candidates)[:5]
