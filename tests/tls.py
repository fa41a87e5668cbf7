"""Throwaway TLS certificates for the tests of `metering serve --tls-cert/--tls-key`.

Made with the `openssl` command (the `cryptography` package is not a dependency): a
self-signed P-256 certificate for 127.0.0.1 and localhost, valid for two days.
"""

from __future__ import annotations

import base64
import hashlib
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

__all__ = ["Certificate", "make_certificate", "openssl"]


@dataclass(frozen=True)
class Certificate:
    cert: Path
    key: Path

    def spki_sha256(self) -> str:
        """base64 sha256 of the public key, for Chromium's --ignore-certificate-errors-spki-list."""
        pem = openssl("x509", "-in", str(self.cert), "-noout", "-pubkey")
        body = "".join(line for line in pem.splitlines() if not line.startswith("-----"))
        return base64.b64encode(hashlib.sha256(base64.b64decode(body)).digest()).decode()


def openssl(*args: str) -> str:
    """Run `openssl ARGS`; its stdout, or the test fails with its stderr."""
    found = shutil.which("openssl")
    if found is None:
        pytest.fail("the TLS tests make their certificate with `openssl`: install it")
    result = subprocess.run([found, *args], capture_output=True, text=True, timeout=60, check=False)
    if result.returncode != 0:
        pytest.fail(f"openssl {' '.join(args)} failed:\n{result.stderr[-2000:]}")
    return result.stdout


def make_certificate(directory: Path, name: str = "serve", cn: str = "127.0.0.1") -> Certificate:
    directory.mkdir(parents=True, exist_ok=True)
    cert, key = directory / f"{name}-cert.pem", directory / f"{name}-key.pem"
    openssl(
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-keyout",
        str(key),
        "-out",
        str(cert),
        "-days",
        "2",
        "-subj",
        f"/CN={cn}",
        "-addext",
        "subjectAltName=IP:127.0.0.1,DNS:localhost",
    )
    key.chmod(0o600)
    return Certificate(cert, key)
