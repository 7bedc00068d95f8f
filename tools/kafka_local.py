"""The embedded Apache Kafka broker (KRaft, combined broker+controller) on 127.0.0.1.

Runs the broker from the jars that ``make setup`` fetched into ``.deps/kafka-jars``;
state, logs and the PID file live in ``.run/kafka`` (git-ignored)::

    python -m tools.kafka_local up      # format on first start, start, wait, create topics
    python -m tools.kafka_local status
    python -m tools.kafka_local down    # stops exactly the broker of our PID file

``up`` is idempotent: a broker already started from this folder is reused.

A SASL_SSL listener, as a managed Kafka has, next to the PLAINTEXT one (which stays for
the controller, the broker itself and ``up``'s topic creation, on 127.0.0.1 only)::

    python -m tools.kafka_local make-certs .run/kafka/ssl          # CA + broker certificate
    export DOODLE_KAFKA_USERNAME=alice DOODLE_KAFKA_PASSWORD=...    # the broker's one user
    python -m tools.kafka_local up --sasl-ssl-port 9094 --ssl-dir .run/kafka/ssl

The user may log in with SASL/PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512; its name and
password come from the environment variables named by [kafka] sasl_username_env /
sasl_password_env — the same ones the clients read. Clients then use
``bootstrap_servers = "127.0.0.1:9094"``, ``security_protocol = "SASL_SSL"`` and
``ssl_ca_location = ".run/kafka/ssl/ca.pem"``.
"""

from __future__ import annotations

import argparse
import base64
import dataclasses
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from confluent_kafka.admin import ScramCredentialInfo, ScramMechanism, UserScramCredentialUpsertion

from doodlestats.io.kafka import KafkaRejected, KafkaUnavailable, admin_client, metadata
from doodlestats.io.kafka import ensure_topic as _ensure
from doodlestats.runtime.config import REPO_ROOT, Config, ConfigError, load_config
from tools._proc import pid_alive, port_open, terminate  # noqa: F401

JARS = REPO_ROOT / ".deps" / "kafka-jars"
LOG4J = REPO_ROOT / "conf" / "kafka" / "log4j2.properties"


def run_dir() -> Path:
    """Where the broker keeps data, logs and its PID file ($DOODLE_KAFKA_DIR or .run/kafka)."""
    return Path(os.environ.get("DOODLE_KAFKA_DIR") or REPO_ROOT / ".run" / "kafka")


class BrokerError(RuntimeError):
    """Something the user must fix; the message says what to run."""


def _say(msg: str) -> None:
    print(f"kafka: {msg}", file=sys.stderr, flush=True)


def _port_open(host: str, port: int) -> bool:
    return port_open(host, port)


def _pid_alive(pid: int) -> bool:
    return pid_alive(pid)


