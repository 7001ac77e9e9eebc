"""CURVE encryption and authentication for every bus socket.

Keys are ZeroMQ certificates (``NAME.key`` public, ``NAME.key_secret``
secret), made by ``skillscale keys generate``. The proxy holds its secret
certificate and two allow-lists (folders of public certificates): clients
and servers. ZAP, ZeroMQ's authentication protocol, admits

* on the publisher side (XSUB) and subscriber side (XPUB): clients and servers;
* on the replica-group side (ROUTER): servers only.

Every message then carries its sender's public key (ZeroMQ's ``User-Id``),
and the proxy drops any message on a reply topic that a client key sent: a
client cannot forge another client's reply. Clients and servers need their
own secret certificate and the proxy's public one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Awaitable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
import zmq
import zmq.asyncio
import zmq.auth
from zmq.auth.asyncio import AsyncioAuthenticator
from zmq.utils.monitor import parse_monitor_message

from skillscale.core.errors import ConfigError

log = logging.getLogger(__name__)

DOMAIN_PUBLISHERS = "publishers"
DOMAIN_SUBSCRIBERS = "subscribers"
DOMAIN_SERVERS = "servers"


def generate_keypair(directory: Path, name: str) -> tuple[Path, Path]:
    """Write ``NAME.key`` and ``NAME.key_secret`` into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    public, secret = zmq.auth.create_certificates(str(directory), name)
    Path(secret).chmod(0o600)
    return Path(public), Path(secret)


def load_public_keys(directory: Path) -> set[bytes]:
    """The z85 public keys of every certificate in ``directory``."""
    if not directory.is_dir():
        raise ConfigError(f"allow-list folder {directory} does not exist")
    return set(zmq.auth.load_certificates(str(directory)))


def _load(path: Path, *, secret: bool) -> tuple[bytes, bytes | None]:
    if not path.is_file():
        raise ConfigError(
            f"certificate {path} does not exist; make one with `skillscale keys generate`"
        )
    try:
        public, secret_key = zmq.auth.load_certificate(str(path))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read certificate {path}: {exc}") from None
    if secret and secret_key is None:
        raise ConfigError(f"{path} holds no secret key (use the .key_secret file)")
    return public, secret_key


@dataclass(frozen=True)
class CurveKeys:
    """A peer's own certificate and the proxy's public key (clients, servers)."""

    secret_file: Path
    server_key_file: Path

    @classmethod
    def from_env(cls) -> CurveKeys | None:
        """``SKILLSCALE_CURVE_SECRET`` + ``SKILLSCALE_CURVE_SERVER_KEY``, if both are set."""
        secret = os.environ.get("SKILLSCALE_CURVE_SECRET")
        server = os.environ.get("SKILLSCALE_CURVE_SERVER_KEY")
        return cls(Path(secret), Path(server)) if secret and server else None

    def validate(self) -> CurveKeys:
        """Read both certificates now: a missing or bad file is a :class:`ConfigError`
        before any socket exists (a socket left open would block its context's exit)."""
        _load(self.secret_file, secret=True)
        _load(self.server_key_file, secret=False)
        return self

    def apply(self, socket: zmq.Socket[Any]) -> None:
        """Make ``socket`` a CURVE client of the proxy (before connect)."""
        public, secret = _load(self.secret_file, secret=True)
        server_public, _ = _load(self.server_key_file, secret=False)
        socket.curve_publickey = public
        socket.curve_secretkey = secret
        socket.curve_serverkey = server_public


