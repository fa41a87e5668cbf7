"""`metering config --check`: every configuration problem at once, before anything starts.

`check_configuration` runs the settings validation on a given environment (and only
on it) and adds the checks a field validator cannot do: the embedded store's
directory can be created and written, a server URL has a host and a port, every
Kafka bootstrap entry is host:port, and a pseudonym key, if set, is long enough.
Each problem is one line, `VARIABLE: what is wrong`. With no problem, the effective
configuration is printed with secrets masked, and who signs in to the store, with
where the password comes from (`store.connection.store_login`; never the password).

`metering.cli` adds the command with `add_config_command` and runs it with
`run_config_command`, before it loads the settings itself (an invalid setting is
what this command is for); `python -m metering.config_check config --check` runs it alone.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Final
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from metering.pseudonyms import PSEUDONYM_KEY_ENV, key_problem
from metering.settings import Settings, SettingsError, load_settings
from store import embedded_path
from store.connection import store_login

__all__ = [
    "add_config_command",
    "check_configuration",
    "env_names",
    "ephemeral_store_problem",
    "main",
    "mask_url",
    "render_configuration",
    "retention_check",
    "run_config_command",
]

_SECRET_QUERY_KEYS: Final = frozenset({"password", "secret", "token", "access_token"})


def env_names() -> dict[str, str]:
    """Settings field name to its environment variable."""
    names: dict[str, str] = {}
    for name, field in Settings.model_fields.items():
        alias: Any = field.validation_alias
        names[name] = str(alias.choices[0]) if alias is not None else name.upper()
    return names


def _lookup(env: Mapping[str, str], name: str) -> str | None:
    if name in env:
        return env[name]
    return env.get(name.lower())


def _settings_from(env: Mapping[str, str]) -> tuple[Settings | None, list[str]]:
    """Validate `env` alone: fields it does not set get their defaults, never os.environ."""
    values: dict[str, object] = {}
    for field, variable in env_names().items():
        given = _lookup(env, variable)
        values[field] = Settings.model_fields[field].default if given is None else given
    try:
        return load_settings(**values), []
    except SettingsError as error:
        lines = str(error).splitlines()[1:]
        return None, [line.strip() for line in lines if line.strip()]


def check_configuration(env: Mapping[str, str]) -> list[str]:
    """Every problem with the configuration in `env`, each as `VARIABLE: problem`."""
    settings, problems = _settings_from(env)
    url = _lookup(env, "CLICKHOUSE_URL")
    if url is None:
        url = str(Settings.model_fields["clickhouse_url"].default)
    problems += [f"CLICKHOUSE_URL: {p}" for p in _store_problems(url)]
    allowed = settings is not None and settings.allow_ephemeral_store
    ephemeral = ephemeral_store_problem(url, allowed=allowed)
    if ephemeral is not None:
        problems.append(f"CLICKHOUSE_URL: {ephemeral}")
    servers = _lookup(env, "KAFKA_BOOTSTRAP_SERVERS")
    if servers:
        problems += [f"KAFKA_BOOTSTRAP_SERVERS: {p}" for p in _bootstrap_problems(servers)]
    key = _lookup(env, PSEUDONYM_KEY_ENV)
    if key is not None:
        problem = key_problem(key)
        if problem is not None:
            problems.append(f"{PSEUDONYM_KEY_ENV}: {problem}")
    return problems


def ephemeral_store_problem(url: str, *, allowed: bool) -> str | None:
    """Why a store-writing worker refuses `chdb://` without a directory, or None.

    `chdb://`, `chdb://memory` and `chdb://:memory:` keep the embedded store in the
    worker's own memory: it counts, commits its ledger and acknowledges Kafka offsets,
    and everything it counted vanishes when it exits, while the consumer group has
    moved past the messages. Only an explicit METERING_ALLOW_EPHEMERAL_STORE=1 allows it.
    """
    if allowed:
        return None
    if not url.startswith("chdb://") or embedded_path(url) is not None:
        return None
    return (
        f"{url} is an in-memory store: everything a worker counts into it is lost when "
        "the worker exits. Give the store a directory (chdb://./var/clickhouse) or a "
        "server (http://127.0.0.1:8123), or set METERING_ALLOW_EPHEMERAL_STORE=1 for a "
        "throwaway run"
    )


def _store_problems(url: str) -> list[str]:
    if url.startswith("chdb://"):
        path = embedded_path(url)
        if path is None:
            return []
        return _directory_problems(path)
    if url.startswith(("http://", "https://")):
        return _server_url_problems(url)
    return []  # the settings validator already named the scheme


def _directory_problems(path: Path) -> list[str]:
    """The store directory must exist and be writable, or be creatable."""
    if path.exists():
        if not path.is_dir():
            return [f"{path} exists and is not a directory"]
        if not os.access(path, os.W_OK | os.X_OK):
            return [f"the store directory {path} is not writable by this user"]
        return []
    ancestor = path.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        return [f"cannot create {path}: {ancestor} is not a directory"]
    if not os.access(ancestor, os.W_OK | os.X_OK):
        return [f"cannot create {path}: {ancestor} is not writable by this user"]
    return []


def _server_url_problems(url: str) -> list[str]:
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as error:
        return [f"does not parse as a URL ({error}); e.g. http://user:pass@clickhouse:8123"]
    problems = []
    if not parts.hostname:
        problems.append("has no host; e.g. http://user:pass@clickhouse:8123")
    if port is None:
        problems.append("has no port; give it explicitly, e.g. http://user:pass@clickhouse:8123")
    elif not 1 <= port <= 65535:
        problems.append(f"port {port} is not between 1 and 65535")
    return problems


def _bootstrap_problems(servers: str) -> list[str]:
    problems = []
    for position, entry in enumerate(servers.split(","), start=1):
        entry = entry.strip()
        if not entry:
            problems.append(f"entry {position} is empty (a stray comma?)")
            continue
        host, sep, port = entry.rpartition(":")
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
        if not sep or not host:
            problems.append(f"{entry!r} is not host:port, e.g. kafka:9092")
        elif not port.isdigit() or not 1 <= int(port) <= 65535:
            problems.append(f"{entry!r} has no valid port (1 to 65535)")
    return problems


def mask_url(url: str) -> str:
    """The URL with any password (in the user part or the query) replaced by ***."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "***"
    netloc = parts.netloc
    if "@" in netloc:
        credentials, _, host = netloc.rpartition("@")
        user, has_password, _ = credentials.partition(":")
        netloc = f"{user}:***@{host}" if has_password else f"{user}@{host}"
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        query = urlencode(
            [(k, "***" if k.lower() in _SECRET_QUERY_KEYS else v) for k, v in pairs], safe="*"
        )
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def render_configuration(settings: Settings, env: Mapping[str, str]) -> list[str]:
    """`VARIABLE=value` lines of the effective configuration, secrets masked."""
    lines = []
    for field, variable in env_names().items():
        value = getattr(settings, field)
        shown = mask_url(value) if field == "clickhouse_url" else str(value)
        origin = "" if _lookup(env, variable) is not None else "  (default)"
        lines.append(f"{variable}={shown}{origin}")
    key = _lookup(env, PSEUDONYM_KEY_ENV)
    if key is not None:
        lines.append(f"{PSEUDONYM_KEY_ENV}=*** ({len(key.encode('utf-8'))} bytes)")
    lines.append(f"store login: {login_line(settings.clickhouse_url, env)}")
    return lines


