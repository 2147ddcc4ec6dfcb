"""Hosts that are not a PaaS: ``-e/--endpoint`` gives Daphne Twisted endpoint strings, TLS and HTTP/2.

A self-signed certificate for 127.0.0.1; ``run --combined -e ssl:...`` only
(no plain listener); an HTTP/2 client (httpx with h2) gets the view over h2,
a WebSocket client connects over TLS (wss, HTTP/1.1), and a bad endpoint
string is a one-line boot error.
"""

from __future__ import annotations

import datetime
import ipaddress
import ssl
import subprocess
import sys

import httpx
from websockets.sync.client import connect

from .support import ROOT, ServerProcess, free_port, platform_environment, wait_for_port


def _self_signed(directory):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_file, cert_file = directory / "key.pem", directory / "cert.pem"
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    cert_file.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    return key_file, cert_file


def test_tls_endpoint_serves_http2_and_wss(tmp_path):
    key_file, cert_file = _self_signed(tmp_path)
    port = free_port()
    env = platform_environment(SECRET_KEY="k" * 50, DATABASE_URL=f"sqlite:///{tmp_path / 'db.sqlite3'}",
                               DJANGO_SETTINGS_MODULE="example_project.settings")
    endpoint = f"ssl:{port}:interface=127.0.0.1:privateKey={key_file}:certKey={cert_file}"
    process = ServerProcess(["run", "--combined", "-e", endpoint], env=env).start()
    try:
        wait_for_port(port, timeout=30, process=process.process)
        process.wait_for_output(f"listening on {endpoint}")
        assert "listening on http://" not in process.output()  # -e alone: no plain listener
        context = ssl.create_default_context(cafile=str(cert_file))
        with httpx.Client(http2=True, verify=context, timeout=20) as client:
            response = client.get(f"https://127.0.0.1:{port}/whoami/")
        assert (response.status_code, response.http_version) == (200, "HTTP/2")
        # A context of its own: httpx set ALPN (h2) on the first, and WebSockets are HTTP/1.1.
        tls = ssl.create_default_context(cafile=str(cert_file))
        with connect(f"wss://127.0.0.1:{port}/ws/echo/", ssl=tls, open_timeout=20) as websocket:
            websocket.send("over tls")
            assert websocket.recv(timeout=20) == "over tls"
        process.wait_for_output("GET /whoami/ 200")  # the access log, over h2 as well
    finally:
        assert process.stop() == 0, process.output()[-3000:]
        process.close()


def test_a_bad_endpoint_is_one_line_and_exit_3(tmp_path):
    env = platform_environment(SECRET_KEY="k" * 50, DATABASE_URL=f"sqlite:///{tmp_path / 'db.sqlite3'}")
    result = subprocess.run(
        [sys.executable, "-m", "paas_channels.cli", "run", "web", "-e", f"ssl:{free_port()}:privateKey=/nonexistent.pem"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 3, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith("paas-channels: -e/--endpoint 'ssl:") and "ssl:8443:privateKey=key.pem" in line, line
