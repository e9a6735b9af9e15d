"""TLS through the real doors: a CA and a server certificate made here, a real ``deploybot serve`` with
``server.tls``, its real local agent, a real agent started as docs/operations.md says, and the real CLI.

- the server speaks HTTPS only and says so (``listening on https://...``); its local agent gets ``--ca-file``;
- the CLI (``$DEPLOYBOT_CA_FILE``, or ``--ca-file``) deploys and reads status over https;
- an agent given the right CA runs a deployment to success;
- the CLI and an agent trusting another CA (or only the system CAs) are refused with one clear line and a non-zero
  exit code, never a traceback; so is plain HTTP to the TLS port;
- an unusable ``server.tls`` file stops ``serve`` before it starts, naming the file.
"""

from __future__ import annotations

import datetime
import http.client
import http.server
import ipaddress
import json
import os
import re
import ssl
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import HANG_GUARD, free_port
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from e2e_support import DeploybotServer, write_revision

CONFIG = """server:
  data_dir: var
  tls: {cert: tls/server.pem, key: tls/server.key, ca: tls/ca.pem}
hosts:
  - {name: tls-1, local: true}
  - {name: remote-1}
applications:
  app:
    platform: server
    environments: [staging, production]
    deployment_groups:
      staging: {deployment_config: CodeDeployDefault.AllAtOnce, targets: {hosts: [tls-1]}}
      production: {deployment_config: CodeDeployDefault.AllAtOnce, targets: {hosts: [remote-1]}}
"""
CLIENT_VARIABLES = ("DEPLOYBOT_TOKEN", "DEPLOYBOT_URL", "DEPLOYBOT_CA_FILE", "DEPLOYBOT_AGENT_TOKEN")


# -- a CA and certificates, made here ----------------------------------------------------------------------------


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    unencrypted = serialization.NoEncryption()
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, unencrypted)


def _validity(builder: x509.CertificateBuilder) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    return builder.not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=7))


