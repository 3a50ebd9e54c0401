"""The JWKS key cache: keys from JWKS_FILE or JWKS_URL, fetched, cached and refreshed.

When a fetch happens (``JwksState`` decides, from the injected clock):

* **TTL**: keys older than ``ttl_s`` are refetched before they are used again, and a
  background refresher (``start``) refetches them on time, so requests rarely wait. A key
  removed from the document is refused once the TTL has passed; a new key is found by the
  TTL refresh or by the next rule. ``JWKS_FILE`` is re-read the same way.
* **Unknown kid**: a token whose ``kid`` is not in the set triggers a refetch, at most one
  per ``refetch_cooldown_s`` (counted from the last fetch of any kind), and is verified
  against the refreshed set in the same request.
* **Outage**: a failed fetch (timeout, connection error, HTTP status other than 200, a
  body over ``max_bytes``, invalid JSON, no usable key) keeps the last good keys, marks
  the set stale, and is retried after ``refetch_cooldown_s``.

Every fetch is bounded by ``timeout_s``; one fetch runs at a time and concurrent callers
wait for it (up to ``timeout_s``) instead of starting their own. URLs are fetched without
redirects, proxies or environment settings (``trust_env=False``), only ever the configured
one: nothing here reads a token.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import httpx

from gateway import metrics
from gateway.auth import NO_KEYS, KeySet, KeySetError, parse_jwks
from gateway.health_state import iso_utc

log = logging.getLogger(__name__)

MAX_JWKS_BYTES = 1 << 20
_MIN_REFRESH_WAIT_S = 1.0


class JwksFetchFailed(Exception):
    """A fetch that returned no document; ``reason`` is short and safe to show."""

    def __init__(self, reason: str, result: str):
        super().__init__(reason)
        self.reason = reason
        self.result = result  # the metrics label


class JwksSource(Protocol):
    """Where a JWKS document comes from."""

    kind: str

    async def fetch(self) -> bytes: ...

    async def aclose(self) -> None: ...


class FileSource:
    """A JWKS file, read in a worker thread on every fetch."""

    kind = "file"

    def __init__(self, path: Path, *, max_bytes: int = MAX_JWKS_BYTES):
        self._path = path
        self._max_bytes = max_bytes

    async def fetch(self) -> bytes:
        return await asyncio.to_thread(self._read)

    def _read(self) -> bytes:
        try:
            with self._path.open("rb") as file:
                data = file.read(self._max_bytes + 1)
        except OSError as exc:
            raise JwksFetchFailed(f"cannot read the file ({exc.strerror})", "unreachable") from exc
        if len(data) > self._max_bytes:
            raise JwksFetchFailed("document too large", "too_large")
        return data

    async def aclose(self) -> None:
        return None


class UrlSource:
    """A JWKS URL fetched with ``GET``; 200 with an uncompressed body of ``max_bytes`` at most."""

    kind = "url"

    def __init__(
        self,
        url: str,
        *,
        timeout_s: float,
        max_bytes: int = MAX_JWKS_BYTES,
        client: httpx.AsyncClient | None = None,
    ):
        self._url = url
        self._max_bytes = max_bytes
        self._client = client or httpx.AsyncClient(
            timeout=timeout_s,
            follow_redirects=False,
            trust_env=False,
            headers={
                "accept": "application/jwk-set+json, application/json",
                "accept-encoding": "identity",
            },
        )

    async def fetch(self) -> bytes:
        try:
            async with self._client.stream("GET", self._url) as response:
                return await self._body(response)
        except httpx.TimeoutException as exc:
            raise JwksFetchFailed("timeout", "timeout") from exc
        except httpx.HTTPError as exc:
            raise JwksFetchFailed("connection failed", "unreachable") from exc

    async def _body(self, response: httpx.Response) -> bytes:
        if response.status_code != 200:
            raise JwksFetchFailed(f"HTTP status {response.status_code}", "http_status")
        # Raw bytes: a compressed body could expand past the limit inside one chunk.
        if response.headers.get("content-encoding", "identity").lower() != "identity":
            raise JwksFetchFailed("compressed response", "invalid")
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self._max_bytes:
            raise JwksFetchFailed("document too large", "too_large")
        body = bytearray()
        async for chunk in response.aiter_raw():
            body += chunk
            if len(body) > self._max_bytes:
                raise JwksFetchFailed("document too large", "too_large")
        return bytes(body)

    async def aclose(self) -> None:
        await self._client.aclose()


class JwksStatus(enum.Enum):
    OK = "ok"  # the last fetch succeeded
    STALE = "stale"  # the last fetch failed; the last good keys are in use
    UNAVAILABLE = "unavailable"  # no fetch has succeeded yet: no JWKS token can be verified


@dataclass
class JwksState:
    """The cache's bookkeeping and its decisions; every time is the injected clock's.

    A clock that went backwards counts as expired (so a wall-clock step never freezes it).
    """

    ttl_s: float
    cooldown_s: float
    keys: KeySet = NO_KEYS
    fetched_at: float | None = None
    attempted_at: float | None = None
    last_error: str | None = None

    def _within(self, since: float | None, span_s: float, now: float) -> bool:
        return since is not None and since <= now < since + span_s

    def refresh_due(self, now: float) -> bool:
        """True when the keys are past their TTL (or missing), unless a failed fetch is recent."""
        if self.last_error is not None and self._within(self.attempted_at, self.cooldown_s, now):
            return False
        return not self._within(self.fetched_at, self.ttl_s, now)

    def refetch_allowed(self, now: float) -> bool:
        """True when no fetch happened in the last ``cooldown_s``."""
        return not self._within(self.attempted_at, self.cooldown_s, now)

    def seconds_until_due(self, now: float) -> float:
        """How long the background refresher may wait before the next fetch is due."""
        if self.last_error is not None and self.attempted_at is not None:
            due = self.attempted_at + self.cooldown_s
        elif self.fetched_at is not None:
            due = self.fetched_at + self.ttl_s
        else:
            due = now
        return max(_MIN_REFRESH_WAIT_S, due - now)

    def succeeded(self, keys: KeySet, now: float) -> None:
        self.keys, self.fetched_at, self.attempted_at, self.last_error = keys, now, now, None

    def failed(self, reason: str, now: float) -> None:
        self.attempted_at, self.last_error = now, reason

    @property
    def status(self) -> JwksStatus:
        if self.fetched_at is None:
            return JwksStatus.UNAVAILABLE
        return JwksStatus.STALE if self.last_error is not None else JwksStatus.OK

    def to_json(self) -> dict[str, Any]:
        """The ``jwks`` entry of ``/health``."""
        return {
            "status": self.status.value,
            "keys": len(self.keys),
            "last_success_at": iso_utc(self.fetched_at),
            "last_attempt_at": iso_utc(self.attempted_at),
            "last_error": self.last_error,
        }


class JwksCache:
    """The current key set of one JWKS source (see the module docstring for the rules)."""

    def __init__(
        self,
        source: JwksSource,
        *,
        ttl_s: float,
        refetch_cooldown_s: float,
        timeout_s: float,
        clock: Callable[[], float] = time.time,
    ):
        self._source = source
        self._state = JwksState(ttl_s=ttl_s, cooldown_s=refetch_cooldown_s)
        self._timeout_s = timeout_s
        self._clock = clock
        self._lock = asyncio.Lock()
        self._refresher: asyncio.Task[None] | None = None

    @property
    def keys(self) -> KeySet:
        return self._state.keys

    @property
    def status(self) -> JwksStatus:
        return self._state.status

    def to_json(self) -> dict[str, Any]:
        return {**self._state.to_json(), "source": self._source.kind}

    async def start(self) -> None:
        """Load the keys (a failure is logged and reported, not raised), then keep them fresh."""
        await self.refresh("startup")
        if self._refresher is None:
            self._refresher = asyncio.create_task(self._refresh_forever(), name="jwks-refresher")

    async def close(self) -> None:
        if self._refresher is not None:
            self._refresher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._refresher
            self._refresher = None
        await self._source.aclose()

    async def refresh(self, trigger: str = "startup") -> None:
        """Fetch now, unless another fetch ends while this one waits for it to finish."""
        before = self._state.attempted_at
        await self._fetch_if(lambda now: self._state.attempted_at == before, trigger)

    async def keys_for(self, kid: str) -> KeySet:
        """The key set to verify a token whose header names ``kid``.

        Refetches first when the keys are past their TTL, or when ``kid`` is unknown and
        the cooldown allows. The caller then looks ``kid`` up: it may still be missing.
        """
        if self._state.refresh_due(self._clock()):
            await self._fetch_if(self._state.refresh_due, "ttl")
        if self._state.keys.get(kid) is None and self._state.refetch_allowed(self._clock()):
            await self._fetch_if(
                lambda now: self._state.keys.get(kid) is None and self._state.refetch_allowed(now),
                "unknown_kid",
            )
        return self._state.keys

    async def _refresh_forever(self) -> None:
        while True:
            await asyncio.sleep(self._state.seconds_until_due(self._clock()))
            await self._fetch_if(self._state.refresh_due, "ttl")

    async def _fetch_if(self, wanted: Callable[[float], bool], trigger: str) -> None:
        """Fetch if ``wanted(now)`` still holds once no other fetch runs (waiting ``timeout_s``)."""
        try:
            async with asyncio.timeout(self._timeout_s):
                await self._lock.acquire()
        except TimeoutError:
            return  # another fetch is slow; this caller uses the keys it has
        try:
            if wanted(self._clock()):
                await self._fetch(trigger)
        finally:
            self._lock.release()

    async def _fetch(self, trigger: str) -> None:
        try:
            async with asyncio.timeout(self._timeout_s):
                document = await self._source.fetch()
            keys = await asyncio.to_thread(parse_jwks, document)
        except TimeoutError:
            self._failed(trigger, "timeout", "timeout")
        except JwksFetchFailed as exc:
            self._failed(trigger, exc.reason, exc.result)
        except KeySetError as exc:
            self._failed(trigger, f"invalid JWKS: {exc}", "invalid")
        except Exception:
            # A bug here must not fail requests or end the refresher: the keys stay as they are.
            log.exception("unexpected error while refreshing the JWKS")
            self._failed(trigger, "internal error", "error")
        else:
            self._succeeded(trigger, keys)

    def _succeeded(self, trigger: str, keys: KeySet) -> None:
        now = self._clock()
        changed = keys.kids != self._state.keys.kids
        if self._state.last_error is not None or changed:
            log.info("JWKS loaded (%s): %d keys %s", trigger, len(keys), list(keys.kids))
            for reason in keys.skipped:
                log.warning("JWKS key skipped: %s", reason)
        self._state.succeeded(keys, now)
        metrics.JWKS_REFRESHES.labels(trigger=trigger, result="ok").inc()
        metrics.JWKS_KEYS.set(len(keys))
        metrics.JWKS_LAST_SUCCESS.set(now)
        metrics.JWKS_STALE.set(0)

    def _failed(self, trigger: str, reason: str, result: str) -> None:
        self._state.failed(reason, self._clock())
        log.warning(
            "JWKS fetch failed (%s): %s; keeping %d last good keys",
            trigger,
            reason,
            len(self._state.keys),
        )
        metrics.JWKS_REFRESHES.labels(trigger=trigger, result=result).inc()
        metrics.JWKS_STALE.set(1)
