"""The fleet store: what every edge of a fleet shares, in one NATS JetStream KV bucket. I/O shell.

nats-py's JetStream key-value API is the whole protocol (``docs/design.md``, fleet mode):
compare-and-set is the stream's expected-last-subject-sequence check, history is the
stream's per-subject limit, and a watch is nats-py's ordered consumer. Nothing here is a
protocol of gslb's own.

Keys of the bucket (``bucket``, default ``gslb``):

- ``config``: the fleet document (TOML text). History is kept (``HISTORY`` revisions), so
  a rollback re-puts an old revision.
- ``drain.<kind>.<token>``: a fleet-wide drain of a region or an endpoint (``kind`` is
  ``region`` or ``endpoint``); ``token`` is the target in ``encode_token`` form, since an
  endpoint URL holds characters a key may not. The value is the target itself.
- ``edge.<token>``: one edge's report (applied revision, last error, ...) as a JSON object.

A KV revision is the bucket stream's sequence number: revisions only grow, across keys.

Failure rules:

- Every failure reaches the caller as a ``FleetError`` with a fixed message, never a
  nats-py exception: ``FleetUnavailable`` (NATS unreachable, credentials refused, no
  answer in time, no JetStream), ``ConflictError`` (someone else wrote first),
  ``RevisionNotFound`` and ``InvalidValue``.
- A value read from the bucket that is not UTF-8, over ``max_value_bytes`` or not the
  expected shape is dropped and counted in ``dropped``: a bad peer, or a hand-made
  ``nats kv put``, never raises into the loop of a caller reading or watching.
- Logs carry revisions, sizes and key classes only: never a document, a credential or a
  server URL (one may embed ``user:password@``).

After the first connection, nats-py reconnects on its own, forever, every
``RECONNECT_WAIT_S``. A server restart loses the ephemeral consumer behind a watch, so a
watch is stopped when the connection drops and a new one opened once it is back: one
subscription and one consumer per watch, however many restarts, and nothing of nats-py's
consumer recovery left running through an outage. The store never sits on a request
path: while NATS is away every call fails at once with ``FleetUnavailable``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import re
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Literal, NamedTuple, get_args

import nats.errors
import nats.js.errors
import orjson
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import api
from nats.js.kv import KeyValue

log = logging.getLogger("gslb.ops.fleetstore")

CONFIG_KEY: Final = "config"
DRAIN_PREFIX: Final = "drain"
EDGE_PREFIX: Final = "edge"
# The most the KV API allows; rollback reaches this many revisions back.
HISTORY: Final = 64
# Under the server's default max_payload (1 MiB), which also covers the KV headers: a
# value the bucket takes is one a client can always publish.
MAX_VALUE_BYTES: Final = 1_000_000
# The bucket's own limit counts the headers too (a compare-and-set adds one): room for them.
HEADER_ROOM: Final = 4096
# JetStream's "message size exceeds maximum allowed".
_JS_MSG_TOO_LARGE: Final = 10054
# An encoded target (drain) or edge name: keys stay well under any subject limit.
MAX_TOKEN_BYTES: Final = 512
DEFAULT_TIMEOUT_S: Final = 2.0
# A subscription's queue: a flood past these is dropped by nats-py (slow consumer).
SUB_PENDING_MSGS: Final = 10_000
SUB_PENDING_BYTES: Final = 16 * 1024 * 1024
DEFAULT_CONNECT_DEADLINE_S: Final = 5.0
RECONNECT_WAIT_S: Final = 0.5
# How long the server keeps a watch's consumer once nobody listens: a replaced watch's
# consumer goes away soon after, instead of after nats-py's default 5 minutes.
WATCH_INACTIVE_S: Final = 10.0
# Waits between attempts to re-open a watch while NATS (or JetStream) is not back yet.
WATCH_RETRY_S: Final = (0.05, 2.0)

DrainKind = Literal["region", "endpoint"]
DRAIN_KINDS: Final[frozenset[str]] = frozenset(get_args(DrainKind))


# -- errors ---------------------------------------------------------------------------------


class FleetError(Exception):
    """Any failure of the fleet store; the message is fixed and safe to show an operator."""


class FleetUnavailable(FleetError):
    """NATS or its JetStream could not serve the request. ``reason`` is one of ``REASONS``."""

    REASONS: Final[Mapping[str, str]] = {
        "unreachable": "cannot reach any NATS server",
        "credentials": "NATS refused the credentials",
        "timeout": "NATS did not answer in time",
        "no_jetstream": "JetStream is not available on the NATS server",
        "closed": "the fleet store connection is closed",
    }

    def __init__(self, reason: str) -> None:
        self.reason = reason if reason in self.REASONS else "unreachable"
        super().__init__(f"fleet store unavailable: {self.REASONS[self.reason]}")


class ConflictError(FleetError):
    """A compare-and-set lost: the config is at ``current_revision`` (``None``: absent)."""

    def __init__(self, current_revision: int | None) -> None:
        self.current_revision = current_revision
        if current_revision is None:
            msg = "the fleet config changed since it was read (it no longer exists)"
        else:
            msg = f"the fleet config changed since it was read (now at revision {current_revision})"
        super().__init__(msg)


class RevisionNotFound(FleetError):
    """No config document at ``revision``: never written, a deletion, or past the history."""

    def __init__(self, revision: int) -> None:
        self.revision = revision
        super().__init__(f"no fleet config at revision {revision}")


class InvalidValue(FleetError, ValueError):
    """A value or name this store will not write. ``reason`` is one of ``REASONS``."""

    REASONS: Final[Mapping[str, str]] = {
        "too_large": f"larger than the fleet store's limit ({MAX_VALUE_BYTES} bytes)",
        "not_utf8": "not encodable as UTF-8",
        "not_json": "not a JSON object",
        "bad_kind": f"a drain kind must be one of {', '.join(sorted(DRAIN_KINDS))}",
        "bad_name": f"a name must be 1 to {MAX_TOKEN_BYTES} bytes of UTF-8",
    }

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(f"invalid fleet value: {self.REASONS[reason]}")


# -- values ---------------------------------------------------------------------------------


class ConfigVersion(NamedTuple):
    """One revision of the fleet config, as ``history`` lists it."""

    revision: int
    digest: str  # sha256 of the document's UTF-8 bytes, hex
    when: datetime  # the server's timestamp of the write, UTC


@dataclass(frozen=True)
class Drain:
    kind: DrainKind
    target: str  # a region name or an endpoint URL


@dataclass(frozen=True)
class EdgeRecord:
    """An edge's last report, with the server's word on when it was written."""

    name: str
    doc: dict[str, Any]
    revision: int
    seen: datetime


# -- key tokens -----------------------------------------------------------------------------

# A KV key is tokens of [-/_=.A-Za-z0-9] split on "."; a target becomes ONE token: letters,
# digits, "-" and "_" stay as they are (region names read as themselves in `nats kv ls`),
# every other byte of its UTF-8 is "=XX" (upper-case hex). One spelling per text, so the
# key of a target is unique and decoding can refuse anything else.
_PLAIN = re.compile(rb"[A-Za-z0-9_-]")
_BUCKET = re.compile(r"[A-Za-z0-9_-]+")
_TOKEN = re.compile(r"(?:[A-Za-z0-9_-]|=[0-9A-F]{2})+")


def encode_token(text: str) -> str:
    """``text`` as one KV key token; ``InvalidValue("bad_name")`` when empty or too long."""
    try:
        raw = text.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidValue("bad_name") from None
    token = "".join(chr(b) if _PLAIN.fullmatch(bytes((b,))) else f"={b:02X}" for b in raw)
    if not raw or len(token) > MAX_TOKEN_BYTES:
        raise InvalidValue("bad_name")
    return token


def decode_token(token: str) -> str:
    """The text ``encode_token`` made ``token`` from; ``ValueError`` for any other token."""
    if not _TOKEN.fullmatch(token):
        raise ValueError("not a key token")
    out = bytearray()
    i = 0
    while i < len(token):
        if token[i] == "=":
            b = int(token[i + 1 : i + 3], 16)
            if _PLAIN.fullmatch(bytes((b,))):
                raise ValueError("an escaped plain character")  # not the one spelling
            out.append(b)
            i += 3
        else:
            out.append(ord(token[i]))
            i += 1
    return out.decode("utf-8")  # UnicodeDecodeError is a ValueError


def drain_key(kind: str, target: str) -> str:
    if kind not in DRAIN_KINDS:
        raise InvalidValue("bad_kind")
    return f"{DRAIN_PREFIX}.{kind}.{encode_token(target)}"


def edge_key(name: str) -> str:
    return f"{EDGE_PREFIX}.{encode_token(name)}"


# -- nats-py errors -> gslb's ---------------------------------------------------------------


def _is_auth_error(exc: BaseException) -> bool:
    # nats-py reports a refused CONNECT as a plain Error carrying the server's -ERR text.
    return isinstance(exc, nats.errors.AuthorizationError) or "authorization violation" in (
        str(exc).lower()
    )


@contextlib.contextmanager
def _translated() -> Iterator[None]:
    """nats-py's exceptions as ``FleetError``s; ``from None``: no nats-py traceback rides along."""
    try:
        yield
    except FleetError:
        raise
    except (nats.errors.NoRespondersError, nats.js.errors.NoStreamResponseError):
        raise FleetUnavailable("no_jetstream") from None
    except nats.js.errors.ServiceUnavailableError:
        raise FleetUnavailable("no_jetstream") from None
    except nats.errors.MaxPayloadError:
        raise InvalidValue("too_large") from None
    except nats.js.errors.APIError as exc:
        code = exc.err_code if isinstance(exc.err_code, int) else 0
        if code == _JS_MSG_TOO_LARGE:  # a bucket made elsewhere, with a lower limit
            raise InvalidValue("too_large") from None
        raise FleetError(f"NATS refused the request (JetStream error {code})") from None
    except TimeoutError:  # nats.errors.TimeoutError is one too
        raise FleetUnavailable("timeout") from None
    except (nats.errors.Error, OSError):
        raise FleetUnavailable("unreachable") from None


