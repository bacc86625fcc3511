"""The catalog's merge rules (catalog/merge.py) on a real SQLite index: another writer's
metadata object and the chain's listing applied to what the catalog holds."""

from __future__ import annotations

from pathlib import Path

import pytest

from deossfs.catalog.index import CatalogIndex
from deossfs.catalog.merge import apply_listing, apply_object
from deossfs.catalog.protocol import FOREIGN_CTIME_NS, FORMAT, META_KEY, encode_xattrs
from deossfs.catalog.records import ETAG_XATTR, FILE_MODE, ObjectRecord, record_of, s3_xattrs
from deossfs.names import chain_file_name, is_hashed_name

B = "bucket"
#: "now" of the tests; entries' times are T + a little (removals are kept an hour)
T = 10**15
F1, F2, F3 = "1" * 64, "2" * 64, "3" * 64


@pytest.fixture
def index(tmp_path: Path) -> CatalogIndex:
    return CatalogIndex(tmp_path / "index.sqlite")


def file(path: str, c: int, fid: str | None = None, size: int = 0, **extra: object) -> dict:
    """A file entry changed at T + c."""
    c += T
    return {"p": path, "k": "file", "m": FILE_MODE, "u": 1, "g": 1, "a": c, "t": c, "c": c,
            "s": size, "f": fid, "e": 1, **extra}


def meta(*entries: dict, removed: tuple[dict, ...] = ()) -> dict:
    return {"format": FORMAT, "saved_ns": 0, "entries": list(entries), "removed": list(removed)}


def apply(index: CatalogIndex, m: dict, allow_deletes: bool = True) -> tuple[set[str], bool]:
    return apply_object(index, B, m, allow_deletes=allow_deletes, uid=0, gid=0, now_ns=T + 10**6)


def paths(index: CatalogIndex) -> list[str]:
    return [e.path for e in index.all(B)]


def test_the_later_change_wins_and_a_newer_local_one_is_published_again(index: CatalogIndex) -> None:
    index.put(B, file("a", 100, F1, 5))
    index.put(B, file("b", 300, F2, 5))
    lost, republish = apply(index, meta(file("a", 200, F3, 7), file("b", 200, F2, 5, m=0o100600)))
    assert index.get(B, "a").fid == F3 and lost == {F1}  # the replaced version is deleted
    assert index.get(B, "b").entry["m"] == FILE_MODE and republish  # ours is newer: kept


def test_removals_and_deletes_of_a_lone_object(index: CatalogIndex) -> None:
    index.put(B, file("dir/old", 100, F1, 5))
    index.put(B, file("zero", 100))
    index.put(B, file("renamed-here", 100, F2, 5))
    index.record_removal(B, "gone-here", T + 500)
    m = meta(file("dir/new", 100, F1, 5),  # dir/old renamed elsewhere: the FID lives on
             file("gone-here", 400),  # removed here after the other's last change
             file("renamed-here", 100, F2, 5),
             removed=({"p": "zero", "c": T + 200},))
    apply(index, m)
    assert paths(index) == ["dir", "dir/new", "renamed-here"]
    # with unsaved changes here, nothing is taken away but by removals
    index.put(B, file("unsaved", 100))
    apply(index, meta(file("dir/new", 100, F1, 5)), allow_deletes=False)
    assert "unsaved" in paths(index)


def test_a_writer_that_listed_an_object_early_does_not_erase_its_s3_attributes(index: CatalogIndex) -> None:
    record = ObjectRecord("obj", 5, "0" * 32, fid=F1, content_type="text/x", metadata={"a": "b"})
    ours = file("obj", 100, F1, 5, x=encode_xattrs(s3_xattrs(record)))
    index.put(B, ours)
    # the mount found the object on the chain before our metadata object: defaults, later ctime
    _, republish = apply(index, meta(file("obj", 150, F1, 5, m=0o100644)))
    kept = index.get(B, "obj")
    assert republish and kept.ctime_ns > T + 150
    assert record_of("obj", kept.entry).content_type == "text/x" and kept.etag == "0" * 32
    # a new version written elsewhere (another FID) takes them away: they were the old bytes'
    apply(index, meta(file("obj", 10**7, F2, 9)))
    assert index.get(B, "obj").etag == F2[:32] + "-1"


def test_the_catalogs_own_discoveries_lose_every_merge(index: CatalogIndex) -> None:
    files = {F1: ("docs/a.txt", 10), F2: (META_KEY, 3)}
    apply_listing(index, B, {F1, F2}, files, written=set(), uid=0, gid=0, now_ns=T + 500)
    found = index.get(B, "docs/a.txt")
    assert found.foreign_object and found.ctime_ns == FOREIGN_CTIME_NS
    assert paths(index) == ["docs", "docs/a.txt"]  # the metadata object is no object
    apply(index, meta(file("docs/a.txt", -T + 2, F1, 10, m=0o100600)))  # the mount's real attributes
    assert index.get(B, "docs/a.txt").entry["m"] == 0o100600


