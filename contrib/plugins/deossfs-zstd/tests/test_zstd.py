"""The zstd stage on its own: round trips, declining incompressible data, bad options and
bad bodies refused, and the stage found through its entry point by deossfs."""

from __future__ import annotations

import io
import os

import pytest
import zstandard
from deossfs_zstd import ZstdStage


def encode(stage: ZstdStage, data: bytes) -> tuple[dict | None, bytes]:
    sink = io.BytesIO()
    params = stage.encode(io.BytesIO(data), sink)
    return (dict(params) if params is not None else None), sink.getvalue()


def decode(stage: ZstdStage, body: bytes, params: dict) -> bytes:
    sink = io.BytesIO()
    stage.decode(io.BytesIO(body), sink, params)
    return sink.getvalue()


@pytest.mark.parametrize("level", [1, 3, 19])
def test_text_round_trips_smaller(level: int) -> None:
    data = b"".join(b"line %d of a log that repeats itself\n" % i for i in range(200_000))
    stage = ZstdStage(level=level)
    params, body = encode(stage, data)
    assert params == {"format": "zstd", "level": level}
    assert len(body) < len(data) // 5
    assert decode(stage, body, params) == data
    assert zstandard.decompress(body, max_output_size=len(data)) == data  # a standard frame


def test_incompressible_data_is_declined() -> None:
    stage = ZstdStage()
    assert encode(stage, os.urandom(3 * 1024 * 1024))[0] is None


def test_data_that_stops_compressing_after_the_sample_is_declined() -> None:
    stage = ZstdStage(sample=64 * 1024)
    data = bytes(64 * 1024) + os.urandom(4 * 1024 * 1024)  # zeros, then noise
    assert encode(stage, data)[0] is None


def test_a_small_file_round_trips() -> None:
    stage = ZstdStage()
    data = b"a" * 5000
    params, body = encode(stage, data)
    assert params is not None and decode(stage, body, params) == data


@pytest.mark.parametrize("options", [{"level": 0}, {"level": 23}, {"level": "3"},
                                     {"min_saving": 1.5}, {"sample": 10}])
def test_bad_options_are_refused(options: dict) -> None:
    with pytest.raises(ValueError):
        ZstdStage(**options)


def test_a_damaged_body_is_an_error_not_garbage() -> None:
    stage = ZstdStage()
    params, body = encode(stage, b"compress me " * 100_000)
    assert params is not None
    with pytest.raises(zstandard.ZstdError):
        decode(stage, body[: len(body) // 2] + bytes(100) + body[len(body) // 2 + 100:], params)
    with pytest.raises(ValueError):
        decode(stage, body, {"format": "gzip"})


def test_the_entry_point_makes_a_deossfs_processing_stage() -> None:
    from importlib.metadata import entry_points

    import deossfs

    (entry,) = entry_points(group="deossfs.processing", name="zstd")
    stage = entry.load()(level=5)
    assert isinstance(stage, ZstdStage) and stage.level == 5
    assert isinstance(stage, deossfs.ProcessingStage)