def make_ca(name: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    usage = x509.KeyUsage(
        digital_signature=False,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=True,
        crl_sign=True,
        encipher_only=False,
        decipher_only=False,
    )
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(usage, critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    return key, _validity(builder).sign(key, hashes.SHA256())


def make_server_cert(
    ca_key: ec.EllipticCurvePrivateKey, ca: x509.Certificate
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A server certificate for localhost and 127.0.0.1, signed by ``ca``."""
    key = ec.generate_private_key(ec.SECP256R1())
    names = x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .add_extension(names, critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
    )
    return key, _validity(builder).sign(ca_key, hashes.SHA256())


@dataclass(frozen=True)
class Pki:
    ca: Path  # the CA that signed cert
    cert: Path
    key: Path
    other_ca: Path  # another CA, which signed nothing of the server's
    other_key: Path  # the key of a certificate the other CA signed: not cert's key

    def install(self, directory: Path) -> None:
        """The files under ``directory/tls`` as CONFIG names them."""
        (directory / "tls").mkdir(mode=0o700)
        for source, name in ((self.ca, "ca.pem"), (self.cert, "server.pem"), (self.key, "server.key")):
            target = directory / "tls" / name
            target.write_bytes(source.read_bytes())
            target.chmod(0o600)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    directory = tmp_path_factory.mktemp("pki")
    ca_key, ca = make_ca("deploybot test CA")
    key, cert = make_server_cert(ca_key, ca)
    other_ca_key, other_ca = make_ca("another CA")
    other_key, _ = make_server_cert(other_ca_key, other_ca)
    files = {
        "ca.pem": _pem(ca),
        "server.pem": _pem(cert),
        "server.key": _key_pem(key),
        "other-ca.pem": _pem(other_ca),
        "other.key": _key_pem(other_key),
    }
    for name, data in files.items():
        (directory / name).write_bytes(data)
        (directory / name).chmod(0o600)
    return Pki(
        directory / "ca.pem",
        directory / "server.pem",
        directory / "server.key",
        directory / "other-ca.pem",
        directory / "other.key",
    )


# -- a real server over https ------------------------------------------------------------------------------------


class TlsServer(DeploybotServer):
    """e2e_support's server, spoken to over https with the test CA."""

    def __init__(self, workdir: Path, config_text: str, ca: Path) -> None:
        super().__init__(workdir, config_text)
        self.url = f"https://127.0.0.1:{self.port}"
        self.ca = ca
        self.context = ssl.create_default_context(cafile=str(ca))

    def cli(self, *argv: str, env: dict[str, str] | None = None, server: str = "") -> subprocess.CompletedProcess[str]:
        """``deploybot ARGV --server URL`` from the server's directory (where it finds the API token file)."""
        return subprocess.run(
            [sys.executable, "-m", "bot", *argv, "--server", server or self.url],
            cwd=self.workdir,
            env=_client_env(env or {}),
            capture_output=True,
            text=True,
            timeout=2 * HANG_GUARD,
            check=False,
        )

    def agent_once(self, name: str, *extra: str) -> subprocess.CompletedProcess[str]:
        """An agent for ``name`` that is expected to stop by itself (refused), its output captured."""
        tokens = json.loads((self.data_dir / "agent-tokens.json").read_text())
        root = self.workdir / "refused-agents" / name
        argv = [sys.executable, "-m", "bot", "agent", "--server", self.url, "--name", name, "--root", str(root)]
        return subprocess.run(
            [*argv, *extra],
            env=_client_env({"DEPLOYBOT_AGENT_TOKEN": tokens[name]}),  # never on the command line
            capture_output=True,
            text=True,
            timeout=HANG_GUARD,
            check=False,
        )


def _client_env(extra: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in CLIENT_VARIABLES} | extra


@dataclass
class Served:
    server: TlsServer
    pki: Pki
    revision: Path


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, pki: Pki) -> Iterator[Served]:
    workdir = tmp_path_factory.mktemp("tls")
    pki.install(workdir)
    server = TlsServer(workdir, CONFIG, workdir / "tls" / "ca.pem")
    revision = write_revision(workdir, "rev", {"ValidateService": "echo validated over https"})
    try:
        server.start(timeout=HANG_GUARD)
        yield Served(server, pki, revision)
    finally:
        server.cleanup()


def _no_traceback(*outputs: str) -> None:
    for output in outputs:
        assert "Traceback" not in output, output


def _deployment_id(output: str) -> str:
    match = re.search(r"\b(d-[A-Z0-9]+)\b", output)
    assert match, output
    return match.group(1)


# -- the tests ---------------------------------------------------------------------------------------------------


def test_serve_speaks_https_and_gives_local_agents_the_ca(served: Served) -> None:
    server = served.server
    output = "".join(server.output)
    assert f"listening on https://127.0.0.1:{server.port}" in output
    ca = server.workdir / "tls" / "ca.pem"
    assert f"--ca-file {ca}" in output  # printed for agents and the CLI on other machines
    status, health = server.api("GET", "/healthz")
    assert status == 200, health
    deployment = server.wait_final(server.deploy("app", "staging", served.revision)["id"])
    assert deployment["status"] == "Succeeded", (deployment, output)
    pid = int((server.data_dir / "hosts" / "tls-1" / "agent.pid").read_text())
    argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    assert [b"--ca-file", str(ca).encode()] == argv[argv.index(b"--ca-file") :][:2]
    assert b"https://127.0.0.1:%d" % server.port in argv


def test_the_cli_deploys_and_reads_status_over_https(served: Served) -> None:
    server = served.server
    trusting = {"DEPLOYBOT_CA_FILE": str(served.pki.ca)}
    deploy = ("deploy", "app", "--to", "staging", "--revision", str(served.revision), "--wait")
    deployed = server.cli(*deploy, env=trusting)
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr + "".join(server.output)
    assert "Succeeded" in deployed.stdout
    ident = _deployment_id(deployed.stdout)
    status = server.cli("status", ident, "--json", env=trusting)
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["status"] == "Succeeded"


def test_the_cli_takes_its_ca_with_ca_file(served: Served) -> None:
    server = served.server
    ca = str(served.pki.ca)
    deploy = ("deploy", "app", "--to", "staging", "--revision", str(served.revision), "--wait")
    deployed = server.cli(*deploy, "--ca-file", ca)
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr
    status = server.cli("status", _deployment_id(deployed.stdout), "--json", "--ca-file", ca)
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["status"] == "Succeeded"
    # --ca-file wins over the environment
    wins = server.cli("status", "--ca-file", ca, env={"DEPLOYBOT_CA_FILE": str(served.pki.other_ca)})
    assert wins.returncode == 0, wins.stderr


def test_an_agent_given_the_ca_runs_a_deployment(served: Served) -> None:
    server = served.server
    agent = server.run_agent("remote-1", "--ca-file", str(served.pki.ca))
    deployment = server.wait_final(server.deploy("app", "production", served.revision)["id"])
    log = (server.data_dir / "hosts" / "remote-1" / "agent.log").read_text()
    assert deployment["status"] == "Succeeded", (deployment, log)
    assert agent.poll() is None, log


@pytest.mark.parametrize("trust", ["another CA", "the system CAs"])
def test_the_cli_refuses_a_server_it_cannot_trust(served: Served, trust: str) -> None:
    env = {"DEPLOYBOT_CA_FILE": str(served.pki.other_ca)} if trust == "another CA" else {}
    refused = served.server.cli("status", env=env)
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert "certificate verify failed" in refused.stderr
    assert f"cannot trust the server {served.server.url}" in refused.stderr
    assert "--ca-file PATH or $DEPLOYBOT_CA_FILE" in refused.stderr
    assert refused.stdout == ""
    _no_traceback(refused.stderr)


def test_an_agent_trusting_another_ca_stops_with_a_clear_error(served: Served) -> None:
    refused = served.server.agent_once("remote-1", "--ca-file", str(served.pki.other_ca))
    assert refused.returncode == 1, refused.stderr
    assert f"error: cannot trust the server {served.server.url}: certificate verify failed" in refused.stderr
    assert f"checked against the CA file {served.pki.other_ca}" in refused.stderr
    assert "--ca-file PATH" in refused.stderr
    _no_traceback(refused.stdout, refused.stderr)


def test_plain_http_to_the_tls_port_fails(served: Served) -> None:
    server = served.server
    plain = f"http://127.0.0.1:{server.port}"
    with pytest.raises((OSError, http.client.HTTPException)):
        urllib.request.urlopen(plain + "/healthz", timeout=HANG_GUARD)
    refused = server.cli("status", server=plain, env={"DEPLOYBOT_CA_FILE": str(served.pki.ca)})
    assert refused.returncode == 1
    assert f"the server at {plain} closed the connection without answering" in refused.stderr
    assert "use an https:// URL" in refused.stderr
    _no_traceback(refused.stderr, "".join(server.output))


class _QuietHandler(http.server.BaseHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # a TLS hello is a "bad request" here: expected
        pass


def test_the_cli_says_so_when_an_https_url_meets_a_plain_http_server(served: Served) -> None:
    plain = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _QuietHandler)
    thread = threading.Thread(target=plain.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"https://127.0.0.1:{plain.server_address[1]}"
        refused = served.server.cli("status", server=url, env={"DEPLOYBOT_CA_FILE": str(served.pki.ca)})
    finally:
        plain.shutdown()
        plain.server_close()
    assert refused.returncode == 1
    assert f"TLS with {url} failed" in refused.stderr and "plain http:// server" in refused.stderr
    _no_traceback(refused.stderr)


def test_an_unreadable_ca_file_is_named(served: Served, tmp_path: Path) -> None:
    missing = tmp_path / "no-such-ca.pem"
    cli = served.server.cli("status", env={"DEPLOYBOT_CA_FILE": str(missing)})
    assert cli.returncode == 1
    assert f"cannot use the CA file {missing}: No such file or directory" in cli.stderr
    agent = served.server.agent_once("remote-1", "--ca-file", str(missing))
    assert agent.returncode == 2
    assert f"cannot use the CA file {missing}: No such file or directory" in agent.stderr
    not_pem = tmp_path / "not-a-ca.pem"
    not_pem.write_text("hello\n")
    agent = served.server.agent_once("remote-1", "--ca-file", str(not_pem))
    assert agent.returncode == 2 and f"cannot use the CA file {not_pem}: no PEM certificate in it" in agent.stderr
    not_a_ca = served.server.cli("status", env={"DEPLOYBOT_CA_FILE": str(not_pem)})
    assert not_a_ca.returncode == 1
    assert f"cannot use the CA file {not_pem}: no PEM certificate in it" in not_a_ca.stderr
    _no_traceback(cli.stderr, agent.stderr, not_a_ca.stderr)


# -- serve refuses unusable TLS files before starting ------------------------------------------------------------

BROKEN = {
    "missing key": ("tls: {cert: server.pem, key: nowhere.key}", "server.tls.key {d}/nowhere.key: cannot read it"),
    "key of another certificate": (
        "tls: {cert: server.pem, key: other.key}",
        "server.tls.key {d}/other.key is not the key of the certificate in server.tls.cert {d}/server.pem",
    ),
    "cert is not a certificate": (
        "tls: {cert: server.key, key: server.key}",
        "server.tls.cert {d}/server.key: no PEM certificate in it",
    ),
    "ca did not sign the cert": (
        "tls: {cert: server.pem, key: server.key, ca: other-ca.pem}",
        "server.tls.cert {d}/server.pem is not trusted by server.tls.ca {d}/other-ca.pem for 127.0.0.1 "
        "(where local agents connect): certificate verify failed",
    ),
    "system CAs for a private certificate": (
        "tls: {cert: server.pem, key: server.key}",
        "server.tls.cert {d}/server.pem is not trusted by the system CAs (set server.tls.ca for a private CA)",
    ),
}


@pytest.mark.parametrize("case", BROKEN)
def test_serve_refuses_unusable_tls_files_naming_them(pki: Pki, case: str) -> None:
    tls, expected = BROKEN[case]
    directory = pki.ca.parent
    config = directory / f"{case.replace(' ', '-')}.yml"
    config.write_text(f"server:\n  data_dir: var-{free_port()}\n  {tls}\nhosts:\n  - {{name: web-1, local: true}}\n")
    result = subprocess.run(
        [sys.executable, "-m", "bot", "serve", "--config", str(config), "--port", "0"],
        cwd=directory,
        env=_client_env({}),
        capture_output=True,
        text=True,
        timeout=HANG_GUARD,
        check=False,
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert expected.format(d=directory.resolve()) in result.stderr
    assert "listening on" not in result.stdout
    assert not list(directory.glob("var-*")), "nothing is created before the TLS files are checked"
    _no_traceback(result.stdout, result.stderr)
