#!/usr/bin/env python3
"""Readiness probe for the local Kafka broker, using only the standard library.

Speaks the Kafka wire protocol directly:
  1. ApiVersions v0 -> the broker answers requests and lists supported APIs;
  2. Metadata (non-flexible version, empty topic list) -> the broker lists itself
     among the live brokers, i.e. it has registered with the controller and is
     ready to serve clients.

Usage: probe.py HOST PORT [--timeout SECONDS] [--node-id ID] [--verbose]
Exit status 0 when ready, 1 otherwise.
"""

import argparse
import socket
import struct
import sys

API_METADATA = 3
API_VERSIONS = 18
CLIENT_ID = b"kafka-start-probe"


class ProbeError(Exception):
    pass


def _recv_exact(sock, n):
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ProbeError("connection closed by broker")
        buf.extend(chunk)
    return bytes(buf)


def _request(sock, api_key, api_version, correlation_id, body):
    # Request header v1: api_key int16, api_version int16, correlation_id int32,
    # client_id nullable string (int16 length + bytes).
    header = struct.pack(">hhih", api_key, api_version, correlation_id, len(CLIENT_ID)) + CLIENT_ID
    payload = header + body
    sock.sendall(struct.pack(">i", len(payload)) + payload)
    (size,) = struct.unpack(">i", _recv_exact(sock, 4))
    resp = _recv_exact(sock, size)
    (corr,) = struct.unpack_from(">i", resp, 0)
    if corr != correlation_id:
        raise ProbeError("unexpected correlation id %d (wanted %d)" % (corr, correlation_id))
    return resp, 4  # response header v0 is just the correlation id


def _read_string(buf, off):
    (n,) = struct.unpack_from(">h", buf, off)
    off += 2
    if n < 0:
        return None, off
    return buf[off : off + n].decode("utf-8", "replace"), off + n


def api_versions(sock):
    resp, off = _request(sock, API_VERSIONS, 0, 1, b"")
    (err,) = struct.unpack_from(">h", resp, off)
    off += 2
    if err != 0:
        raise ProbeError("ApiVersions error code %d" % err)
    (count,) = struct.unpack_from(">i", resp, off)
    off += 4
    versions = {}
    for _ in range(max(count, 0)):
        key, lo, hi = struct.unpack_from(">hhh", resp, off)
        off += 6
        versions[key] = (lo, hi)
    return versions


def metadata_brokers(sock, version):
    # Metadata request v1..v8 (all non-flexible): topics nullable array
    # (0 = no topics), then v4+: allow_auto_topic_creation, v8+: two
    # include_*_authorized_operations booleans.
    body = struct.pack(">i", 0)
    if version >= 4:
        body += b"\x00"
    if version >= 8:
        body += b"\x00\x00"
    resp, off = _request(sock, API_METADATA, version, 2, body)
    if version >= 3:
        off += 4  # throttle_time_ms
    (count,) = struct.unpack_from(">i", resp, off)
    off += 4
    brokers = []
    for _ in range(max(count, 0)):
        (node_id,) = struct.unpack_from(">i", resp, off)
        off += 4
        host, off = _read_string(resp, off)
        (port,) = struct.unpack_from(">i", resp, off)
        off += 4
        _rack, off = _read_string(resp, off)
        brokers.append((node_id, host, port))
    return brokers


def probe(host, port, timeout, node_id):
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.settimeout(timeout)
        versions = api_versions(sock)
        if API_METADATA not in versions:
            raise ProbeError("broker does not advertise the Metadata API")
        lo, hi = versions[API_METADATA]
        candidates = [v for v in range(8, 0, -1) if lo <= v <= hi]
        if not candidates:
            # Only flexible Metadata versions left: ApiVersions answering is
            # the strongest check this probe can make.
            return "api-versions ok (metadata v%d-v%d not probed)" % (lo, hi)
        brokers = metadata_brokers(sock, candidates[0])
        ids = [b[0] for b in brokers]
        if node_id is not None and node_id not in ids:
            raise ProbeError("broker %d not yet listed in metadata (brokers: %s)" % (node_id, ids))
        if not brokers:
            raise ProbeError("metadata lists no live brokers yet")
        return "metadata v%d ok, brokers=%s" % (candidates[0], brokers)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("host")
    ap.add_argument("port", type=int)
    ap.add_argument("--timeout", type=float, default=3.0)
    ap.add_argument("--node-id", type=int, default=None)
    ap.add_argument("--verbose", action="store_true")
    args = ap.parse_args()
    try:
        msg = probe(args.host, args.port, args.timeout, args.node_id)
    except (OSError, ProbeError, struct.error) as exc:
        if args.verbose:
            print(f"not ready: {exc}", file=sys.stderr)
        return 1
    if args.verbose:
        print(msg)
    return 0


if __name__ == "__main__":
    sys.exit(main())