def running_pid() -> int | None:
    """PID of the broker started from this folder, if it is still alive."""
    try:
        pid = int((run_dir() / 'broker.pid').read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if _pid_alive(pid) else None


# ------------------------------------------------------------------ SASL_SSL listener
CA_FILE = "ca.pem"                 # what clients trust ([kafka] ssl_ca_location)
KEYSTORE_FILE = "broker-keystore.pem"  # the broker's private key + certificate chain (PEM keystore)
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")


@dataclasses.dataclass(frozen=True)
class SaslSsl:
    """A SASL_SSL listener on ``port``: the certificates of :func:`make_certs` in
    ``ssl_dir``; ``users`` maps user names to passwords (from the environment, never argv)."""
    port: int
    ssl_dir: Path
    users: dict[str, str]

    def __repr__(self) -> str:  # never print the passwords
        return f"SaslSsl(port={self.port}, ssl_dir={str(self.ssl_dir)!r}, users={sorted(self.users)})"


def make_certs(ssl_dir: str | Path, hosts: tuple[str, ...] = ("localhost", "127.0.0.1"),
               days: int = 825) -> Path:
    """A self-signed CA and a broker certificate for ``hosts`` (DNS names and IP addresses
    in subjectAltName), made with openssl into ``ssl_dir``: ``ca.pem`` (what clients trust)
    and ``broker-keystore.pem`` (the broker's key and chain). Existing files are kept.
    Returns the path of ``ca.pem``. Private keys are unencrypted, mode 0600: local testing."""
    d = Path(ssl_dir)
    ca, keystore = d / CA_FILE, d / KEYSTORE_FILE
    if ca.is_file() and keystore.is_file():
        return ca
    openssl = shutil.which("openssl")
    if openssl is None:
        raise BrokerError("openssl not found on PATH — install it (e.g. apt-get install openssl)")
    d.mkdir(parents=True, exist_ok=True)
    san = ",".join(f"IP:{h}" if re.fullmatch(r"[0-9.]+|[0-9a-fA-F:]*:[0-9a-fA-F:]*", h) else f"DNS:{h}"
                   for h in hosts)

    def run(*args: str) -> None:
        r = subprocess.run([openssl, *args], capture_output=True, text=True, cwd=tmp)
        if r.returncode != 0:
            raise BrokerError(f"openssl {args[0]} failed: {(r.stderr.strip().splitlines() or ['?'])[-1]}")

    old_umask = os.umask(0o077)
    try:
        with tempfile.TemporaryDirectory(dir=d) as tmp:
            run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem",
                "-days", str(days), "-subj", "/CN=doodle local test CA",
                "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign")
            run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "broker.key", "-out", "broker.csr",
                "-subj", f"/CN={hosts[0]}")
            Path(tmp, "ext.cnf").write_text(f"subjectAltName={san}\nextendedKeyUsage=serverAuth\n"
                                            "keyUsage=critical,digitalSignature,keyEncipherment\n")
            run("x509", "-req", "-in", "broker.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
                "-out", "broker.crt", "-days", str(days), "-sha256", "-extfile", "ext.cnf")
            run("pkcs8", "-topk8", "-nocrypt", "-in", "broker.key", "-out", "broker.pk8")
            t = Path(tmp)
            (t / KEYSTORE_FILE).write_text((t / "broker.pk8").read_text() + (t / "broker.crt").read_text()
                                           + (t / "ca.pem").read_text())
            for name in ("ca.key", KEYSTORE_FILE, CA_FILE):  # the CA file last: it marks completion
                os.replace(t / name, d / name)
    finally:
        os.umask(old_umask)
    os.chmod(ca, 0o644)
    return ca


def sasl_users_from_env(cfg: Config) -> dict[str, str]:
    """The broker's one SASL user: name and password from the environment variables that
    [kafka] names for the clients (sasl_username_env / sasl_password_env)."""
    k = cfg.kafka
    user, password = os.environ.get(k.sasl_username_env), os.environ.get(k.sasl_password_env)
    if not user or not password:
        raise BrokerError(f"a SASL_SSL listener needs a user: set the environment variables "
                          f"{k.sasl_username_env} and {k.sasl_password_env}")
    return {user: password}


def _prop(value: str) -> str:
    """A value escaped for a Java .properties file (ISO-8859-1; others as \\uXXXX)."""
    out = []
    for ch in value:
        if ch == "\\":
            out.append("\\\\")
        elif ch in "\n\r\t\f":
            out.append({"\n": "\\n", "\r": "\\r", "\t": "\\t", "\f": "\\f"}[ch])
        elif ord(ch) < 0x20 or ord(ch) > 0x7e:
            b = ch.encode("utf-16-be")
            out.append("".join(f"\\u{int.from_bytes(b[i:i + 2], 'big'):04x}" for i in range(0, len(b), 2)))
        else:
            out.append(ch)
    return "".join(out)


def _jaas(value: str) -> str:
    """A JAAS option value, quoted."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _sasl_ssl_properties(cfg: Config, sasl: SaslSsl) -> str:
    ks = sasl.ssl_dir.resolve() / KEYSTORE_FILE
    if not ks.is_file():
        raise BrokerError(f"no broker certificate in {sasl.ssl_dir} — make one with "
                          f"`python -m tools.kafka_local make-certs {sasl.ssl_dir}`")
    for user in sasl.users:
        if not re.fullmatch(r"[A-Za-z0-9._-]+", user):
            raise BrokerError(f"SASL user name {user!r}: use letters, digits, '.', '_' or '-' only")
        if "\n" in sasl.users[user] or "\r" in sasl.users[user]:
            raise BrokerError(f"the SASL password of {user} has a line break, which a JAAS configuration cannot hold")
    plain = "org.apache.kafka.common.security.plain.PlainLoginModule required " + \
        " ".join(f"user_{u}={_jaas(p)}" for u, p in sorted(sasl.users.items())) + ";"
    scram = "org.apache.kafka.common.security.scram.ScramLoginModule required;"
    return f"""listener.name.sasl_ssl.sasl.enabled.mechanisms={",".join(SASL_MECHANISMS)}