@dataclass(frozen=True)
class ProxyCurve:
    """The proxy's certificate, its two allow-lists, and optionally which
    server may serve which topics."""

    secret_file: Path
    clients_dir: Path
    servers_dir: Path
    server_topics: Path | None = None
    """YAML file mapping a server certificate's name (``NAME`` of
    ``NAME.key`` in ``servers_dir``) to the topic patterns (``fnmatch``, e.g.
    ``TOPIC_DATA_*``) it may announce. None: any server key may serve any
    topic. A server key missing from the file may serve nothing."""

    def apply(self, socket: zmq.Socket[Any], domain: str) -> None:
        """Make ``socket`` a CURVE server in ZAP ``domain`` (before bind)."""
        public, secret = _load(self.secret_file, secret=True)
        socket.curve_publickey = public
        socket.curve_secretkey = secret
        socket.curve_server = True
        socket.zap_domain = domain.encode()

    def server_keys(self) -> set[bytes]:
        """z85 public keys allowed to act as servers."""
        return load_public_keys(self.servers_dir)

    def server_topic_rules(self) -> dict[bytes, list[str]] | None:
        """Public key -> allowed topic patterns, from :attr:`server_topics`."""
        if self.server_topics is None:
            return None
        try:
            raw = yaml.safe_load(self.server_topics.read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"cannot read {self.server_topics}: {exc}") from None
        if not isinstance(raw, dict) or not all(
            isinstance(k, str) and isinstance(v, list) and all(isinstance(p, str) for p in v)
            for k, v in raw.items()
        ):
            raise ConfigError(
                f"{self.server_topics} must map certificate names to lists of topic patterns"
            )
        keys: dict[str, bytes] = {}
        for path in sorted(self.servers_dir.glob("*.key")):
            public, _ = _load(path, secret=False)
            keys[path.stem] = public
        rules: dict[bytes, list[str]] = {}
        for name, patterns in raw.items():
            if name not in keys:
                raise ConfigError(f"{self.server_topics}: no certificate {name}.key in "
                                  f"{self.servers_dir}")  # fmt: skip
            rules[keys[name]] = list(patterns)
        return rules


class _AllowList:
    """ZAP credentials provider: which keys each domain admits."""

    def __init__(self, clients: set[bytes], servers: set[bytes]) -> None:
        self.by_domain = {
            DOMAIN_PUBLISHERS: clients | servers,
            DOMAIN_SUBSCRIBERS: clients | servers,
            DOMAIN_SERVERS: servers,
        }

    def callback(self, domain: str, key: bytes) -> bool:
        allowed = key in self.by_domain.get(domain, set())
        if not allowed:
            # One line per refusal; the log handler's RepeatLimiter bounds a flood.
            log.warning(
                "refused a CURVE handshake on %s: key %s is in no allow-list for it "
                "(add its .key file to the proxy's %s folder)",
                domain,
                key.decode(errors="replace"),
                "--curve-servers" if domain == DOMAIN_SERVERS else "--curve-clients",
            )
        return allowed


def start_authenticator(ctx: zmq.Context[Any], curve: ProxyCurve) -> AsyncioAuthenticator:
    """Start ZAP on ``ctx`` with the proxy's allow-lists."""
    provider = _AllowList(load_public_keys(curve.clients_dir), load_public_keys(curve.servers_dir))
    auth = AsyncioAuthenticator(ctx)
    auth.start()
    for domain in (DOMAIN_PUBLISHERS, DOMAIN_SUBSCRIBERS, DOMAIN_SERVERS):
        auth.configure_curve_callback(domain=domain, credentials_provider=provider)
    return auth


