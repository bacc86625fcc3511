"""The two plug-in seams without a network: the processing envelope and what a stage may
and may not do; the policy chain and what a policy's answer must be."""

from __future__ import annotations

import io
import os
import random
from pathlib import Path

import pytest

from deossfs.chain.interface import MinerState, StorageNode
from deossfs.errors import MissingPlugin, NotEnoughNodes, PluginError
from deossfs.processing.pipeline import bytes_reader
from deossfs.processing.stages import (
    MAGIC,
    IdentityStage,
    decode_body,
    encode_source,
    envelope,
    load_stage,
    parse_header,
    starts_with_magic,
)
from deossfs.scheduling.policies import (
    DEFAULT_POLICIES,
    NodeCandidate,
    Placement,
    PlacementRequest,
    load_policies,
    run_policies,
)
from deossfs.scheduling.selector import NodeSelector

DATA = os.urandom(300_000)


class Reverse:
    """A stage that reverses the bytes (a transformation anyone can check)."""

    def encode(self, source, sink):  # noqa: ANN001, ANN201
        sink.write(source.read()[::-1])
        return {"how": "reversed"}

    def decode(self, source, sink, params):  # noqa: ANN001, ANN201
        assert params == {"how": "reversed"}
        sink.write(source.read()[::-1])


def encode(stage: object, tmp_path: Path, data: bytes = DATA, verify: bool = True):  # noqa: ANN201
    return encode_source("test", stage, bytes_reader(data), len(data), tmp_path / "spool",  # type: ignore[arg-type]
                         verify=verify)


def stored_stream(staged) -> bytes:  # noqa: ANN001
    out = bytearray(staged.size)
    assert staged.reader()(0, memoryview(out)) == staged.size
    return bytes(out)


def test_the_envelope_records_stage_params_size_and_hash(tmp_path: Path) -> None:
    staged = encode(Reverse(), tmp_path)
    stream = stored_stream(staged)
    header = parse_header(stream)
    assert stream.startswith(MAGIC) and header == staged.header
    assert (header.stage, header.params, header.size) == ("test", {"how": "reversed"}, len(DATA))
    assert stream[header.length:] == DATA[::-1]  # the body is exactly what the stage wrote
    out = io.BytesIO()
    decode_body("test", Reverse(), header, io.BytesIO(stream[header.length:]), out.write)
    assert out.getvalue() == DATA


def test_plain_bytes_have_no_envelope_and_magic_is_detected() -> None:
    assert parse_header(DATA) is None
    assert not starts_with_magic(bytes_reader(DATA), len(DATA))
    assert starts_with_magic(bytes_reader(MAGIC + DATA), len(DATA) + len(MAGIC))
    # bytes that begin like an envelope and are none (another tool's file) read as they are
    assert parse_header(MAGIC + b"\x00\x00\x00\x05{bad}") is None
    assert parse_header(MAGIC + b"\x00\x01\x00\x00{}") is None


def test_a_declining_stage_leaves_the_file_as_it_is(tmp_path: Path) -> None:
    class Declines(Reverse):
        def encode(self, source, sink):  # noqa: ANN001, ANN201
            source.read(10)
            sink.write(b"partial")
            return None

    assert encode(Declines(), tmp_path) is None


@pytest.mark.parametrize("verify", [True, False])
def test_a_stage_that_raises_is_named(tmp_path: Path, verify: bool) -> None:
    class Raises(Reverse):
        def encode(self, source, sink):  # noqa: ANN001, ANN201
            raise RuntimeError("out of ideas")

    with pytest.raises(PluginError, match="processing stage 'test' failed while encoding.*out of ideas"):
        encode(Raises(), tmp_path, verify=verify)


def test_a_stage_that_stops_reading_is_refused(tmp_path: Path) -> None:
    class Stops(Reverse):
        def encode(self, source, sink):  # noqa: ANN001, ANN201
            sink.write(source.read(1000))
            return {}

    with pytest.raises(PluginError, match="read 1000 of the file's 300000 bytes"):
        encode(Stops(), tmp_path)


