"""Authentication and encryption for remote players: CurveZMQ through pyzmq's `zmq.auth`.

A worker bound beyond loopback must know who plays on it (docs/protocol.md, "Authentication"):

- `run_world.py keys --name NAME` makes a key pair, `NAME.key` (public: give it away) and
  `NAME.key_secret` (secret: keep it), in ZeroMQ's certificate format (`zmq.auth`);
- the worker runs with its secret key (`serve --server-key worker.key_secret`) and a directory of
  the client public keys it accepts (`--authorized-keys DIR`); libzmq's CURVE handshake then
  authenticates each client against that directory (ZAP, `zmq.auth.thread.ThreadAuthenticator`)
  and encrypts every frame;
- a client connects with its own secret key and the worker's public key (`play --connect ...
  --client-key player.key_secret --server-key worker.key`, or the key's 40 characters).

Binding beyond loopback without keys is refused unless `serve --insecure`, which the log and
every client's `opened` reply say. Nothing here is our own cryptography: libzmq does all of it.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import zmq

from world.launcher import command

log = logging.getLogger("world.auth")

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "[::1]", "::1")
DEFAULT_KEY_DIR = Path.home() / ".gworld" / "keys"
INSECURE_NOTICE = ("this worker is bound beyond loopback without authentication (serve --insecure): anyone who "
                   "reaches its port can play, and frames travel unencrypted")  # fmt: skip


class AuthError(ValueError):
    """A key that cannot be used (missing, unreadable, malformed) or a bind that needs keys."""


@dataclass(frozen=True)
class ServerKeys:
    public: bytes  # z85, 40 bytes
    secret: bytes
    authorized_dir: Path  # client public keys (*.key) accepted


@dataclass(frozen=True)
class ClientKeys:
    public: bytes
    secret: bytes
    server_public: bytes


def is_loopback(bind: str) -> bool:
    """True for endpoints only this machine reaches (loopback TCP, ipc, inproc)."""
    if bind.startswith(("inproc://", "ipc://")):
        return True
    host = bind.split("://", 1)[-1].rsplit(":", 1)[0]
    return host in LOOPBACK_HOSTS


def fingerprint(public: bytes) -> str:
    """A short, comparable form of a public key: SHA-256 of its z85 text, 16 hex digits in 4 groups."""
    digest = hashlib.sha256(public).hexdigest()[:16]
    return ":".join(digest[i : i + 4] for i in range(0, 16, 4))


def make_keys(directory: str | os.PathLike, name: str) -> tuple[Path, Path]:
    """A new key pair `name.key` / `name.key_secret` in `directory` (the secret one mode 0600).
    Refuses to overwrite an existing pair."""
    import zmq.auth

    directory = Path(directory)
    if not name or "/" in name or name.startswith("."):
        raise AuthError(f"key name {name!r} must be a plain file name")
    public, secret = directory / f"{name}.key", directory / f"{name}.key_secret"
    if public.exists() or secret.exists():
        raise AuthError(f"{public} or {secret} exists already; pick another --name or remove them")
    directory.mkdir(parents=True, exist_ok=True)
    zmq.auth.create_certificates(directory, name)
    os.chmod(secret, 0o600)
    return public, secret


def read_public_key(value: str) -> bytes:
    """A public key from a `.key` (or `.key_secret`) file, or the 40 z85 characters themselves."""
    if len(value) == 40 and not Path(value).exists():
        return _check_z85(value.encode("ascii", "replace"), "the key")
    public, _ = _load(value)
    return public


def read_secret_key(path: str) -> tuple[bytes, bytes]:
    """(public, secret) from a `.key_secret` file."""
    public, secret = _load(path)
    if secret is None:
        raise AuthError(f"{path} holds no secret key (the secret one is the .key_secret file)")
    return public, secret


# ----------------------------------------------------------------------------- known servers (trust on first use)

DEFAULT_KNOWN_SERVERS = Path.home() / ".gworld" / "known_servers"
# How the worker at an address answers a CURVE handshake made with the key remembered for it
# (`handshake`): libzmq's monitor events tell these apart without a message being sent.
ACCEPTED = "accepted"  # it holds that key and took our client key
UNLISTED = "unlisted"  # it holds that key (it could read our hello) but does not list our client key
OTHER_KEY = "other key"  # it answers the handshake, but cannot read a hello made for that key
NO_KEYS = "no keys"  # it answers without CURVE: a plain worker
SILENT = "silent"  # nothing listens there (down, not there yet), or nothing answered the handshake in time
HANDSHAKE_S = 10.0  # the longest wait for a worker that took the connection to answer its handshake


class ServerKeyChanged(AuthError):
    """The worker at a remembered address holds (or is given) another key, or now answers without one."""


def normal_address(address: str) -> str:
    """The form an address is remembered and looked up under: `tcp://` when no scheme is given, the
    host lowercased, this machine's IPv4 loopback however spelled (localhost, 0.0.0.0, *, none) as
    127.0.0.1 and its IPv6 one as [::1], the port without leading zeros, no trailing slash.
    ipc:// and inproc:// addresses are kept as they are."""
    address = address.strip().rstrip("/")
    scheme, sep, rest = address.partition("://")
    if not sep:
        scheme, rest = "tcp", address
    if scheme.lower() != "tcp":
        return address
    host, colon, port = rest.rpartition(":")
    if not colon or not port.isdigit():
        return f"tcp://{rest.lower()}"
    host = host.lower()
    if host in ("", "*", "0.0.0.0", "localhost", "127.0.0.1"):
        host = "127.0.0.1"
    elif host in ("::1", "[::1]", "ip6-localhost", "[::]"):
        host = "[::1]"
    return f"tcp://{host}:{int(port)}"


