"""`metering serve`'s listening checks and sessions without a store: TLS from PEM files
(errors name the flag and the file), plain HTTP on loopback only, sessions that end."""

from __future__ import annotations

import os
import ssl
from pathlib import Path

import pytest

from metering.oversight.web_session import Sessions
from metering.oversight.web_store import Viewer
from metering.oversight.web_tls import check_listen, is_loopback, tls_context
from metering.settings import SettingsError
from tests.tls import make_certificate, openssl


def test_loopback_only_without_tls() -> None:
    for host in ("127.0.0.1", "127.1.2.3", "::1", "[::1]", "localhost", "LOCALHOST"):
        assert is_loopback(host), host
        check_listen(host, tls=False, insecure_http=False)
    for host in ("0.0.0.0", "::", "10.1.2.3", "192.168.0.10", "ig.example.gov", ""):
        assert not is_loopback(host), host
        with pytest.raises(SettingsError) as refused:
            check_listen(host, tls=False, insecure_http=False)
        message = str(refused.value)
        assert f"--host {host} is not a loopback address" in message
        assert "in clear text" in message and "--tls-cert PATH and --tls-key PATH" in message
        assert "--insecure-http" in message
        check_listen(host, tls=True, insecure_http=False)
        check_listen(host, tls=False, insecure_http=True)
    with pytest.raises(SettingsError, match="contradict"):
        check_listen("127.0.0.1", tls=True, insecure_http=True)


def test_a_certificate_and_its_key_make_a_tls_1_2_context(tmp_path: Path) -> None:
    pair = make_certificate(tmp_path)
    context = tls_context(pair.cert, pair.key)
    assert context is not None
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2
    assert context.protocol == ssl.PROTOCOL_TLS_SERVER
    assert tls_context(None, None) is None


def test_tls_errors_name_the_flag_the_file_and_what_to_do(tmp_path: Path) -> None:
    pair = make_certificate(tmp_path)
    other = make_certificate(tmp_path, "other", cn="other")
    encrypted = tmp_path / "encrypted-key.pem"
    openssl("pkey", "-in", str(pair.key), "-aes256", "-passout", "pass:x", "-out", str(encrypted))
    missing = tmp_path / "missing.pem"
    unreadable = tmp_path / "unreadable.pem"
    unreadable.write_text("x")
    unreadable.chmod(0)
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    cases: list[tuple[Path | None, Path | None, str]] = [
        (pair.cert, None, "--tls-cert needs --tls-key as well: give both"),
        (None, pair.key, "--tls-key needs --tls-cert as well: give both"),
        (missing, pair.key, f"--tls-cert {missing}: cannot read it (No such file or directory)"),
        (pair.cert, missing, f"--tls-key {missing}: cannot read it (No such file or directory)"),
        (tmp_path, pair.key, f"--tls-cert {tmp_path} is a directory"),
        (garbage, pair.key, f"--tls-cert {garbage} holds no PEM certificate"),
        (pair.cert, garbage, f"--tls-key {garbage} holds no PEM private key"),
        (pair.cert, pair.cert, f"--tls-key {pair.cert} holds no PEM private key"),
        (pair.cert, other.key, f"--tls-key {other.key} is not the private key of the certificate"),
        (pair.cert, encrypted, f"--tls-key {encrypted} is encrypted with a passphrase"),
    ]
    if os.geteuid() != 0:  # root reads a mode 000 file
        cases.append(
            (unreadable, pair.key, f"--tls-cert {unreadable}: cannot read it (Permission denied)")
        )
    for cert, key, expected in cases:
        with pytest.raises(SettingsError) as refused:
            tls_context(cert, key)
        assert expected in str(refused.value), (cert, key, str(refused.value))


def test_sessions_end_when_idle_after_the_longest_time_and_at_sign_out() -> None:
    now = [1000.0]
    sessions = Sessions(idle_seconds=60, max_seconds=300, limit=3, clock=lambda: now[0])
    reporter = Viewer("reporter", "pw")
    first = sessions.start(reporter)
    assert sessions.viewer(first) == reporter and sessions.viewer("guess") is None
    now[0] += 59
    assert sessions.viewer(first) == reporter  # a request keeps it alive
    now[0] += 59
    assert sessions.viewer(first) == reporter
    now[0] += 60
    assert sessions.viewer(first) is None  # 60 s without a request
    second = sessions.start(reporter)
    for step in (50, 50, 50, 50, 50, 49):
        now[0] += step
        assert sessions.viewer(second) == reporter
    now[0] += 1
    assert sessions.viewer(second) is None  # 300 s after sign-in, however busy
    tokens = [sessions.start(Viewer(f"u{i}", "pw")) for i in range(4)]
    assert len(sessions) == 3 and sessions.viewer(tokens[0]) is None  # the oldest went
    assert len(set(tokens)) == 4 and all(len(t) >= 43 for t in tokens)
    sessions.end(tokens[3])
    assert sessions.viewer(tokens[3]) is None and sessions.viewer(tokens[2]) is not None
