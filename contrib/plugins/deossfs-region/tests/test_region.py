"""The region policy on its own: which candidates it keeps for a configured box and for
an upload's own points, bad options refused, and its entry point."""

from __future__ import annotations

import pytest
from deossfs_region import Box, RegionPolicy

import deossfs

BERLIN, MUNICH, PARIS, TOKYO = (52.52, 13.40), (48.14, 11.58), (48.86, 2.35), (35.68, 139.69)
GERMANY = [47.0, 5.5, 55.0, 15.0]


def candidates(places: dict[str, tuple[float, float] | None]) -> list[deossfs.NodeCandidate]:
    return [deossfs.NodeCandidate(deossfs.StorageNode(name, f"http://{name}:15001", "positive"))
            for name in places]


def request(area: tuple = ()) -> deossfs.PlacementRequest:
    return deossfs.PlacementRequest(count=2, placement=deossfs.Placement(area=area))


def names(chosen: list) -> list[str]:
    return [c.account for c in chosen]


def test_keeps_the_nodes_inside_the_configured_box_in_order() -> None:
    places = {"berlin": BERLIN, "paris": PARIS, "munich": MUNICH, "tokyo": TOKYO, "nowhere": None}
    policy = RegionPolicy(box=GERMANY, nodes={k: v for k, v in places.items() if v})
    assert names(policy.rank(candidates(places), request())) == ["berlin", "munich"]


def test_an_uploads_own_points_replace_the_box() -> None:
    places = {"berlin": BERLIN, "paris": PARIS, "tokyo": TOKYO}
    policy = RegionPolicy(box=GERMANY, nodes=places)
    around_paris = ((48.0, 1.0), (50.0, 1.0), (49.0, 4.0))
    assert names(policy.rank(candidates(places), request(around_paris))) == ["paris"]


def test_nodes_are_found_by_endpoint_too() -> None:
    policy = RegionPolicy(box=GERMANY, nodes={"http://munich:15001": MUNICH})
    assert names(policy.rank(candidates({"munich": MUNICH}), request())) == ["munich"]


def test_without_a_box_it_leaves_the_choice_to_others() -> None:
    places = {"berlin": BERLIN, "tokyo": TOKYO}
    assert names(RegionPolicy(nodes=places).rank(candidates(places), request())) == ["berlin", "tokyo"]


def test_a_box_across_the_antimeridian() -> None:
    box = Box(-50, 170, -30, -175)  # around New Zealand's east
    assert box.contains(-40, 175) and box.contains(-40, -179) and not box.contains(-40, 0)


@pytest.mark.parametrize("options", [
    {"box": [1, 2, 3]}, {"box": [60, 0, 50, 10]}, {"box": [0, 0, 95, 10]},
    {"nodes": {"a": [1]}}, {"nodes": {"a": ["x", 2]}},
])
def test_bad_options_are_refused(options: dict) -> None:
    with pytest.raises(ValueError):
        RegionPolicy(**options)


def test_the_entry_point_makes_a_deossfs_scheduling_policy() -> None:
    from importlib.metadata import entry_points

    (entry,) = entry_points(group="deossfs.scheduling", name="region")
    policy = entry.load()(box=GERMANY)
    assert isinstance(policy, RegionPolicy) and isinstance(policy, deossfs.SchedulingPolicy)