def known_server_keys(path: str | os.PathLike) -> dict[str, bytes]:
    """Normal address -> z85 public key from a known-servers file (lines `ADDRESS KEY`; # comments).
    Two lines with different keys for one address (e.g. `localhost` and `127.0.0.1`) are refused."""
    path = Path(path)
    if not path.is_file():
        return {}
    known: dict[str, bytes] = {}
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        parts = line.split()
        if len(parts) != 2:
            raise AuthError(f"{path}:{n}: expected 'ADDRESS KEY', got {line[:80]!r}")
        address, key = normal_address(parts[0]), _check_z85(parts[1].encode("ascii", "replace"), f"{path}:{n}")
        if known.get(address, key) != key:
            raise AuthError(f"{path}:{n}: a second, different key for {address}: remove the line that is wrong")
        known[address] = key
    return known


def remember_server_key(address: str, key: bytes, path: str | os.PathLike) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        f.write(f"{normal_address(address)} {key.decode('ascii')}\n")


def trusted_server_key(address: str, given: bytes | None, path: str | os.PathLike) -> tuple[bytes, str]:
    """The worker key to use for `address`, SSH's way, without asking the worker: the remembered one
    (a given key that differs is refused: ServerKeyChanged, since someone may be in between), else
    the given one. Returns the key and "known", "given and known" or "given" (not yet remembered:
    `player_keys` remembers it once the worker has shown that it holds it)."""
    address, path = normal_address(address), Path(path)
    remembered = known_server_keys(path).get(address)
    if remembered is None:
        if given is None:
            raise AuthError(f"no key is known for the worker at {address}: pass --server-key (its .key file or "
                            f"40 characters) once; it is then remembered in {path}")  # fmt: skip
        return given, "given"
    if given is not None and given != remembered:
        raise ServerKeyChanged(
            f"SERVER KEY CHANGED for the worker at {address}: remembered {fingerprint(remembered)}, given "
            f"{fingerprint(given)}. Someone may be impersonating the worker (or it got a new key). Ask its "
            f"operator for the fingerprint (`{command('keys --show FILE')}` prints it); if it is right, remove "
            f"the line for {address} from {path} and connect again")  # fmt: skip
    return remembered, "known" if given is None else "given and known"


def handshake(address: str, server_public: bytes, own: tuple[bytes, bytes] | None = None,
              timeout_s: float = HANDSHAKE_S, context: zmq.Context | None = None) -> str:  # fmt: skip
    """How the worker at `address` answers a handshake in clear and then one with CURVE for
    `server_public`, made with `own` (public, secret) or a throwaway pair: NO_KEYS, ACCEPTED,
    UNLISTED, OTHER_KEY or SILENT. Nothing but handshakes is sent, so a worker that is not the one
    remembered learns nothing. (A worker in clear drops a CURVE hello as a keyed one with another key
    does, so it is asked in clear first.)"""
    plain = _handshake_once(address, None, timeout_s, context)
    if plain in (ACCEPTED, SILENT):
        return NO_KEYS if plain == ACCEPTED else SILENT
    public, secret = own if own is not None else zmq.curve_keypair()
    return _handshake_once(address, ClientKeys(public, secret, server_public), timeout_s, context)


