"""A deossfs scheduling policy: nodes inside a latitude/longitude box only (the
contract: deossfs docs/extending.md). Pure and quick: `rank` only filters what it is
given, so deossfs may call it on its event loop."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["Box", "RegionPolicy"]


@dataclass(frozen=True)
class Box:
    """south..north latitudes, west..east longitudes (west > east crosses 180°)."""

    south: float
    west: float
    north: float
    east: float

    @classmethod
    def around(cls, points: Sequence[tuple[float, float]]) -> Box:
        lats = [p[0] for p in points]
        lons = [p[1] for p in points]
        return cls(min(lats), min(lons), max(lats), max(lons))

    def contains(self, lat: float, lon: float) -> bool:
        if not self.south <= lat <= self.north:
            return False
        if self.west <= self.east:
            return self.west <= lon <= self.east
        return lon >= self.west or lon <= self.east


def _point(value: Any, where: str) -> tuple[float, float]:
    try:
        lat, lon = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"{where} is [latitude, longitude], not {value!r}") from None
    if not (-90 <= lat <= 90 and -180 <= lon <= 180):
        raise ValueError(f"{where}: latitude is -90..90 and longitude -180..180, not {value!r}")
    return lat, lon


class RegionPolicy:
    """Made by deossfs with the options of `[scheduling.options.region]`."""

    def __init__(self, box: Sequence[float] | None = None,
                 nodes: Mapping[str, Sequence[float]] | None = None) -> None:
        self.box: Box | None = None
        if box is not None:
            if len(box) != 4:
                raise ValueError(f"box is [south, west, north, east], not {box!r}")
            south, west = _point(box[:2], "box's south-west corner")
            north, east = _point(box[2:], "box's north-east corner")
            if south > north:
                raise ValueError(f"box's south ({south}) is north of its north ({north})")
            self.box = Box(south, west, north, east)
        self.places = {key: _point(value, f"nodes[{key!r}]") for key, value in (nodes or {}).items()}

    def place_of(self, account: str, endpoint: str) -> tuple[float, float] | None:
        return self.places.get(account) or self.places.get(endpoint.rstrip("/"))

    def region_for(self, placement: Any) -> Box | None:
        """The upload's own region (three or more points, as DeOSS), else the configured box."""
        area = tuple(getattr(placement, "area", ()) or ())
        if len(area) >= 3:
            return Box.around(area)
        return self.box

    def rank(self, candidates: Sequence[Any], request: Any) -> Sequence[Any]:
        box = self.region_for(request.placement)
        if box is None:
            return list(candidates)
        inside = []
        for candidate in candidates:
            place = self.place_of(candidate.account, candidate.endpoint)
            if place is not None and box.contains(*place):
                inside.append(candidate)
        return inside