listener.name.sasl_ssl.plain.sasl.jaas.config={_prop(plain)}
listener.name.sasl_ssl.scram-sha-256.sasl.jaas.config={scram}
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config={scram}
listener.name.sasl_ssl.ssl.keystore.type=PEM
listener.name.sasl_ssl.ssl.keystore.location={_prop(str(ks))}
"""


def server_properties(cfg: Config, sasl: SaslSsl | None = None) -> str:
    k = cfg.kafka
    host, port, cport = k.host, k.port, k.controller_port
    extra_l, extra_a, extra_m = ("", "", "") if sasl is None else \
        (f",SASL_SSL://{host}:{sasl.port}", f",SASL_SSL://{host}:{sasl.port}", ",SASL_SSL:SASL_SSL")
    return f"""# generated by tools.kafka_local from conf/doodle.toml — do not edit
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@{host}:{cport}
listeners=PLAINTEXT://{host}:{port},CONTROLLER://{host}:{cport}{extra_l}
advertised.listeners=PLAINTEXT://{host}:{port}{extra_a}
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT{extra_m}
log.dirs={run_dir() / 'data'}
num.partitions={k.input_partitions}
auto.create.topics.enable=false
offsets.topic.replication.factor=1
offsets.topic.num.partitions=3
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
log.retention.hours=-1
log.retention.bytes=-1
log.segment.bytes=268435456
message.max.bytes={k.max_message_bytes}
replica.fetch.max.bytes={k.max_message_bytes}
""" + ("" if sasl is None else _sasl_ssl_properties(cfg, sasl))


def _java() -> str:
    java = shutil.which("java")
    if java is None:
        raise BrokerError("java not found on PATH — install OpenJDK 17 (e.g. apt-get install openjdk-17-jre-headless)")
    return java


def _classpath() -> str:
    if not JARS.is_dir() or not any(JARS.glob("kafka_2.13-*.jar")):
        raise BrokerError(f"Kafka jars not fetched yet ({JARS}) — run `make setup`")
    return str(JARS / "*")


def _run_tool(args: list[str]) -> None:
    cmd = [_java(), "-cp", _classpath(), f"-Dlog4j2.configurationFile={LOG4J}",
           f"-Dkafka.logs.file={run_dir() / 'tool.log'}", *args]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        raise BrokerError(f"{' '.join(args[:2])} failed: {res.stderr.strip() or res.stdout.strip()}")


def _admin(cfg: Config, **extra):
    try:
        return admin_client(cfg, **extra)
    except KafkaUnavailable as e:
        raise BrokerError(str(e)) from None


def wait_ready(cfg: Config, timeout: float = 90.0, pid: int | None = None) -> None:
    """Wait until the broker answers a metadata request, through the security settings of
    ``cfg``. Credentials or a certificate the broker refuses end the wait at once with
    :class:`doodlestats.io.kafka.KafkaRejected` (one line saying what to check)."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        if pid is not None and not _pid_alive(pid):
            tail = (run_dir() / 'server.log').read_text()[-2000:] if (run_dir() / 'server.log').exists() else ""
            raise BrokerError(f"broker exited during start-up; see {(run_dir() / 'server.log')}\n{tail}")
        if _port_open(cfg.kafka.host, cfg.kafka.port):
            try:
                if metadata(cfg, timeout=5).brokers:
                    return
            except KafkaRejected:
                raise
            except KafkaUnavailable as e:  # still starting
                last = e
        time.sleep(0.5)
    raise BrokerError(f"broker did not answer within {timeout:.0f}s ({last}); see {(run_dir() / 'server.log')}")