def _handshake_once(address: str, keys: ClientKeys | None, timeout_s: float, context: zmq.Context | None) -> str:
    from zmq.utils.monitor import recv_monitor_message

    socket = (context or zmq.Context.instance()).socket(zmq.DEALER)
    socket.linger = 0
    if keys is not None:
        secure_client(socket, keys)
    monitor = socket.get_monitor_socket()
    try:
        socket.connect(address)
        deadline = time.monotonic() + timeout_s
        while (left := deadline - time.monotonic()) > 0:
            if monitor.poll(max(1, int(left * 1000))):
                answer = _handshake_answer(recv_monitor_message(monitor))
                if answer is not None:
                    return answer
        return SILENT
    finally:
        socket.disable_monitor()
        monitor.close(linger=0)
        socket.close(linger=0)


def _handshake_answer(event: dict) -> str | None:
    kind, value = int(event["event"]), int(event["value"])
    if kind == zmq.EVENT_HANDSHAKE_SUCCEEDED:
        return ACCEPTED
    if kind == zmq.EVENT_HANDSHAKE_FAILED_AUTH:  # the worker read our hello, so it holds the key
        return UNLISTED
    if kind == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL and value == zmq.PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH:
        return NO_KEYS
    if kind in (zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL, zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL):
        return OTHER_KEY  # it dropped a hello it could not decrypt
    if kind == zmq.EVENT_CONNECT_RETRIED:  # the connection was refused: nothing listens there now
        return SILENT
    return None


def player_keys(address: str, client_key: str | None, server_key: str | None, known: str | os.PathLike,
                timeout_s: float = HANDSHAKE_S) -> tuple[ClientKeys | None, str | None]:  # fmt: skip
    """The CURVE keys to play the worker at `address` with (None: in clear) and the line that says
    which worker key is used, from `play --client-key/--server-key` and the known-servers file.

    Trust on first use that cannot be skipped: an address with a remembered key is checked on every
    play, keys or not, by a handshake (`handshake`), and refused (ServerKeyChanged, naming the
    address, the remembered fingerprint and what to do) when the worker there answers without keys
    or with another key. A key given for a new address is remembered once the worker shows it holds
    it. An address never played with keys plays in clear, as before. AuthError for what cannot go on."""
    address, known = normal_address(address), Path(known)
    if server_key is not None and client_key is None:
        raise AuthError("--server-key needs --client-key (your secret key) as well")
    remembered = known_server_keys(known).get(address)
    if remembered is None and server_key is None and client_key is None:
        return None, None  # never played with keys: a loopback or --insecure worker
    given = read_public_key(server_key) if server_key is not None else None
    own = read_secret_key(client_key) if client_key is not None else None
    server, how = trusted_server_key(address, given, known)
    answer = handshake(address, server, own, timeout_s)
    _refuse_answer(answer, address, server, remembered is not None, known)
    if own is None:
        state = "no worker answers there now" if answer == SILENT else "the worker there holds that key"
        raise AuthError(f"the worker at {address} is remembered with key {fingerprint(server)} ({known}) and {state}: "
                        f"play it with --client-key YOUR.key_secret. To play a worker without keys there instead, "
                        f"remove the line for {address} from {known}")  # fmt: skip
    if how == "given":
        if answer == SILENT:
            how = "given; not remembered, as no worker answered to show it holds it"
        else:
            remember_server_key(address, server, known)
            how = "remembered"
    if answer == UNLISTED:
        raise AuthError(f"the worker at {address} holds key {fingerprint(server)} but does not list your client key "
                        f"{fingerprint(own[0])}: give its operator your public key (the .key file next to "
                        f"{client_key}) for its --authorized-keys directory")  # fmt: skip
    said = f"worker key {fingerprint(server)} ({how}, {known}), client key {fingerprint(own[0])}"
    return ClientKeys(own[0], own[1], server), said


def _refuse_answer(answer: str, address: str, server: bytes, remembered: bool, known: Path) -> None:
    """ServerKeyChanged when the worker does not hold the key remembered for it (or holds none);
    AuthError when it does not hold a key given for the first time."""
    if answer not in (NO_KEYS, OTHER_KEY):
        return
    show = f"`{command('keys --show FILE')}` prints a key's fingerprint"
    if not remembered:
        what = ("answers without keys, so --client-key and --server-key do not apply to it" if answer == NO_KEYS else
                f"does not hold the key given with --server-key ({fingerprint(server)}): check it with its operator "
                f"({show})")  # fmt: skip
        raise AuthError(f"the worker at {address} {what}; nothing was remembered")
    if answer == NO_KEYS:
        headline, why = f"THE WORKER AT {address} NOW ANSWERS WITHOUT KEYS", "answering in clear needs no key"
        then = "If its operator confirms that it runs without keys now"
    else:
        headline = f"SERVER KEY CHANGED for the worker at {address}: it answers with another key"
        why = "or it got a new key"
        then = f"Ask its operator for the new key's fingerprint ({show}); if it is right"
    raise ServerKeyChanged(
        f"{headline}, but the key remembered for it is {fingerprint(server)} (in {known}). Someone may be "
        f"impersonating the worker ({why}): not playing. {then}, remove the line for {address} from {known} and "
        f"connect again{' with --server-key' if answer == OTHER_KEY else ''}")  # fmt: skip