@dataclass(frozen=True)
class FabricKeys:
    """The certificates ``skillscale up --curve`` uses, kept in one folder.

    Layout of ``root``: ``proxy.key``/``proxy.key_secret`` (the proxy),
    ``keys/client.*`` and ``keys/server.*`` (one identity each for clients
    and servers), and the allow-lists ``clients/`` and ``servers/`` holding
    only public certificates. Add more clients by putting their public
    ``.key`` file into ``clients/``.
    """

    root: Path

    @property
    def proxy(self) -> ProxyCurve:
        """The proxy's certificate and allow-lists."""
        return ProxyCurve(
            self.root / "proxy.key_secret", self.root / "clients", self.root / "servers"
        )

    @property
    def server(self) -> CurveKeys:
        """What each server uses."""
        return CurveKeys(self.root / "keys" / "server.key_secret", self.root / "proxy.key")

    @property
    def client(self) -> CurveKeys:
        """What a client uses (``SKILLSCALE_CURVE_SECRET`` / ``_SERVER_KEY``)."""
        return CurveKeys(self.root / "keys" / "client.key_secret", self.root / "proxy.key")

    def ensure(self) -> FabricKeys:
        """Create whatever certificate is missing (existing ones are kept)."""
        if not (self.root / "proxy.key_secret").exists():
            generate_keypair(self.root, "proxy")
        for name, allow in (("client", "clients"), ("server", "servers")):
            if not (self.root / "keys" / f"{name}.key_secret").exists():
                generate_keypair(self.root / "keys", name)
            allow_dir = self.root / allow
            allow_dir.mkdir(parents=True, exist_ok=True)
            public = allow_dir / f"{name}.key"
            if not public.exists():
                public.write_bytes((self.root / "keys" / f"{name}.key").read_bytes())
        self.root.chmod(0o700)
        return self


# -- handshake diagnostics -----------------------------------------------------

_HANDSHAKE_EVENTS = (
    zmq.EVENT_HANDSHAKE_SUCCEEDED
    | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
    | zmq.EVENT_HANDSHAKE_FAILED_AUTH
)

T = TypeVar("T")


Peer = Literal["client", "server"]
"""Who connects to the proxy: its allow-list is ``--curve-clients`` or ``--curve-servers``."""
ProbeSocket = Literal["pub", "dealer"]
"""The probe's socket: a PUB for the proxy's XSUB side, a DEALER for its ROUTER."""


def _client_cause(
    event: int, value: int, endpoint: str, curve: CurveKeys | None, who: Peer = "client"
) -> str | None:
    """What a failed handshake, seen by a client or a server, means for the user
    (None: no failure)."""
    if event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
        return None
    where = f"the proxy at {endpoint}"
    if curve is None:
        # A NULL-mechanism handshake only fails against a CURVE server (the
        # proxy may close first, so the event is not always MECHANISM_MISMATCH).
        return (
            f"{where} requires CURVE keys (handshake refused: this {who} has none); set "
            "SKILLSCALE_CURVE_SECRET and SKILLSCALE_CURVE_SERVER_KEY "
            "(`skillscale up --curve` prints both)"
        )
    if (
        event == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
        and value == zmq.PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH
    ):
        return (
            f"{where} does not use CURVE, but this {who} does (handshake refused); unset "
            "SKILLSCALE_CURVE_SECRET / SKILLSCALE_CURVE_SERVER_KEY, or start the proxy with CURVE"
        )
    if event == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
        public = curve.secret_file.with_suffix(".key")
        return (
            f"{where} refused this {who}'s CURVE key (status {value}: not in its allow-list); "
            f"copy {public} into the proxy's --curve-{who}s folder"
        )
    return (
        f"the CURVE handshake with {where} failed ({zmq.Event(event).name}); is "
        f"{curve.server_key_file} that proxy's public key, and does the proxy use CURVE?"
    )


async def handshake_failure(
    ctx: zmq.asyncio.Context,
    endpoint: str,
    curve: CurveKeys | None,
    *,
    timeout: float | None,
    who: Peer = "client",
    socket_type: ProbeSocket = "pub",
) -> str | None:
    """Connect one throw-away socket the way a client would and watch its
    handshake (ZMTP monitor events): the user's sentence for a refusal, or None
    when it succeeds or nothing answers within ``timeout`` seconds (None: wait
    for the first handshake however long it takes).

    A fresh socket, monitored before it connects, sees the first handshake
    (a refused one is not always retried); it sends nothing. ``socket_type``
    must be one the endpoint accepts (``"dealer"`` for the proxy's ROUTER), or
    ZMTP refuses even a good key.
    """
    sock = ctx.socket(zmq.DEALER if socket_type == "dealer" else zmq.PUB)
    sock.setsockopt(zmq.LINGER, 0)
    monitor = sock.get_monitor_socket(_HANDSHAKE_EVENTS)
    try:
        if curve is not None:
            curve.apply(sock)
        sock.connect(endpoint)
        if not await monitor.poll(None if timeout is None else int(timeout * 1000)):
            return None
        event = parse_monitor_message(await monitor.recv_multipart())
        return _client_cause(int(event["event"]), int(event["value"]), endpoint, curve, who)
    finally:
        sock.disable_monitor()
        monitor.close(0)
        sock.close(0)


