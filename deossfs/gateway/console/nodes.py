"""Whether storage nodes answer now: each node's unsigned `GET /status`, with a short
timeout, remembered a few seconds so that a page with hundreds of fragments asks each
node once."""

from __future__ import annotations

import time

import trio

from ...errors import DeossError
from ...keys import Account
from ...p2p.nodeclient import NodeClient

#: seconds a node may take to answer /status before it counts as unreachable
PROBE_TIMEOUT = 1.5
#: seconds an answer (or its absence) is remembered
PROBE_TTL = 5.0


class NodeProbe:
    def __init__(self, account: Account, timeout: float = PROBE_TIMEOUT, ttl: float = PROBE_TTL) -> None:
        # a client of its own: probes never share connections or timeouts with transfers
        self.client = NodeClient(account, timeout=timeout)
        self.timeout = timeout
        self.ttl = ttl
        self._known: dict[str, tuple[bool, float]] = {}

    async def _probe(self, endpoint: str) -> None:
        answered = False
        with trio.move_on_after(self.timeout):
            try:
                await self.client.status(endpoint)
                answered = True
            except DeossError:
                pass
        self._known[endpoint] = (answered, time.monotonic())

    async def reachable(self, endpoints: list[str]) -> dict[str, bool]:
        """endpoint -> does the node answer now (asked at most every `ttl` seconds)."""
        now = time.monotonic()
        stale = {e for e in endpoints if e and (e not in self._known or now - self._known[e][1] > self.ttl)}
        if stale:
            async with trio.open_nursery() as nursery:
                for endpoint in stale:
                    nursery.start_soon(self._probe, endpoint)
        return {e: bool(e) and self._known.get(e, (False, 0.0))[0] for e in endpoints}