def _load(path: str) -> tuple[bytes, bytes | None]:
    import zmq.auth

    if not Path(path).is_file():
        raise AuthError(f"key file {path} does not exist")
    try:
        public, secret = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as exc:
        raise AuthError(f"{path} is not a ZeroMQ key file ({exc}); make one with `{command('keys')}`") from None
    return _check_z85(public, path), secret


def _check_z85(key: bytes | None, where: str) -> bytes:
    from zmq.utils import z85

    try:
        if key is None or len(z85.decode(key)) != 32:
            raise ValueError
    except ValueError:
        raise AuthError(f"{where}: not a CURVE public key (40 z85 characters)") from None
    return key


def server_keys(secret_file: str | None, authorized_dir: str | None) -> ServerKeys | None:
    """The worker's keys from `serve --server-key --authorized-keys`, or None when neither is given."""
    if secret_file is None and authorized_dir is None:
        return None
    if secret_file is None or authorized_dir is None:
        raise AuthError("--server-key and --authorized-keys go together")
    public, secret = read_secret_key(secret_file)
    if not Path(authorized_dir).is_dir():
        raise AuthError(f"--authorized-keys {authorized_dir}: not a directory of client .key files")
    return ServerKeys(public, secret, Path(authorized_dir))


def check_bind(bind: str, keys: ServerKeys | None, insecure: bool) -> str | None:
    """Raise AuthError for a bind beyond loopback without keys (and without --insecure); returns the
    notice every client is told, if any."""
    if keys is not None or is_loopback(bind):
        return None
    if not insecure:
        raise AuthError(f"binding {bind} reaches other machines: give the worker keys (--server-key, "
                        f"--authorized-keys; see `{command('keys')}`) or pass --insecure")  # fmt: skip
    log.warning("binding %s WITHOUT authentication or encryption (--insecure): anyone who reaches the port plays "
                "and frames travel in clear", bind)  # fmt: skip
    return INSECURE_NOTICE


def start_authenticator(context: zmq.Context, keys: ServerKeys) -> object:
    """ZAP handler for `context`: CURVE clients whose public key is in keys.authorized_dir pass."""
    from zmq.auth.thread import ThreadAuthenticator

    authenticator = ThreadAuthenticator(context, log=logging.getLogger("world.auth.zap"))
    authenticator.start()
    authenticator.configure_curve(domain="*", location=str(keys.authorized_dir))
    count = len(list(keys.authorized_dir.glob("*.key")))
    log.info("CURVE on: server key %s, %d authorized client keys in %s", fingerprint(keys.public), count,
             keys.authorized_dir)  # fmt: skip
    return authenticator


def secure_server(socket: zmq.Socket, keys: ServerKeys) -> None:
    socket.curve_secretkey = keys.secret
    socket.curve_publickey = keys.public
    socket.curve_server = True


def secure_client(socket: zmq.Socket, keys: ClientKeys) -> None:
    socket.curve_secretkey = keys.secret
    socket.curve_publickey = keys.public
    socket.curve_serverkey = keys.server_public


# -- `run_world.py keys` ---------------------------------------------------------------------------


def add_arguments(parser) -> None:
    parser.add_argument("--name", default="worker", help="file name of the pair: NAME.key, NAME.key_secret "
                        "(default %(default)s; a player's: e.g. --name player)")  # fmt: skip
    parser.add_argument("--dir", default=str(DEFAULT_KEY_DIR), help="where to write them (default %(default)s)")
    parser.add_argument("--show", metavar="FILE|KEY", help="make nothing: print the fingerprint of this key (to "
                        "compare with what a player's known-servers file holds)")  # fmt: skip


def run(args) -> int:
    if getattr(args, "show", None):
        try:
            print(f"fingerprint {fingerprint(read_public_key(args.show))}")
        except AuthError as exc:
            print(f"keys: {exc}", flush=True)
            return 2
        return 0
    try:
        public_file, secret_file = make_keys(args.dir, args.name)
    except AuthError as exc:
        print(f"keys: {exc}", flush=True)
        return 2
    public = read_public_key(str(public_file))
    print(f"public key  {public_file}  (give this file away)")
    print(f"secret key  {secret_file}  (keep it; mode 0600)")
    print(f"fingerprint {fingerprint(public)}")
    return 0