def test_wrong_sizes_and_wrong_bytes_are_caught_by_verify(tmp_path: Path) -> None:
    class Loses(Reverse):
        def decode(self, source, sink, params):  # noqa: ANN001, ANN201
            sink.write(source.read()[::-1][:-1])

    class Adds(Reverse):
        def decode(self, source, sink, params):  # noqa: ANN001, ANN201
            sink.write(source.read()[::-1] + b"!")

    class Garbles(Reverse):
        def decode(self, source, sink, params):  # noqa: ANN001, ANN201
            sink.write(bytes(len(source.read())))

    with pytest.raises(PluginError, match="gave back 299999 bytes; the file had 300000"):
        encode(Loses(), tmp_path)
    with pytest.raises(PluginError, match="gave back more than the file's 300000 bytes"):
        encode(Adds(), tmp_path)
    with pytest.raises(PluginError, match="other bytes than were stored"):
        encode(Garbles(), tmp_path)
    # without verify the put goes ahead; the read is what catches it
    staged = encode(Loses(), tmp_path, verify=False)
    stream = stored_stream(staged)
    with pytest.raises(PluginError, match="'test' gave back 299999 bytes"):
        decode_body("test", Loses(), staged.header, io.BytesIO(stream[staged.header.length:]),
                    lambda _view: None)


def test_parameters_must_be_json_and_small(tmp_path: Path) -> None:
    class Odd(Reverse):
        def encode(self, source, sink):  # noqa: ANN001, ANN201
            sink.write(source.read())
            return {"when": object()}

    with pytest.raises(PluginError, match="not JSON"):
        encode(Odd(), tmp_path)
    with pytest.raises(PluginError, match="parameters"):
        envelope("big", {"x": "y" * 70_000}, 1, "0" * 64)


def test_stages_are_found_by_name() -> None:
    assert isinstance(load_stage("identity"), IdentityStage)
    with pytest.raises(MissingPlugin, match="no processing stage named 'nosuch'.*deossfs.processing"):
        load_stage("nosuch")
    with pytest.raises(PluginError, match="refused its options"):
        load_stage("identity", {"level": 3})


# ---- policies -----------------------------------------------------------------------------


def nodes(count: int) -> list[StorageNode]:
    return [StorageNode(f"node{i:02d}", f"http://127.0.0.1:{20000 + i}", MinerState.POSITIVE)
            for i in range(count)]


def candidates(count: int) -> list[NodeCandidate]:
    return [NodeCandidate(n, rtt=0.001 * i) for i, n in enumerate(nodes(count))]


def run(policy: object, count: int = 12, offered: int = 14) -> list[NodeCandidate]:
    request = PlacementRequest(count, tuple(range(count)), Placement(), random.Random(1))
    return run_policies([("custom", policy)], candidates(offered), request)  # type: ignore[list-item]


class Answer:
    def __init__(self, answer):  # noqa: ANN001
        self.answer = answer

    def rank(self, candidates, request):  # noqa: ANN001, ANN201
        return self.answer(list(candidates))


def test_a_policy_may_narrow_and_reorder() -> None:
    chosen = run(Answer(lambda c: list(reversed(c))[:12]))
    assert [c.account for c in chosen] == [f"node{i:02d}" for i in range(13, 1, -1)]
    # accounts or nodes will do as well as candidates
    assert len(run(Answer(lambda c: [x.account for x in c]))) == 14
    assert len(run(Answer(lambda c: [x.node for x in c]))) == 14


@pytest.mark.parametrize("answer, message", [
    (lambda c: c[:11] + [c[0]], "chose node node00 twice"),
    (lambda c: c[:11] + ["cXnobody"], "chose node cXnobody, which it was not offered"),
    (lambda c: c[:11] + [42], "chose node 42"),
    (lambda c: 1 / 0, "scheduling policy 'custom' failed: ZeroDivisionError"),
])
def test_a_policy_that_breaks_the_contract_is_named(answer, message: str) -> None:  # noqa: ANN001
    with pytest.raises(PluginError, match=message):
        run(Answer(answer))


def test_a_policy_that_leaves_too_few_is_named() -> None:
    with pytest.raises(NotEnoughNodes, match="scheduling policy 'custom' left 5 of 14 usable storage nodes, 12 needed"):
        run(Answer(lambda c: c[:5]))


def test_the_default_chain_is_the_builtins() -> None:
    loaded = load_policies(DEFAULT_POLICIES, {}, [], [])
    assert [name for name, _ in loaded] == ["blacklist", "nearby", "pinned"]
    with pytest.raises(MissingPlugin, match="no scheduling policy named 'nosuch'"):
        load_policies(["blacklist", "nosuch"], {}, [], [])


def test_the_selector_takes_its_policies_lazily() -> None:
    selector = NodeSelector(policies=["blacklist", "nosuch"])  # made without complaint
    with pytest.raises(MissingPlugin):
        selector.choose(nodes(14))


def test_an_uploads_pins_reach_the_pinned_policy() -> None:
    selector = NodeSelector(rng=random.Random(3))
    pinned = tuple(f"node{i:02d}" for i in range(2, 14))
    chosen = selector.choose(nodes(16), placement=Placement(preferred=pinned))
    assert sorted(n.account for n in chosen) == sorted(pinned)
