"""Where `metering serve` listens, and over what: TLS from `--tls-cert` / `--tls-key`, and
the refusal to serve a non-loopback address in clear text. Checked before the store is
read; each error names the flag (and file) and what to do. SettingsError: the command
exits 2, as for every other configuration error.
"""

from __future__ import annotations

import ipaddress
import ssl
from pathlib import Path
from typing import NoReturn

from metering.settings import SettingsError

__all__ = ["check_listen", "is_loopback", "tls_context"]


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 and `localhost`; a name or an address of any other network is not."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_listen(host: str, *, tls: bool, insecure_http: bool) -> None:
    """Plain HTTP on loopback only, unless --insecure-http says a TLS proxy is in front."""
    if tls and insecure_http:
        raise SettingsError(
            "--insecure-http and --tls-cert/--tls-key contradict each other: drop "
            "--insecure-http to serve HTTPS, or the TLS flags to serve plain HTTP"
        )
    if tls or insecure_http or is_loopback(host):
        return
    raise SettingsError(
        f"--host {host} is not a loopback address, and without TLS the sign-in would send "
        "ClickHouse passwords, the session cookie and the agencies' figures in clear text "
        "across that network: give --tls-cert PATH and --tls-key PATH (PEM files), or "
        "--insecure-http when a TLS-terminating proxy in front of the page is the only "
        "thing that reaches it"
    )


class _Encrypted(Exception):
    """The private key asks for a passphrase (load_cert_chain would prompt on stdin)."""


def _no_passphrase() -> NoReturn:
    raise _Encrypted


def tls_context(cert: Path | None, key: Path | None) -> ssl.SSLContext | None:
    """A TLS 1.2+ server context from PEM files; None when neither flag is given."""
    if cert is None and key is None:
        return None
    if cert is None or key is None:
        given, missing = ("--tls-cert", "--tls-key") if key is None else ("--tls-key", "--tls-cert")
        raise SettingsError(
            f"{given} needs {missing} as well: give both, the certificate (PEM, its "
            "intermediate certificates after it) and its private key (PEM, unencrypted)"
        )
    cert_text = _read("--tls-cert", cert, "the certificate (PEM)")
    key_text = _read("--tls-key", key, "the certificate's private key (PEM)")
    if "-----BEGIN CERTIFICATE-----" not in cert_text:
        raise SettingsError(
            f"--tls-cert {cert} holds no PEM certificate (a -----BEGIN CERTIFICATE----- "
            "block): give the server's certificate, its intermediate certificates after it"
        )
    if "PRIVATE KEY-----" not in key_text:
        raise SettingsError(
            f"--tls-key {key} holds no PEM private key (a -----BEGIN PRIVATE KEY----- "
            "block): give the private key of the certificate in --tls-cert"
        )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert, key, password=_no_passphrase)
    except _Encrypted:
        raise SettingsError(
            f"--tls-key {key} is encrypted with a passphrase, and metering serve does not ask "
            f"for one: give it the key unencrypted (openssl pkey -in {key} -out KEY.pem), in "
            "a file only the user running metering serve can read"
        ) from None
    except ssl.SSLError as error:
        if error.reason == "KEY_VALUES_MISMATCH":
            raise SettingsError(
                f"--tls-key {key} is not the private key of the certificate in --tls-cert "
                f"{cert}: give the key the certificate was issued for"
            ) from None
        raise SettingsError(
            f"--tls-cert {cert} and --tls-key {key}: OpenSSL cannot load them as a "
            f"certificate and its private key ({error.reason or error}); check both are PEM "
            "and belong together (openssl x509 -in CERT -noout -text)"
        ) from None
    return context


def _read(flag: str, path: Path, what: str) -> str:
    try:
        return path.read_text(encoding="ascii", errors="replace")
    except IsADirectoryError:
        raise SettingsError(f"{flag} {path} is a directory: give the file of {what}") from None
    except OSError as error:
        reason = error.strerror or type(error).__name__
        raise SettingsError(
            f"{flag} {path}: cannot read it ({reason}): give the file of {what}, readable by "
            "the user running metering serve"
        ) from None