def test_a_placeholder_goes_once_its_real_name_is_known(index: CatalogIndex) -> None:
    """An object under a hashed chain name, listed before the writer's metadata, shows
    under that name; the metadata naming its FID takes it away even while this side has
    unsaved changes (allow_deletes off), and so does the placeholder an earlier version
    published beside the real name."""
    hashed = chain_file_name("x")
    assert is_hashed_name(hashed) and not is_hashed_name("x") and not is_hashed_name(hashed[:-1] + "g")
    apply_listing(index, B, {F1}, {F1: (hashed, 5)}, written=set(), uid=0, gid=0, now_ns=T + 500)
    assert paths(index) == [hashed] and index.get(B, hashed).foreign_object
    apply(index, meta(file("x", 100, F1, 5), file(hashed, 90, F1, 5)), allow_deletes=False)
    apply_listing(index, B, {F1}, {F1: (hashed, 5)}, written=set(), uid=0, gid=0, now_ns=T + 500)
    assert paths(index) == ["x"]
    # a user's own file of that form, whose FID nothing else names, stays; so does a
    # copy of `x` (same FID) under another key of that form
    copy = chain_file_name("y")
    index.put(B, file(hashed, 200, F2, 5))
    index.put(B, file(copy, 200, F1, 5))
    apply_listing(index, B, {F1, F2}, {F1: (hashed, 5), F2: (chain_file_name(hashed), 5)},
                  written=set(), uid=0, gid=0, now_ns=T + 500)
    assert paths(index) == ["x", hashed, copy]


def test_a_hashed_key_replaced_elsewhere_takes_the_new_version_under_its_name(index: CatalogIndex) -> None:
    """Another writer replaced `x` (listed under its hashed chain name) and deleted the
    version this side holds, while this side's entry is newer (a change of attributes):
    the entry takes the new version, keeps its attributes and its name; it neither goes
    as deleted elsewhere nor leaves a placeholder."""
    index.put(B, file("x", 500, F1, 5, m=0o100600))
    apply_listing(index, B, {F2}, {F2: (chain_file_name("x"), 7)}, written=set(), uid=0, gid=0, now_ns=T + 500)
    assert paths(index) == ["x"]
    assert index.get(B, "x").fid == F2 and index.get(B, "x").entry["m"] == 0o100600


def test_the_listing_removes_what_left_the_chain_unless_written_since(index: CatalogIndex) -> None:
    index.put(B, file("a", 100, F1, 5))
    index.put(B, file("b", 100, F2, 5))
    apply_listing(index, B, set(), {}, written={"b"}, uid=0, gid=0, now_ns=T + 500)
    assert paths(index) == ["b"]


def test_hard_links_follow_their_file(index: CatalogIndex) -> None:
    apply(index, meta(file("f", 100, F1, 5), {"p": "l1", "k": "link", "i": "f"},
                      {"p": "l2", "k": "link", "i": "f"}))
    assert [e.kind for e in index.all(B)] == ["file", "link", "link"]
    # the file's own name removed elsewhere: its first link becomes its own name
    apply(index, meta(file("f", 100, F1, 5), {"p": "l1", "k": "link", "i": "f"},
                      {"p": "l2", "k": "link", "i": "f"}, removed=({"p": "f", "c": T + 200},)),
          allow_deletes=False)
    assert index.get(B, "f") is None and index.get(B, "l1").kind == "file"
    assert index.get(B, "l2").target == "l1" and index.get(B, "l1").entry.get("x") is None
    assert index.get(B, "l1").fid == F1 and ETAG_XATTR not in index.get(B, "l1").entry


def test_of_objects_under_one_name_the_one_stored_last_shows_at_every_listing(index: CatalogIndex) -> None:
    """DeOSS keeps every upload of a name: the listing shows the one latest in the
    bucket's object list, and the next listings do not swap it for the other."""
    names = {F1: ("abc", 5), F2: ("abc", 7), F3: ("abc", 9)}
    for _ in range(3):
        apply_listing(index, B, [F2, F1], names, written=set(), uid=0, gid=0, now_ns=T + 500)
        assert [(e.path, e.fid) for e in index.all(B)] == [("abc", F1)]
    apply_listing(index, B, [F2, F1, F3], names, written=set(), uid=0, gid=0, now_ns=T + 500)
    assert index.get(B, "abc").fid == F3
    apply_listing(index, B, [F2, F1], names, written=set(), uid=0, gid=0, now_ns=T + 500)
    assert index.get(B, "abc").fid == F1  # the latest deleted: the one before it


def test_an_object_only_listed_elsewhere_replaces_nothing_written(index: CatalogIndex) -> None:
    """Another writer published the object it shows under `abc` as listed (ctime
    FOREIGN_CTIME_NS), a later upload of that name than the one this side listed: this
    side takes it, and deletes nothing (DeOSS keeps every upload of a name). A version
    a writer stored is still superseded as before."""
    apply_listing(index, B, [F1], {F1: ("abc", 5)}, written=set(), uid=0, gid=0, now_ns=T + 500)
    listed_there = dict(file("abc", 0, F2, 7), c=FOREIGN_CTIME_NS)
    deletes, _ = apply(index, meta(listed_there), allow_deletes=False)
    assert index.get(B, "abc").fid == F2 and deletes == set()
    deletes, _ = apply(index, meta(file("abc", 100, F3, 9)), allow_deletes=False)
    assert index.get(B, "abc").fid == F3 and deletes == {F2}