def login_line(url: str, env: Mapping[str, str]) -> str:
    """Who the commands sign in to the store as, and where its password comes from."""
    login = store_login(url, env)
    if login is None:
        return "none (the engine in this process has no users)"
    return login.describe()


def add_config_command(subparsers: Any) -> None:
    """Add `config --check` to a `metering` subparsers object."""
    config = subparsers.add_parser(
        "config", help="check the configuration and print it with secrets masked"
    )
    config.add_argument(
        "--check",
        action="store_true",
        required=True,
        help="report every problem (exit 1), or print the effective configuration (exit 0)",
    )


TopicConfigs = Callable[[Settings, str], dict[str, str] | None]


def retention_check(settings: Settings, topic_configs: TopicConfigs | None = None) -> list[str]:
    """Warnings about the events topic's retention against METERING_MAX_LATENESS_DAYS,
    read from the broker (`metering.kafka_retention`); one warning if it cannot be read."""
    from metering.kafka_retention import read_topic_configs, retention_warnings

    read = topic_configs or read_topic_configs
    try:
        configs = read(settings, settings.events_topic)
    except Exception as error:
        return [
            f"KAFKA_BOOTSTRAP_SERVERS: could not read the configuration of the events topic "
            f"METERING_EVENTS_TOPIC={settings.events_topic} ({type(error).__name__}); its "
            "retention was not compared with METERING_MAX_LATENESS_DAYS"
        ]
    return retention_warnings(settings, configs)


def run_config_command(
    args: argparse.Namespace,
    env: Mapping[str, str] | None = None,
    topic_configs: TopicConfigs | None = None,
) -> int | None:
    """Run `config --check`; None if `args` is another command.

    Warnings (the events topic may delete events before the promised lateness) go to
    stderr as `warning: ...` lines and do not change the exit status.
    """
    if getattr(args, "command", None) != "config":
        return None
    source: Mapping[str, str] = os.environ if env is None else env
    problems = check_configuration(source)
    if problems:
        for problem in problems:
            print(problem, file=sys.stderr)
        print(f"metering config: {len(problems)} problem(s)", file=sys.stderr)
        return 1
    settings, invalid = _settings_from(source)
    if settings is None:  # check_configuration reported these already; never reached
        raise SettingsError("invalid configuration:\n" + "\n".join(invalid))
    for line in render_configuration(settings, source):
        print(line)
    for warning in retention_check(settings, topic_configs):
        print(f"warning: {warning}", file=sys.stderr)
    return 0


def main(
    argv: Sequence[str] | None = None,
    env: Mapping[str, str] | None = None,
    topic_configs: TopicConfigs | None = None,
) -> int:
    parser = argparse.ArgumentParser(prog="metering", description="Configuration check.")
    add_config_command(parser.add_subparsers(dest="command", required=True))
    result = run_config_command(parser.parse_args(argv), env, topic_configs)
    return 0 if result is None else result


if __name__ == "__main__":
    sys.exit(main())