# -- watches --------------------------------------------------------------------------------

_STOPPED: Final = object()


class _Watch:
    """One nats-py KV watcher, with a stop of our own: ``next`` returns ``_STOPPED`` once
    ``stop`` is called, even when unsubscribing fails on a dead connection."""

    __slots__ = ("_stopped", "watcher")

    def __init__(self, watcher: KeyValue.KeyWatcher) -> None:
        self.watcher = watcher
        self._stopped: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def next(self) -> object:
        """The next entry, ``None`` (caught up) or ``_STOPPED``."""
        if self._stopped.done():
            return _STOPPED
        step = asyncio.ensure_future(anext(self.watcher))
        try:
            await asyncio.wait({step, self._stopped}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not step.done():  # stopped, or our caller cancelled: leave no orphan reader
                step.cancel()
        if step.cancelled():
            return _STOPPED
        try:
            return step.result()
        except StopAsyncIteration:
            return _STOPPED

    async def stop(self) -> None:
        if not self._stopped.done():
            self._stopped.set_result(None)
        stop: Callable[[], Awaitable[None]] = self.watcher.stop  # untyped in nats-py
        with contextlib.suppress(Exception):
            await stop()


# -- the store ------------------------------------------------------------------------------


class FleetStore:
    """A connection to the fleet's KV bucket. Make one with ``await FleetStore.connect(...)``;
    ``close()`` it (or use ``async with``) when done."""

    def __init__(self, bucket: str, timeout: float, max_value_bytes: int) -> None:
        self.bucket = bucket
        self.timeout = timeout
        self.max_value_bytes = max_value_bytes
        self.dropped = 0  # values read and refused (not UTF-8, too large, wrong shape)
        self._nc = NATS()
        self._kv: KeyValue | None = None
        self._closed = False
        # Resolved (and replaced) on each disconnect, reconnect and on close: a watch opened
        # while it resolved is stale from the start, and a watch waiting for NATS wakes on it.
        self._conn_change: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._watches: set[_Watch] = set()
        self._auth_refused = asyncio.Event()
        self._warned_auth = False
        self._was_connected = False  # nats-py also calls "disconnected" on a failed first try

    # -- connecting -------------------------------------------------------------------------

    @classmethod
    async def connect(
        cls,
        servers: str | Sequence[str],
        *,
        user: str | None = None,
        password: str | None = None,
        creds_file: str | Path | None = None,
        nkey_file: str | Path | None = None,
        tls: ssl.SSLContext | None = None,
        bucket: str = "gslb",
        name: str = "gslb",
        timeout: float = DEFAULT_TIMEOUT_S,
        connect_deadline: float = DEFAULT_CONNECT_DEADLINE_S,
        reconnect_wait: float = RECONNECT_WAIT_S,
        max_value_bytes: int = MAX_VALUE_BYTES,
    ) -> FleetStore:
        """Connect to NATS and open ``bucket``, creating it when missing.

        ``timeout`` bounds each request and connection attempt; ``connect_deadline`` the
        whole first connection (every server, retried); ``reconnect_wait`` spaces attempts
        to reach the same server again. Raises ``FleetUnavailable``
        (``credentials`` as soon as a server refuses them) or ``FleetError`` for a
        credentials file that cannot be read.
        """
        for path in (creds_file, nkey_file):
            if path is not None and not Path(path).is_file():
                raise FleetError(f"fleet credentials file {path} is not readable")
        if not _BUCKET.fullmatch(bucket):
            raise FleetError(f"fleet bucket name {bucket!r} is invalid (letters, digits, - and _)")
        store = cls(bucket, timeout, max_value_bytes)
        await store._connect(
            [servers] if isinstance(servers, str) else list(servers),
            connect_deadline,
            reconnect_wait,
            name=name,
            user=user,
            password=password,
            user_credentials=None if creds_file is None else str(creds_file),
            nkeys_seed=None if nkey_file is None else str(nkey_file),
            tls=tls,
        )
        try:
            store._kv = await store._open_bucket()
        except BaseException:
            await store.close()
            raise
        log.info("fleet store: connected, bucket %s", bucket)
        return store

    async def _connect(
        self, servers: list[str], deadline: float, reconnect_wait: float, **options: Any
    ) -> None:
        """The first connection. nats-py would retry it forever (``max_reconnect_attempts``
        is -1 so that later outages never end the connection): bound it by ``deadline``,
        and give up at once when a server refuses the credentials."""
        if not servers:
            raise FleetUnavailable("unreachable")
        connecting = asyncio.ensure_future(
            self._nc.connect(
                servers=servers,
                error_cb=self._on_error,
                disconnected_cb=self._on_disconnected,
                reconnected_cb=self._on_reconnected,
                # Both are floats in nats-py's code, whatever its hints say.
                connect_timeout=self.timeout,  # type: ignore[arg-type]
                reconnect_time_wait=reconnect_wait,  # type: ignore[arg-type]
                max_reconnect_attempts=-1,
                allow_reconnect=True,
                **options,
            )
        )
        refused = asyncio.ensure_future(self._auth_refused.wait())
        failure: BaseException | None = None
        try:
            await asyncio.wait(
                {connecting, refused}, timeout=deadline, return_when="FIRST_COMPLETED"
            )
            if connecting.done():
                failure = connecting.exception()
                if failure is None:
                    self._was_connected = True
                    return
        finally:
            refused.cancel()
            if not self._was_connected:  # failed, timed out, or the caller gave up
                await self._abandon(connecting)
        if self._auth_refused.is_set():
            raise FleetUnavailable("credentials")
        if isinstance(failure, ImportError):  # nats-py needs nkeys for creds and nkey files
            raise FleetError("NATS credentials files need the nkeys package")
        raise FleetUnavailable("unreachable")

    async def _abandon(self, connecting: asyncio.Future[None]) -> None:
        self._closed = True
        connecting.cancel()
        with contextlib.suppress(BaseException):
            await connecting
        with contextlib.suppress(Exception):
            await self._nc.close()

    async def _open_bucket(self) -> KeyValue:
        js = self._nc.jetstream(timeout=self.timeout)
        with _translated():
            try:
                kv = await js.key_value(self.bucket)
            except nats.js.errors.BucketNotFoundError:
                try:
                    kv = await js.create_key_value(
                        bucket=self.bucket,
                        description="gslb fleet state",
                        history=HISTORY,
                        max_value_size=self.max_value_bytes + HEADER_ROOM,
                        storage=api.StorageType.FILE,
                    )
                    log.info("fleet store: created bucket %s", self.bucket)
                except nats.js.errors.BadRequestError:
                    kv = await js.key_value(self.bucket)  # another edge created it first
            status = await kv.status()
        if status.history < 2:
            log.warning(
                "fleet store: bucket %s keeps %d revision(s) per key; rollback needs history",
                self.bucket,
                status.history,
            )
        return kv

    async def close(self) -> None:
        """Stop every watch (their iterators end) and close the connection."""
        self._closed = True
        self._next_conn_change()  # wakes watches waiting for NATS, to see ``_closed``
        for watch in list(self._watches):
            await self._stop_watch(watch)
        with contextlib.suppress(Exception):
            await self._nc.close()

    async def __aenter__(self) -> FleetStore:
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    @property
    def connected(self) -> bool:
        return self._nc.is_connected

    # -- plain subjects (fleet health: gslb.ops.fleetpeers) -----------------------------------

    async def subscribe(self, subject: str, cb: Callable[[str, bytes], Awaitable[None]]) -> None:
        """Hear ``subject`` (core NATS, not JetStream) for as long as this store is open.

        nats-py subscribes again by itself after a reconnect, so one call lasts: nothing
        here is re-created per outage. A peer that floods the subject fills a bounded queue,
        and nats-py drops what does not fit (a slow consumer), never memory without end.
        """

        async def on_message(msg: Msg) -> None:
            await cb(msg.subject, msg.data)

        with _translated():
            await self._nc.subscribe(
                subject,
                cb=on_message,
                pending_msgs_limit=SUB_PENDING_MSGS,
                pending_bytes_limit=SUB_PENDING_BYTES,
            )
            # The server has it before we go on. nats-py's flush() writes its PING straight to
            # the socket, ahead of a SUB still in its pending buffer; waiting for the flusher
            # first puts the SUB on the wire, then the PING's answer proves it arrived.
            await self._nc._flush_pending(force_flush=True)
            await self._nc.flush(timeout=self.timeout)  # type: ignore[arg-type]  # a float

    async def publish(self, subject: str, data: bytes) -> bool:
        """Send ``data`` on ``subject`` now; False, and nothing queued, while NATS is away
        (nats-py would hold it and deliver it late, when it is stale)."""
        if not self._nc.is_connected:
            return False
        with _translated():
            await self._nc.publish(subject, data)
        return True

    # -- nats-py callbacks ------------------------------------------------------------------

    async def _on_error(self, exc: Exception) -> None:
        # The class name only: a server URL in the text may embed credentials.
        if _is_auth_error(exc):
            self._auth_refused.set()
            if not self._warned_auth:
                self._warned_auth = True
                log.warning("fleet store: NATS refused the credentials")
            return
        log.debug("fleet store: NATS error %s", type(exc).__name__)

    async def _on_disconnected(self) -> None:
        if self._was_connected and not self._closed:
            log.warning("fleet store: lost the NATS connection; retrying")
        self._next_conn_change()
        # Stopped now rather than at the reconnect: left running through an outage, nats-py's
        # ordered consumer re-creates its consumer on missed heartbeats, and those requests,
        # queued, reach the server after the reconnect as consumers nobody reads.
        for watch in list(self._watches):
            await self._stop_watch(watch)

    async def _on_reconnected(self) -> None:
        self._warned_auth = False
        self._next_conn_change()
        log.info("fleet store: reconnected to NATS")
        # The server may have restarted and lost the consumers behind the watches: each
        # watch loop re-opens its watch once this one ends (none should be left by now).
        for watch in list(self._watches):
            await self._stop_watch(watch)

    def _next_conn_change(self) -> None:
        if not self._conn_change.done():
            self._conn_change.set_result(None)
        if not self._closed:
            self._conn_change = asyncio.get_running_loop().create_future()

    # -- config -----------------------------------------------------------------------------

    async def get_config(self) -> tuple[int, str] | None:
        """The fleet document and its revision; ``None`` when absent (or unreadable: dropped)."""
        kv = self._ready()
        with _translated():
            try:
                entry = await kv.get(CONFIG_KEY)
            except nats.js.errors.KeyNotFoundError:
                return None
        text = self._text(CONFIG_KEY, entry.value)
        if text is None or entry.revision is None:
            return None
        return entry.revision, text

    async def push_config(self, text: str, expected_revision: int | None) -> int:
        """Write ``text`` if the config is still at ``expected_revision`` (``None``: absent).

        Returns the new revision; ``ConflictError`` when someone else wrote in between.
        """
        value = self._encode(text)
        kv = self._ready()
        with _translated():
            try:
                if expected_revision is None:
                    revision = await kv.create(CONFIG_KEY, value)
                else:
                    revision = await kv.update(CONFIG_KEY, value, last=expected_revision)
            except nats.js.errors.KeyWrongLastSequenceError:
                raise ConflictError(await self._config_revision()) from None
        log.info("fleet store: config revision %d pushed (%d bytes)", revision, len(value))
        return revision

    async def _config_revision(self) -> int | None:
        kv = self._ready()
        with _translated():
            try:
                return (await kv.get(CONFIG_KEY)).revision
            except nats.js.errors.KeyNotFoundError:
                return None

    async def history(self) -> list[ConfigVersion]:
        """The config's kept revisions, oldest first (deletions and unreadable ones left out)."""
        versions: list[ConfigVersion] = []
        for entry in await self._snapshot(CONFIG_KEY, include_history=True):
            text = self._text(CONFIG_KEY, entry.value)
            if text is None or entry.revision is None or not isinstance(entry.created, datetime):
                continue
            digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
            versions.append(ConfigVersion(entry.revision, digest, entry.created))
        return sorted(versions)

    async def rollback(self, revision: int) -> int:
        """Re-put the document of ``revision`` as the newest one; returns the new revision.

        Compare-and-set on the revision current when read: ``ConflictError`` if someone
        pushed in between, ``RevisionNotFound`` if ``revision`` holds no config.
        """
        if revision < 1:  # nats-py would read 0 as "the latest"
            raise RevisionNotFound(revision)
        kv = self._ready()
        current = await self._config_revision()
        with _translated():
            try:
                entry = await kv.get(CONFIG_KEY, revision=revision)
            except nats.js.errors.KeyNotFoundError:
                raise RevisionNotFound(revision) from None
        text = self._text(CONFIG_KEY, entry.value)
        if text is None:
            raise RevisionNotFound(revision)
        new = await self.push_config(text, current)
        log.info("fleet store: config revision %d rolled back to %d as %d", current, revision, new)
        return new

    def watch_config(self) -> AsyncIterator[tuple[int, str]]:
        """(revision, text) of the config: the current one first, then each push, in order.

        Survives NATS restarts: after a reconnect the watch is replaced, and the current
        revision is yielded if it is newer than the last one yielded (pushes made while
        disconnected from a cluster show as their latest). Ends when the store is closed.
        Unreadable values are dropped and counted, never raised.
        """
        return self._watch_config()

    async def _watch_config(self) -> AsyncIterator[tuple[int, str]]:
        last = 0
        while True:
            watch = await self._open_watch(CONFIG_KEY)
            if watch is None:
                return
            try:
                while (entry := await watch.next()) is not _STOPPED:
                    if not isinstance(entry, KeyValue.Entry):
                        continue  # the caught-up marker
                    if entry.operation is not None or entry.revision is None:
                        continue  # a deletion: edges keep the last good document
                    if entry.revision <= last:
                        continue  # a re-opened watch replays the current revision
                    text = self._text(CONFIG_KEY, entry.value)
                    if text is None:
                        continue
                    last = entry.revision
                    yield last, text
            finally:
                await self._stop_watch(watch)

    async def _open_watch(self, key: str) -> _Watch | None:
        """A new registered watch of ``key``; waits out outages. ``None`` once closed."""
        kv = self._kv
        wait = WATCH_RETRY_S[0]
        while not self._closed and kv is not None:
            change = self._conn_change
            if self._nc.is_connected:
                try:
                    watcher = await kv.watch(key, inactive_threshold=WATCH_INACTIVE_S)
                except Exception as exc:  # whatever it is, a watch loop must not die of it
                    log.debug("fleet store: watch not open yet (%s)", type(exc).__name__)
                else:
                    watch = _Watch(watcher)
                    self._watches.add(watch)
                    if not change.done() and not self._closed:
                        return watch
                    await self._stop_watch(watch)  # opened across a connection change: stale
                    continue
            # Until the connection changes, or a while (JetStream may lag the connection).
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(change), wait)
            wait = min(wait * 2, WATCH_RETRY_S[1])
        return None

    async def _stop_watch(self, watch: _Watch) -> None:
        if watch not in self._watches:
            return
        self._watches.discard(watch)
        await watch.stop()

    async def _current(self, prefix: str) -> list[KeyValue.Entry]:
        """Every live entry whose key starts with ``prefix.``, read key by key.

        A watch's "caught up" marker can come before a key that is rewritten while it is read
        (edges report every beat), so a listing by watch may miss one. The stream's own list
        of subjects names every key, and the last message of each is its value now.
        """
        self._ready()
        stream = f"KV_{self.bucket}"
        subject_prefix = f"$KV.{self.bucket}."
        entries: list[KeyValue.Entry] = []
        with _translated():
            js = self._nc.jetstream(timeout=self.timeout)
            info = await js.stream_info(stream, subjects_filter=f"{subject_prefix}{prefix}.>")
            for subject in sorted((info.state.subjects or {}).keys()):
                try:
                    msg = await js.get_last_msg(stream, subject)
                except nats.js.errors.NotFoundError:
                    continue  # purged meanwhile
                if (msg.headers or {}).get("KV-Operation") in ("DEL", "PURGE"):
                    continue  # lifted
                entries.append(
                    KeyValue.Entry(
                        bucket=self.bucket,
                        key=subject[len(subject_prefix) :],
                        value=msg.data,
                        revision=msg.seq,
                        delta=None,
                        # A datetime, as in the watch's entries (nats-py's hint says int).
                        created=msg.time,  # type: ignore[arg-type]
                        operation=None,
                    )
                )
        return entries

    async def _snapshot(self, key: str, *, include_history: bool = False) -> list[KeyValue.Entry]:
        """Every live entry under ``key`` (a pattern) now: one short watch, read to its end."""
        kv = self._ready()
        entries: list[KeyValue.Entry] = []
        with _translated():
            watcher = await kv.watch(
                key, include_history=include_history, inactive_threshold=WATCH_INACTIVE_S
            )
            try:
                async with asyncio.timeout(self.timeout):
                    async for entry in watcher:
                        if entry is None:
                            break  # caught up
                        if entry.operation is None:
                            entries.append(entry)
            finally:
                await _Watch(watcher).stop()
        return entries

    # -- drains -----------------------------------------------------------------------------

    async def set_drain(self, kind: DrainKind, target: str) -> int:
        """Drain (or cordon) a region or an endpoint fleet-wide; returns the revision."""
        key = drain_key(kind, target)
        value = self._encode(target)
        kv = self._ready()
        with _translated():
            revision = await kv.put(key, value)
        log.info("fleet store: %s drain set at revision %d", kind, revision)
        return revision

    async def clear_drain(self, kind: DrainKind, target: str) -> bool:
        """Lift a drain; ``False`` when there was none."""
        key = drain_key(kind, target)
        kv = self._ready()
        with _translated():
            try:
                await kv.get(key)
            except nats.js.errors.KeyNotFoundError:
                return False
            await kv.delete(key)
        log.info("fleet store: %s drain cleared", kind)
        return True

    async def drains(self) -> frozenset[Drain]:
        """Every drain now in force (malformed keys or values dropped and counted)."""
        found = set()
        for entry in await self._current(DRAIN_PREFIX):
            drain = self._drain_of(entry)
            if drain is not None:
                found.add(drain)
        return frozenset(found)

    def watch_drains(self) -> AsyncIterator[frozenset[Drain]]:
        """The drains in force: the whole set once caught up, then again after each change.

        One watch for as long as it is read (an edge's JetStream footprint stays one consumer
        per watch, however often it looks), replaced after a reconnect like
        ``watch_config``'s, whereupon the whole set is yielded again. Ends when the store is
        closed. Malformed keys or values are dropped and counted, never raised.
        """
        return self._watch_drains()

    async def _watch_drains(self) -> AsyncIterator[frozenset[Drain]]:
        while True:
            watch = await self._open_watch(f"{DRAIN_PREFIX}.>")
            if watch is None:
                return
            current: dict[str, Drain] = {}
            caught_up = False
            try:
                while (entry := await watch.next()) is not _STOPPED:
                    if entry is None:  # the caught-up marker: the set as it stands
                        caught_up = True
                    elif isinstance(entry, KeyValue.Entry):
                        drain = self._drain_of(entry) if entry.operation is None else None
                        if drain is None:  # lifted, or unreadable: not in force
                            current.pop(entry.key, None)
                        else:
                            current[entry.key] = drain
                    else:
                        continue
                    if caught_up:
                        yield frozenset(current.values())
            finally:
                await self._stop_watch(watch)

    def _drain_of(self, entry: KeyValue.Entry) -> Drain | None:
        parts = entry.key.split(".")
        text = self._text(DRAIN_PREFIX, entry.value)
        if text is None:
            return None
        try:
            if len(parts) != 3 or parts[1] not in DRAIN_KINDS:
                raise ValueError("not a drain key")
            target = decode_token(parts[2])
        except ValueError:
            self._drop(DRAIN_PREFIX, "bad_key", len(entry.value or b""))
            return None
        if target != text:  # the key and the value must name the same target
            self._drop(DRAIN_PREFIX, "mismatch", len(entry.value or b""))
            return None
        kind: DrainKind = "region" if parts[1] == "region" else "endpoint"
        return Drain(kind, target)

    # -- edges ------------------------------------------------------------------------------

    async def report_edge(self, name: str, doc: Mapping[str, Any]) -> int:
        """Write this edge's report (a JSON object: applied revision, last error, ...)."""
        key = edge_key(name)
        try:
            value = orjson.dumps(dict(doc))
        except TypeError:
            raise InvalidValue("not_json") from None
        if len(value) > self.max_value_bytes:
            raise InvalidValue("too_large")
        kv = self._ready()
        with _translated():
            revision = await kv.put(key, value)
        log.debug("fleet store: edge report at revision %d (%d bytes)", revision, len(value))
        return revision

    async def edges(self) -> dict[str, EdgeRecord]:
        """Every edge's last report, by edge name (malformed ones dropped and counted)."""
        found: dict[str, EdgeRecord] = {}
        for entry in await self._current(EDGE_PREFIX):
            record = self._edge_of(entry)
            if record is not None:
                found[record.name] = record
        return found

    def _edge_of(self, entry: KeyValue.Entry) -> EdgeRecord | None:
        text = self._text(EDGE_PREFIX, entry.value)
        if text is None or entry.revision is None or not isinstance(entry.created, datetime):
            return None
        size = len(entry.value or b"")
        try:
            name = decode_token(entry.key.split(".", 1)[1])
            doc = orjson.loads(text)
        except (ValueError, IndexError):  # orjson.JSONDecodeError is a ValueError
            self._drop(EDGE_PREFIX, "bad_key_or_json", size)
            return None
        if not isinstance(doc, dict):
            self._drop(EDGE_PREFIX, "not_object", size)
            return None
        return EdgeRecord(name, doc, entry.revision, entry.created)

    # -- helpers ----------------------------------------------------------------------------

    def _ready(self) -> KeyValue:
        if self._closed or self._kv is None:
            raise FleetUnavailable("closed")
        if not self._nc.is_connected:
            raise FleetUnavailable("unreachable")  # fail fast rather than wait out a timeout
        return self._kv

    def _encode(self, text: str) -> bytes:
        try:
            value = text.encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidValue("not_utf8") from None
        if len(value) > self.max_value_bytes:
            raise InvalidValue("too_large")
        return value

    def _text(self, key_class: str, value: bytes | None) -> str | None:
        """A value read from the bucket as text, or ``None`` (dropped and counted)."""
        if value is None:
            self._drop(key_class, "empty", 0)
            return None
        if len(value) > self.max_value_bytes:
            self._drop(key_class, "too_large", len(value))
            return None
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            self._drop(key_class, "not_utf8", len(value))
            return None

    def _drop(self, key_class: str, reason: str, size: int) -> None:
        self.dropped += 1
        log.warning("fleet store: dropped a %s value (%s, %d bytes)", key_class, reason, size)
