"""Bucket names as deossfs shows them, on a chain that refuses some of them.

`NamedBuckets` wraps a `ChainClient`: every bucket name going to the chain passes through
`names.bucket_to_chain` and every one coming back through `names.bucket_from_chain`, so
the CLI, the mount and the gateway - which all open their chain with
`factory.open_chain` - create, list and use `jazz` while the runtime holds `Qazz`.
Everything else is the wrapped client's.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from ..keys import Account
from .interface import BucketInfo, ChainClient, DealInfo, FileInfo, SegmentSpec, UserBrief
from .names import bucket_from_chain, bucket_to_chain


def _shown(brief: UserBrief) -> UserBrief:
    return replace(brief, bucket_name=bucket_from_chain(brief.bucket_name))


def _file_shown(info: FileInfo | None) -> FileInfo | None:
    return None if info is None else replace(info, owners=tuple(_shown(b) for b in info.owners))


class NamedBuckets:
    """A ChainClient (registered as one) whose bucket names are deossfs' names."""

    def __init__(self, chain: ChainClient) -> None:
        self.chain = chain

    def __getattr__(self, name: str) -> Any:
        return getattr(self.chain, name)

    def as_account(self, account: Account) -> NamedBuckets:
        return NamedBuckets(self.chain.as_account(account))  # type: ignore[attr-defined]

    def create_bucket(self, owner: str, name: str) -> None:
        self.chain.create_bucket(owner, bucket_to_chain(name))

    def delete_bucket(self, owner: str, name: str) -> None:
        self.chain.delete_bucket(owner, bucket_to_chain(name))

    def bucket(self, owner: str, name: str) -> BucketInfo | None:
        info = self.chain.bucket(owner, bucket_to_chain(name))
        return None if info is None else replace(info, name=bucket_from_chain(info.name))

    def buckets(self, owner: str) -> list[str]:
        return sorted(bucket_from_chain(name) for name in self.chain.buckets(owner))

    def upload_declaration(self, fid: str, segments: list[SegmentSpec], user_brief: UserBrief,
                           file_size: int) -> None:
        brief = replace(user_brief, bucket_name=bucket_to_chain(user_brief.bucket_name))
        self.chain.upload_declaration(fid, segments, brief, file_size)

    def file(self, fid: str) -> FileInfo | None:
        return _file_shown(self.chain.file(fid))

    def files(self, fids: Sequence[str]) -> list[FileInfo | None]:
        return [_file_shown(info) for info in self.chain.files(fids)]

    def deal(self, fid: str) -> DealInfo | None:
        deal = self.chain.deal(fid)
        return None if deal is None else replace(deal, user=_shown(deal.user))


ChainClient.register(NamedBuckets)
