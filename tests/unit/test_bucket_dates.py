"""Bucket creation dates in the catalog's index: CESS keeps none, so a bucket is dated
when the index created it or first listed it, and keeps that date while it exists."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from deossfs.catalog.index import CatalogIndex


def test_dates_hold_still_and_a_bucket_made_again_is_dated_again(tmp_path: Path) -> None:
    index = CatalogIndex(tmp_path / "index.sqlite")
    try:
        index.bucket_created("made-here", 100)
        assert index.bucket_dates(["made-here", "found"], 200) == {"made-here": 100, "found": 200}
        assert index.bucket_dates(["made-here", "found"], 300) == {"made-here": 100, "found": 200}
        # `found` was deleted elsewhere, then made again: it is dated anew
        assert index.bucket_dates(["made-here"], 400) == {"made-here": 100}
        assert index.bucket_dates(["made-here", "found"], 500) == {"made-here": 100, "found": 500}
        index.set_bucket_state("made-here", dirty=True)  # the bucket's other state keeps its date
        assert index.bucket_dates(["made-here"], 600) == {"made-here": 100}
    finally:
        index.close()
    reopened = CatalogIndex(tmp_path / "index.sqlite")
    try:
        assert reopened.bucket_dates(["made-here"], 700) == {"made-here": 100}
    finally:
        reopened.close()


def test_an_index_from_before_dates_gains_them(tmp_path: Path) -> None:
    path = tmp_path / "index.sqlite"
    old = sqlite3.connect(path)
    old.execute("CREATE TABLE buckets (name TEXT PRIMARY KEY, dirty INTEGER NOT NULL DEFAULT 0, "
                "meta_fid TEXT)")
    old.execute("INSERT INTO buckets (name, dirty, meta_fid) VALUES ('photos', 1, 'f00')")
    old.commit()
    old.close()
    index = CatalogIndex(path)
    try:
        assert index.bucket_state("photos") == (True, "f00")
        assert index.bucket_dates(["photos"], 42) == {"photos": 42}
    finally:
        index.close()