def ensure_topic(cfg: Config, name: str, partitions: int) -> bool:
    """Create ``name`` with ``partitions`` partitions if it does not exist. True if created."""
    try:
        return _ensure(cfg, name, partitions)
    except KafkaUnavailable as e:
        raise BrokerError(str(e)) from None


def _running_properties() -> str:
    """The server.properties the broker of this folder was started with ("" if none)."""
    try:
        return (run_dir() / "server.properties").read_text()
    except OSError:
        return ""


def _listeners() -> str:
    """The ``listeners`` line of the running broker's server.properties ("" if none)."""
    for line in _running_properties().splitlines():
        if line.startswith("listeners="):
            return line.split("=", 1)[1]
    return ""


def _write_private(path: Path, text: str) -> None:
    """Write ``text`` readable by its owner only (server.properties may hold SASL passwords)."""
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def add_scram_users(cfg: Config, users: dict[str, str]) -> None:
    """Create (or update) SCRAM-SHA-256 and -512 credentials of ``users`` through the
    PLAINTEXT listener: SCRAM credentials live in the cluster metadata, not in a file."""
    admin = _admin(cfg, log_level=3)  # alive until every future is done; no info lines on exit
    for mech in (ScramMechanism.SCRAM_SHA_256, ScramMechanism.SCRAM_SHA_512):  # one per user and request
        ups = [UserScramCredentialUpsertion(u, ScramCredentialInfo(mech, 8192), p.encode())
               for u, p in sorted(users.items())]
        for user, fut in admin.alter_user_scram_credentials(ups).items():
            try:
                fut.result(30)
            except Exception as e:  # noqa: BLE001
                raise BrokerError(f"creating the SCRAM credentials of {user} failed: {e}") from None


def up(cfg: Config, sasl: SaslSsl | None = None) -> int:
    """Start the broker (if needed) and create the configured topics. Returns its PID.

    ``cfg`` describes the PLAINTEXT listener (``[kafka] bootstrap_servers``), which the
    broker and this function use; ``sasl`` adds a SASL_SSL listener for the clients."""
    if cfg.kafka.security_protocol != "PLAINTEXT":
        raise BrokerError(f"the embedded broker is started from a configuration whose bootstrap_servers is its "
                          f"PLAINTEXT listener (this one says security_protocol = {cfg.kafka.security_protocol}); "
                          f"add a SASL_SSL listener with `up --sasl-ssl-port PORT --ssl-dir DIR`")
    run_dir().mkdir(parents=True, exist_ok=True)
    pid = running_pid()
    if pid is not None:
        if sasl is not None and (f"SASL_SSL://{cfg.kafka.host}:{sasl.port}" not in _listeners()
                                 or _sasl_ssl_properties(cfg, sasl) not in _running_properties()):
            raise BrokerError(f"the broker already running (pid {pid}) has no SASL_SSL listener on port "
                              f"{sasl.port} with these certificates and users — stop it with "
                              f"`python -m tools.kafka_local down` first")
        wait_ready(cfg, pid=pid)
        _say(f"already running (pid {pid}) on {cfg.kafka.bootstrap_servers}")
    else:
        java, cp = _java(), _classpath()
        for port in (cfg.kafka.port, cfg.kafka.controller_port, *((sasl.port,) if sasl else ())):
            if _port_open(cfg.kafka.host, port):
                raise BrokerError(
                    f"port {cfg.kafka.host}:{port} is already in use by another process — stop it, "
                    f"or change [kafka] bootstrap_servers/controller_port in conf/doodle.toml"
                    + (" or --sasl-ssl-port" if sasl else ""))
        props = run_dir() / "server.properties"
        _write_private(props, server_properties(cfg, sasl))
        if not (run_dir() / "data" / "meta.properties").exists():
            # may start with "-": passed as --cluster-id=ID
            cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
            _say(f"formatting storage in {run_dir() / 'data'} (cluster {cluster_id})")
            _run_tool(["kafka.tools.StorageTool", "format", f"--cluster-id={cluster_id}", "-c", str(props)])
        heap = cfg.kafka.broker_heap
        cmd = [java, f"-Xms{heap}", f"-Xmx{heap}", "-XX:+UseG1GC", "-Djava.awt.headless=true",
               f"-Dlog4j2.configurationFile={LOG4J}", f"-Dkafka.logs.file={(run_dir() / 'server.log')}",
               "-cp", cp, "kafka.Kafka", str(props)]
        with open((run_dir() / 'stdout.log'), "ab") as out:
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True, cwd=run_dir())
        (run_dir() / 'broker.pid').write_text(f"{proc.pid}\n")
        _say(f"starting broker (pid {proc.pid}), log {run_dir() / 'server.log'}")
        t0 = time.monotonic()
        wait_ready(cfg, pid=proc.pid)
        _say(f"ready on {cfg.kafka.bootstrap_servers} after {time.monotonic() - t0:.1f}s")
        pid = proc.pid
    if sasl is not None:
        add_scram_users(cfg, sasl.users)
        _say(f"SASL_SSL listener on {cfg.kafka.host}:{sasl.port} (PLAIN, SCRAM-SHA-256/512; "
             f"users {', '.join(sorted(sasl.users))}; CA {sasl.ssl_dir.resolve() / CA_FILE})")
    for name, parts in ((cfg.kafka.input_topic, cfg.kafka.input_partitions),
                        (cfg.kafka.output_topic, cfg.kafka.output_partitions)):
        if ensure_topic(cfg, name, parts):
            _say(f"created topic {name} ({parts} partitions)")
    return pid


