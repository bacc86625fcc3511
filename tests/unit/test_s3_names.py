"""S3 names onto deossfs: keys <-> mount paths (catalog/names.py) and bucket names <->
chain names (chain/names.py, chain/naming.py), property-tested and by example."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from deossfs.catalog.names import (
    COMPONENT_MAX_BYTES,
    PATH_MAX_BYTES,
    S3_MAX_KEY_BYTES,
    check_key,
    key_path,
    path_key,
)
from deossfs.chain.interface import ChainClient
from deossfs.chain.ledger import EmbeddedLedger
from deossfs.chain.names import (
    bucket_from_chain,
    bucket_name_problem,
    bucket_to_chain,
    check_bucket_name,
)
from deossfs.chain.naming import NamedBuckets
from deossfs.errors import ChainError, InvalidName, KeyTooLongError, NameTooLong
from deossfs.keys import account_from_secret

# ---- keys -----------------------------------------------------------------------------------

#: components that exercise the escapes, beside arbitrary text
_SPECIAL = ["", ".", "..", ".deossfs", "~~", "~~~", "~~~~", "~~.", "~~..", "~~+", "~~+x", "~~~~+",
            "+", "%", "%2F", " ", "~", "~k", "~~.deossfs", "a" * 255, "b" * 256, "é" * 130,
            "~~+" + "c" * 260, "😀" * 70]
_TEXT = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="/\0"), max_size=40)
_COMPONENT = st.one_of(st.sampled_from(_SPECIAL), _TEXT, _TEXT.map(lambda t: "~~" + t),
                       _TEXT.map(lambda t: "~~+" + t))
_KEYS = st.lists(_COMPONENT, min_size=1, max_size=12).map("/".join) \
    .filter(lambda k: 0 < len(k.encode()) <= S3_MAX_KEY_BYTES)


def mount_path_ok(path: str) -> bool:
    """Can the mount hold this path below a bucket?"""
    parts = path.split("/")
    return (len(path.encode()) <= PATH_MAX_BYTES and "\0" not in path and parts[0] != ".deossfs"
            and all(0 < len(p.encode()) <= COMPONENT_MAX_BYTES and p not in (".", "..") for p in parts))


@settings(max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
@given(_KEYS)
def test_every_key_maps_to_a_mount_path_and_back(key: str) -> None:
    path, is_dir = key_path(key)
    assert is_dir == key.endswith("/")
    assert mount_path_ok(path), (key, path)
    assert path_key(path, is_dir) == key


@settings(max_examples=500, deadline=None)
@given(st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\0"), min_size=1,
               max_size=S3_MAX_KEY_BYTES))
def test_any_text_key_maps_and_back(key: str) -> None:
    assume(len(key.encode()) <= S3_MAX_KEY_BYTES)
    path, is_dir = key_path(key)
    assert mount_path_ok(path)
    assert path_key(path, is_dir) == key


@pytest.mark.parametrize("component", ["/", "", "~~/", "//", "~~+/"])
def test_longest_keys_of_the_worst_shapes_fit_a_mount_path(component: str) -> None:
    """1,024 bytes of empty components, or of components that each need an escape."""
    unit = (component or "/")
    key = (unit * (S3_MAX_KEY_BYTES // len(unit) + 1))[:S3_MAX_KEY_BYTES]
    path, is_dir = key_path(key)
    assert mount_path_ok(path) and path_key(path, is_dir) == key


@settings(max_examples=2000, deadline=None)
@given(st.lists(_COMPONENT.filter(lambda c: 0 < len(c.encode()) <= COMPONENT_MAX_BYTES
                                  and c not in (".", "..")), min_size=1, max_size=6),
       st.booleans())
def test_a_mount_path_is_one_keys_path_or_none(parts: list[str], is_dir: bool) -> None:
    """Whatever a mount user names things, a path maps to at most one key, and back."""
    path = "/".join(parts)
    assume(mount_path_ok(path))
    key = path_key(path, is_dir)
    if key is not None:
        assert key_path(key) == (path, is_dir)


@pytest.mark.parametrize(("key", "path", "is_dir"), [
    ("photos/2026/cat.jpg", "photos/2026/cat.jpg", False),
    ("a b+c%20d", "a b+c%20d", False),
    ("日本/ファイル", "日本/ファイル", False),
    ("/etc/passwd", "~~/etc/passwd", False),
    ("a//b", "a/~~/b", False),
    ("a/./b", "a/~~./b", False),
    ("../up", "~~../up", False),
    (".deossfs/metadata.json", "~~.deossfs/metadata.json", False),
    ("dir/.deossfs", "dir/.deossfs", False),
    ("~~", "~~~~", False),
    ("~~notes", "~~notes", False),
    ("~~+x", "~~~~+x", False),
    ("folder/", "folder", True),
    ("folder//", "folder/~~", True),
    ("/", "~~", True),
    ("x" * 300, "~~+" + "x" * 252 + "/" + "x" * 48, False),
])
def test_examples(key: str, path: str, is_dir: bool) -> None:
    """The table of docs/s3-names.md."""
    assert key_path(key) == (path, is_dir)
    assert path_key(path, is_dir) == key


@pytest.mark.parametrize(("path", "is_dir"), [
    ("~~+x", False),  # a continuation with nothing after it
    ("~~+x/y", False),  # a cut where key_path would not cut
    ("a/~~", False),  # a file for the key `a/`, which is a directory's
    ("a", True), ("a/~~", True),  # directories are fine...
])
def test_mount_names_no_key_maps_to(path: str, is_dir: bool) -> None:
    key = path_key(path, is_dir)
    if is_dir:
        assert key is not None and key_path(key) == (path, True)
    else:
        assert key is None


def test_keys_that_cannot_be_stored() -> None:
    with pytest.raises(InvalidName):
        check_key("")
    with pytest.raises(InvalidName):
        key_path("a\0b")
    with pytest.raises(InvalidName):
        key_path("caf\udce9")  # not UTF-8 (a lone surrogate)
    with pytest.raises(KeyTooLongError) as info:
        key_path("k" * (S3_MAX_KEY_BYTES + 1))
    assert isinstance(info.value, NameTooLong) and info.value.http_status == 400
    assert key_path("é" * (S3_MAX_KEY_BYTES // 2))[0]  # 1,024 bytes exactly


# ---- bucket names ---------------------------------------------------------------------------

_S3_BUCKETS = st.from_regex(r"[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]", fullmatch=True) \
    .filter(lambda n: bucket_name_problem(n) is None)
#: names the chain takes: letters but j/J, digits, . - _
_CHAIN_BUCKETS = st.from_regex(r"[a-ik-zA-IK-Z0-9._\-]{3,63}", fullmatch=True)


def chain_takes(name: str) -> bool:
    try:
        check_bucket_name(name)
    except ChainError:
        return False
    return True


@settings(max_examples=3000, deadline=None)
@given(_S3_BUCKETS | st.from_regex(r"[a-z0-9j]{1,10}(\.[a-z0-9j]{1,10}){3}", fullmatch=True)
       .filter(lambda n: bucket_name_problem(n) is None))
def test_every_s3_bucket_name_has_a_chain_name_and_back(name: str) -> None:
    chain = bucket_to_chain(name)
    assert chain_takes(chain), (name, chain)
    assert bucket_from_chain(chain) == name


@settings(max_examples=3000, deadline=None)
@given(_CHAIN_BUCKETS)
def test_every_chain_bucket_shows_under_one_name(chain: str) -> None:
    assume(chain_takes(chain))
    shown = bucket_from_chain(chain)
    assert bucket_to_chain(shown) == chain  # so two chain names never show alike


@pytest.mark.parametrize(("name", "chain"), [
    ("jazz", "Qazz"), ("a.b.c.d", "a.b.cXd"), ("j.j.j.j", "Q.Q.QXQ"), ("my-bucket", "my-bucket"),
    ("a.-b", "a.-b"), ("1.2.3", "1.2.3"), ("a.b.c.d.e", "a.b.c.d.e"),
])
def test_bucket_examples(name: str, chain: str) -> None:
    assert bucket_name_problem(name) is None
    assert bucket_to_chain(name) == chain and bucket_from_chain(chain) == name


@pytest.mark.parametrize("chain", ["MyPhotos", "my_files", "Xmas", "QQ_x", "aXbXc.d", "Upper"])
def test_other_tools_buckets_keep_their_names(chain: str) -> None:
    assert chain_takes(chain)
    assert bucket_from_chain(chain) == chain and bucket_to_chain(chain) == chain


@pytest.mark.parametrize("name", ["192.168.1.1", "ab", "a..b", "-ab", "ab-", "Abc", "a_b", "x" * 64])
def test_names_s3_refuses(name: str) -> None:
    assert bucket_name_problem(name)


def test_named_buckets_on_the_embedded_chain(tmp_path: Path) -> None:
    """Through NamedBuckets a real ledger is asked for `Qazz`, and answers `jazz`."""
    alice = account_from_secret("//Alice")
    ledger = EmbeddedLedger(tmp_path / "ledger.sqlite", alice)
    chain = NamedBuckets(ledger)
    try:
        chain.create_bucket(alice.address, "jazz")
        chain.create_bucket(alice.address, "a.b.c.d")
        ledger.create_bucket(alice.address, "MyPhotos")
        assert sorted(ledger.buckets(alice.address)) == ["MyPhotos", "Qazz", "a.b.cXd"]
        assert chain.buckets(alice.address) == ["MyPhotos", "a.b.c.d", "jazz"]
        info = chain.bucket(alice.address, "jazz")
        assert info is not None and info.name == "jazz"
        assert chain.bucket(alice.address, "Qazz") is not None  # the chain's own name works too
        chain.delete_bucket(alice.address, "jazz")
        assert chain.bucket(alice.address, "jazz") is None
        assert chain.account == alice.address  # the rest is the ledger's
    finally:
        ledger.close()


def test_named_buckets_translates_every_answer_that_names_a_bucket() -> None:
    """A ChainClient method whose answer carries bucket names (files, deals, buckets) must
    be NamedBuckets' own: one reached through `__getattr__` would show chain names (a
    batched `files` once listed `jazz` as empty, its files being in `Qazz`)."""
    carrying = ("FileInfo", "DealInfo", "BucketInfo", "UserBrief")
    answers = {name: inspect.signature(method).return_annotation
               for name, method in vars(ChainClient).items()
               if callable(method) and not name.startswith("_")}
    naming = {name for name, annotation in answers.items()
              if any(kind in str(annotation) for kind in carrying)}
    assert {"file", "files", "deal", "bucket"} <= naming
    assert naming <= set(vars(NamedBuckets)), naming - set(vars(NamedBuckets))