async def diagnosed(
    attempt: Awaitable[T],
    ctx: zmq.asyncio.Context,
    endpoint: str,
    curve: CurveKeys | None,
    *,
    timeout: float | None,
    who: Peer = "client",
    socket_type: ProbeSocket = "pub",
) -> T:
    """Await ``attempt`` (e.g. the client's first round trip); if a handshake
    with ``endpoint`` is refused meanwhile, stop it and raise a
    :class:`ConfigError` naming the cause instead of letting it time out.

    With no ``timeout`` (a server told to wait for its proxy however long),
    the cause is logged once as a warning and the wait goes on (the proxy may
    be restarted with other settings).
    """
    main = asyncio.ensure_future(attempt)
    probe = asyncio.ensure_future(handshake_failure(
        ctx, endpoint, curve, timeout=timeout, who=who, socket_type=socket_type))  # fmt: skip
    try:
        await asyncio.wait([main, probe], return_when=asyncio.FIRST_COMPLETED)
        if not main.done() and probe.exception() is None:
            cause = probe.result()
            if cause is not None:
                if timeout is not None:
                    raise ConfigError(cause)
                log.warning("%s; still waiting", cause)
        return await main
    finally:
        for task in (main, probe):
            task.cancel()
        for task in (main, probe):
            with contextlib.suppress(BaseException):
                await task


class HandshakeLog:
    """The proxy's side: one warning per refused handshake on its sockets.

    ZAP (:class:`_AllowList`) sees only keys it can check; a peer with no
    CURVE at all or the wrong proxy key fails before ZAP, which only the
    sockets' monitor events show. Log lines go through the log handler's
    RepeatLimiter, so a peer retrying forever cannot flood the log.
    """

    def __init__(self, sockets: dict[str, zmq.asyncio.Socket]) -> None:
        events = zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
        self._watched = [
            (name, sock, sock.get_monitor_socket(events)) for name, sock in sockets.items()
        ]

    async def run(self) -> None:
        """Log refusals until cancelled; then close the monitors."""
        try:
            poller = zmq.asyncio.Poller()
            for _, _, monitor in self._watched:
                poller.register(monitor, zmq.POLLIN)
            while True:
                for monitor, _ in await poller.poll():
                    name = next(n for n, _, m in self._watched if m is monitor)
                    event = parse_monitor_message(await monitor.recv_multipart())
                    log.warning("refused a handshake on the %s socket: %s", name,
                                _proxy_cause(int(event["event"]), int(event["value"])))  # fmt: skip
        finally:
            self.close()

    def close(self) -> None:
        """Stop monitoring (idempotent); before the sockets close."""
        for _, sock, monitor in self._watched:
            if not sock.closed:
                sock.disable_monitor()
            monitor.close(0)
        self._watched = []


def _proxy_cause(event: int, value: int) -> str:
    if (
        event == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
        and value == zmq.PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH
    ):
        return "a peer with no CURVE keys (it needs SKILLSCALE_CURVE_SECRET and _SERVER_KEY)"
    if (
        event == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
        and value == zmq.PROTOCOL_ERROR_ZMTP_CRYPTOGRAPHIC
    ):
        return "a peer whose CURVE server key is not this proxy's public key"
    # The peer often hangs up before ZeroMQ can tell the reason (an errno).
    return (
        "a peer did not complete the CURVE handshake (it has no CURVE keys, or not this "
        f"proxy's public key; errno {value})"
    )