def down(timeout: float = 30.0) -> bool:
    """Stop the broker of our PID file (SIGTERM, then SIGKILL). True if one was stopped."""
    pid = running_pid()
    if pid is None:
        (run_dir() / 'broker.pid').unlink(missing_ok=True)
        _say("not running")
        return False
    terminate(pid, timeout, _say)
    (run_dir() / 'broker.pid').unlink(missing_ok=True)
    _say(f"stopped (pid {pid})")
    return True


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tools.kafka_local", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("command", choices=["up", "down", "status", "reset", "make-certs"],
                    help="reset = down + delete the broker's data; make-certs DIR = a self-signed CA "
                         "(DIR/ca.pem) and a broker certificate for localhost/127.0.0.1")
    ap.add_argument("dir", nargs="?", help="make-certs: where to write the certificates")
    ap.add_argument("--conf-file", help="configuration file (default conf/doodle.toml)")
    ap.add_argument("--sasl-ssl-port", type=int, metavar="PORT",
                    help="up: also listen with SASL_SSL on this port (needs --ssl-dir); the user is "
                         "$DOODLE_KAFKA_USERNAME with password $DOODLE_KAFKA_PASSWORD (variable names "
                         "from [kafka] sasl_username_env/sasl_password_env)")
    ap.add_argument("--ssl-dir", metavar="DIR",
                    help="up: the certificates of `make-certs DIR` for the SASL_SSL listener (made if missing)")
    args = ap.parse_args(argv)
    if args.command == "make-certs" and not args.dir:
        ap.error("make-certs needs a folder: make-certs DIR")
    if args.command != "make-certs" and args.dir:
        ap.error(f"unexpected argument {args.dir!r}")
    if (args.sasl_ssl_port is None) != (args.ssl_dir is None) or (args.sasl_ssl_port and args.command != "up"):
        ap.error("--sasl-ssl-port and --ssl-dir go together, with `up`")
    try:
        if args.command == "make-certs":
            print(make_certs(args.dir))
            return 0
        cfg = load_config(args.conf_file)
        if args.command == "up":
            sasl = None
            if args.sasl_ssl_port:
                make_certs(args.ssl_dir)
                sasl = SaslSsl(args.sasl_ssl_port, Path(args.ssl_dir), sasl_users_from_env(cfg))
            up(cfg, sasl)
        elif args.command == "down":
            down()
        elif args.command == "reset":
            down()
            shutil.rmtree(run_dir() / "data", ignore_errors=True)
            _say("data deleted")
        else:
            pid = running_pid()
            if pid is None:
                print("kafka: not running")
                return 1
            print(f"kafka: running (pid {pid}) on {cfg.kafka.bootstrap_servers}"
                  + "".join(f", {x}" for x in _listeners().split(",") if x.startswith("SASL_SSL://")))
        return 0
    except (BrokerError, ConfigError, KafkaUnavailable) as e:
        print(f"kafka: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
