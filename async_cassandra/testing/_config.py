"""What one Cassandra node is made of: its cassandra.yaml, logback.xml, TLS keystore and
JVM command line.

The flags and settings are the ones measured to start Cassandra 5.0.8 on Java 17 quickly
and self-contained (no ``bin/``, no ``conf/``: Maven Central has only the jars).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

from ._java import find_keytool, module_flags
from ._maven import LauncherError

__all__ = [
    "MAIN_CLASS",
    "cassandra_yaml",
    "jvm_command",
    "make_keystore",
    "to_yaml",
    "write_node_files",
]

MAIN_CLASS = "org.apache.cassandra.service.CassandraDaemon"
_TLS_PASSWORD = "async-cassandra"

_LOGBACK = """<configuration scan="false">
  <appender name="FILE" class="ch.qos.logback.core.FileAppender">
    <file>${cassandra.logdir}/system.log</file>
    <encoder>
      <pattern>%-5level [%thread] %date{ISO8601} %F:%L - %msg%n</pattern>
    </encoder>
  </appender>
  <root level="INFO">
    <appender-ref ref="FILE"/>
  </root>
</configuration>
"""


def to_yaml(config: Mapping[str, object]) -> str:
    """``config`` as YAML that Cassandra reads."""
    # JSON is a subset of YAML 1.2 flow style, and SnakeYAML (Cassandra's parser) reads
    # it, so one `json.dumps` per top-level key is a complete and correct emitter.
    return "".join(f"{key}: {json.dumps(value)}\n" for key, value in config.items())


def cassandra_yaml(
    *,
    cluster_name: str,
    address: str,
    token: int,
    seeds: Sequence[str],
    storage_port: int,
    native_port: int,
    data: Path,
    auth: bool,
    tls_dir: Path | None,
    crash_safe: bool,
    extra: Mapping[str, object],
) -> dict[str, object]:
    """The settings of the node on ``address``: one token, ``seeds`` (addresses) as its
    seeds, everything it stores under ``data``, ``extra`` merged over the rest.

    ``crash_safe=True`` makes the node write a sync marker into its commit log before it
    acknowledges a write (``commitlog_sync: batch``), so that one killed with SIGKILL
    replays every write it acknowledged. With ``periodic`` sync (Cassandra's default, and
    ``crash_safe=False``) replay stops at the last marker, written every 10 s: a killed
    node loses the writes of its last seconds. See :func:`jvm_command` for the rest.
    """
    sync: dict[str, object] = (
        {"commitlog_sync": "batch"}
        if crash_safe
        else {"commitlog_sync": "periodic", "commitlog_sync_period": "10000ms"}
    )
    config: dict[str, object] = {
        "cluster_name": cluster_name,
        "num_tokens": 1,
        "initial_token": str(token),
        "partitioner": "org.apache.cassandra.dht.Murmur3Partitioner",
        "endpoint_snitch": "SimpleSnitch",
        **sync,
        "seed_provider": [
            {
                "class_name": "org.apache.cassandra.locator.SimpleSeedProvider",
                # Only this instance's own addresses: a seed of another local cluster
                # with the same name would pull this node into that ring.
                "parameters": [{"seeds": ",".join(f"{seed}:{storage_port}" for seed in seeds)}],
            }
        ],
        "listen_address": address,
        "rpc_address": address,
        "storage_port": storage_port,
        "native_transport_port": native_port,
        "start_native_transport": True,
        "auto_bootstrap": False,
        "data_file_directories": [str(data / "data")],
        "commitlog_directory": str(data / "commitlog"),
        "hints_directory": str(data / "hints"),
        "saved_caches_directory": str(data / "saved_caches"),
        "cdc_raw_directory": str(data / "cdc_raw"),
        "authenticator": "PasswordAuthenticator" if auth else "AllowAllAuthenticator",
        "authorizer": "CassandraAuthorizer" if auth else "AllowAllAuthorizer",
        "role_manager": "CassandraRoleManager",
        "concurrent_reads": 8,
        "concurrent_writes": 8,
        "concurrent_counter_writes": 8,
        "concurrent_compactors": 1,
        "auto_snapshot": False,
        "storage_compatibility_mode": "NONE",
    }
    if tls_dir is not None:
        config["client_encryption_options"] = {
            "enabled": True,
            "optional": False,
            "keystore": str(tls_dir / "keystore.p12"),
            "keystore_password": _TLS_PASSWORD,
            "store_type": "PKCS12",
        }
    config.update(extra)
    return config


def write_node_files(node_dir: Path, config: Mapping[str, object]) -> None:
    """Write ``conf/cassandra.yaml`` and ``conf/logback.xml`` into a new node directory,
    and make its ``logs`` and ``tmp``."""
    conf = node_dir / "conf"
    conf.mkdir()
    (conf / "cassandra.yaml").write_text(to_yaml(config))
    (conf / "logback.xml").write_text(_LOGBACK)
    for sub in ("logs", "tmp"):
        (node_dir / sub).mkdir()


def jvm_command(
    java: str,
    lib: Path,
    jamm: Path,
    node_dir: Path,
    *,
    jmx_port: int,
    heap: str,
    crash_safe: bool,
) -> list[str]:
    """The command that runs the node in ``node_dir`` (written by
    :func:`write_node_files`) on the jars in ``lib``.

    ``crash_safe=False`` skips flushing the system tables (``cassandra.unsafesystem``):
    schema changes take a third of the time, but a node killed with SIGKILL then starts
    again without the keyspaces and tables created since its start, and drops their data
    from its commit log (the schema is loaded before the log is replayed). With
    ``crash_safe=True`` only fsync is skipped (``cassandra.skip_sync``), which a killed
    process does not need: what it wrote is in the page cache. That makes the batch
    commit log of :func:`cassandra_yaml` cheap too (about 0.2 ms more per write).
    """
    conf = node_dir / "conf"
    props = {
        "cassandra.config": (conf / "cassandra.yaml").as_uri(),
        "cassandra.storagedir": str(node_dir / "data"),
        "cassandra.logdir": str(node_dir / "logs"),
        "logback.configurationFile": str(conf / "logback.xml"),
        "cassandra-foreground": "yes",
        "cassandra.jmx.local.port": str(jmx_port),
        # Fast single-machine start: no 30 s gossip settling, no superuser delay.
        "cassandra.skip_wait_for_gossip_to_settle": "0",
        "cassandra.superuser_setup_delay_ms": "0",
    }
    if crash_safe:
        props["cassandra.skip_sync"] = "true"
    else:
        props["cassandra.unsafesystem"] = "true"
    props.update(
        {
            # Nodes of one instance stop together, so waiting 2 s after telling the peers
            # we are going away only slows every stop() down.
            "cassandra.shutdown_announce_in_ms": "0",
            "jna.tmpdir": str(node_dir / "tmp"),
            "java.io.tmpdir": str(node_dir / "tmp"),
            "java.net.preferIPv4Stack": "true",
            "chronicle.analytics.disable": "true",
            "jdk.attach.allowAttachSelf": "true",
        }
    )
    cmd = [
        java,
        f"-Xms{heap}",
        f"-Xmx{heap}",
        "-Xss256k",
        "-XX:+UseG1GC",
        f"-XX:ErrorFile={node_dir / 'hs_err_%p.log'}",
        f"-javaagent:{jamm}",
    ]
    cmd += module_flags()
    cmd += [f"-D{key}={value}" for key, value in props.items()]
    cmd += ["-cp", f"{conf}{os.pathsep}{lib / '*'}", MAIN_CLASS]
    return cmd


def make_keystore(java: str, folder: Path, addresses: Sequence[str]) -> Path:
    """Generate a PKCS12 keystore in ``folder`` whose certificate names ``addresses``
    (IP SANs); return the certificate, as PEM, for clients to trust."""
    tool = find_keytool(java)
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    keystore = folder / "keystore.p12"
    cert = folder / "cert.pem"
    sans = ",".join(f"IP:{address}" for address in addresses)
    common = ["-storetype", "PKCS12", "-storepass", _TLS_PASSWORD, "-alias", "node"]
    generate = ["-genkeypair", "-keyalg", "RSA", "-keysize", "2048", "-validity", "3650"]
    generate += ["-dname", "CN=async-cassandra test node", "-ext", f"SAN={sans}"]
    generate += ["-keypass", _TLS_PASSWORD, "-keystore", str(keystore)]
    export = ["-exportcert", "-rfc", "-keystore", str(keystore), "-file", str(cert)]
    for args in (generate, export):
        done = subprocess.run(
            [tool, *args, *common],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            errors="replace",
            check=False,
        )
        if done.returncode != 0:
            raise LauncherError(f"keytool failed: {done.stdout}{done.stderr}")
    return cert
