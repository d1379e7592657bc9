"""Every bad setting — from the environment, the config file or a flag — is refused
before anything listens: exit 2, one line on stderr naming the setting as the
operator wrote it, no traceback, no secret, and nothing made outside the data dir.

Each case runs `gateway serve` (and `check-config`, which must refuse the same)
as a real process in an empty working directory."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.fakes.upstream import free_port

PASSWORD = "pw-Secret-4711"
KEY = "sk-upstream-key-0815"
MISSING = f"/nonexistent-{uuid.uuid4().hex[:8]}"


@dataclass
class Case:
    name: str
    expect: str  # in the one line
    env: dict[str, str] = field(default_factory=dict)
    args: list[str] = field(default_factory=list)
    config: bytes | None = None  # written to gateway.yaml and passed with --config
    commands: tuple[str, ...] = ("serve", "check-config")


CASES = [
    Case("mysql URL", "DATABASE_URL", {"DATABASE_URL": f"mysql://u:{PASSWORD}@h/db"}),
    Case("garbage URL", "DATABASE_URL='garbage': not a database URL", {"DATABASE_URL": "garbage"}),
    Case(
        "PostgreSQL database missing",
        'database "gw_no_such_db" does not exist',
        {"DATABASE_URL": "postgresql://postgres@127.0.0.1:5432/gw_no_such_db"},
        commands=("serve", "check-config --connect"),
    ),
    Case(
        "PostgreSQL role missing",
        'role "gw_no_such_role" does not exist',
        {"DATABASE_URL": f"postgresql://gw_no_such_role:{PASSWORD}@127.0.0.1:5432/postgres"},
        commands=("serve", "check-config --connect"),
    ),
    Case(
        "PostgreSQL port closed",
        "connection refused",
        {"DATABASE_URL": f"postgresql://postgres:{PASSWORD}@127.0.0.1:{free_port()}/postgres"},
        commands=("serve", "check-config --connect"),
    ),
    Case("port flag out of range", "--port 70000", args=["--port", "70000"]),
    Case("port flag not a number", "argument --port", args=["--port", "abc"], commands=("serve",)),
    Case("port variable", "GATEWAY_PORT='eighty'", {"GATEWAY_PORT": "eighty"}),
    Case("event loop unknown", "GATEWAY_EVENT_LOOP='trio'", {"GATEWAY_EVENT_LOOP": "trio"}),
    Case("Open WebUI's PORT", "PORT='-1'", {"PORT": "-1"}),
    Case("host not a host", "GATEWAY_HOST='not a host'", {"GATEWAY_HOST": "not a host"}),
    Case(
        "host not on this machine",
        "not an address of this machine",
        {"GATEWAY_HOST": "192.0.2.1"},  # TEST-NET-1: never a local address
    ),
    Case("data dir not creatable", "DATA_DIR='/proc/nope'", {"DATA_DIR": "/proc/nope"}),
    Case(
        "data dir's parent a file",
        "/etc/passwd is a file, not a directory",
        {"DATA_DIR": "/etc/passwd/data"},
    ),
    Case(
        "data dir beneath a file",
        "/etc/passwd is a file, not a directory",
        {"DATA_DIR": "/etc/passwd/a/data"},
    ),
    Case(
        "a command's timeout of nan",
        "argument --timeout: nan is not a positive number",
        args=["http://127.0.0.1:1", "--timeout", "nan"],
        commands=("doctor",),
    ),
    Case(
        "data dir's parent missing",
        f"{MISSING} does not exist",
        {"DATA_DIR": f"{MISSING}/data"},
    ),
    Case(
        "SQLite file in a missing directory",
        f"the directory {MISSING}/dir does not exist",
        {"DATABASE_URL": f"sqlite:///{MISSING}/dir/x.db"},
    ),
    Case("config not UTF-8", "not UTF-8 text (byte 0xff", config=b"port: 80\xff\n"),
    Case("config not YAML", "gateway.yaml:2:5: not valid YAML", config=b"port: [80\nhost: a\n"),
    Case("config not a mapping", "expected settings as `key: value` lines", config=b"- port\n"),
    Case(
        "config key given twice",
        "gateway.yaml:3: 'port' is given twice (first on line 1); keep one",
        config=b"port: 8081\nhost: 127.0.0.1\nport: 8082\n",
    ),
    Case(
        "YAML value names the key and line",
        "gateway.yaml:2: port: 70000",
        config=b"# settings\nport: 70000\n",
    ),
    Case("YAML unknown key", "unknown setting 'prot'; did you mean 'port'?", config=b"prot: 1\n"),
    Case(
        "YAML key written as a variable",
        "the YAML key for DATABASE_URL is database_url",
        config=b"DATABASE_URL: ''\n",
    ),
    Case(
        "more keys than URLs",
        "OPENAI_API_KEYS has 3 key(s) for 2 base URL(s)",
        {
            "OPENAI_API_BASE_URLS": "http://127.0.0.1:9/v1;http://127.0.0.1:10/v1",
            "OPENAI_API_KEYS": f"{KEY};b-key-000;c-key-000",
        },
    ),
    Case(
        "an endpoint for a base URL",
        "is an endpoint, not a base URL: give 'http://127.0.0.1:9/v1'",
        {"OPENAI_API_BASE_URL": "http://127.0.0.1:9/v1/chat/completions"},
    ),
    Case(
        "a base URL that is not http",
        "is not an http(s) URL",
        {"OPENAI_API_BASE_URL": f"ftp://u:{PASSWORD}@h/v1"},
    ),
    Case(
        "origin without a scheme",
        "'example.com' is not an origin",
        {"CORS_ALLOW_ORIGIN": "example.com"},
    ),
    Case("origin with a path", "is not an origin", {"CORS_ALLOW_ORIGIN": "https://a.example/app"}),
    Case("Open WebUI's JWT_EXPIRES_IN", "JWT_EXPIRES_IN='forever'", {"JWT_EXPIRES_IN": "forever"}),
    Case("log level", "GATEWAY_LOG_LEVEL='verbose'", {"GATEWAY_LOG_LEVEL": "verbose"}),
    Case("Open WebUI's GLOBAL_LOG_LEVEL", "GLOBAL_LOG_LEVEL", {"GLOBAL_LOG_LEVEL": "loud"}),
    Case("static key pair", "pair 1 is not key=user_id", {"GATEWAY_API_KEYS": KEY}),
    Case(
        "public key file missing",
        "GATEWAY_JWT_PUBLIC_KEY_FILE",
        {"GATEWAY_JWT_PUBLIC_KEY_FILE": f"{MISSING}/key.pem"},
    ),
    Case(
        "redis URL",
        "not a redis://, rediss:// or unix:// URL",
        {"REDIS_URL": f"http://u:{PASSWORD}@h"},
    ),
    Case(
        "redis unreachable",
        "redis",
        {
            "WEBSOCKET_MANAGER": "redis",
            "REDIS_URL": f"redis://:{PASSWORD}@127.0.0.1:{free_port()}/0",
        },
        commands=("check-config --connect",),
    ),
    Case(
        "negative token TTL",
        "-5 is negative",
        args=["--user", "a", "--ttl", "-5"],
        commands=("token",),
    ),
    Case("token without a key", "no signing key", args=["--user", "a"], commands=("token",)),
    Case(
        "token for nobody", "a user id must not be empty", args=["--user", " "], commands=("token",)
    ),
    # A password with a raw '/', '?', '#' or '@' ends the host part early: each client
    # reads such a URL its own way, and the password was shown as the host or path.
    Case(
        "a base URL's password with '/'",
        "percent-encode them (%40, %2F, %3F, %23)",
        {"OPENAI_API_BASE_URL": f"http://u:pa/{PASSWORD}@127.0.0.1:9/v1"},
    ),
    Case(
        "a database password with '#'",
        "percent-encode them",
        {"DATABASE_URL": f"postgresql://u:pa#{PASSWORD}@127.0.0.1/postgres"},
    ),
    Case(
        "a database password with '@'",
        "percent-encode them",
        {"DATABASE_URL": f"postgresql://u:pa@{PASSWORD}@127.0.0.1/postgres"},
    ),
    Case(
        "a Redis port out of range",
        "REDIS_URL='redis://:***@127.0.0.1:99999/0': its port is not a number from 0 to 65535",
        {"WEBSOCKET_MANAGER": "redis", "REDIS_URL": f"redis://:{PASSWORD}@127.0.0.1:99999/0"},
    ),
    Case(
        "a base URL's port out of range",
        "its port is not a number from 0 to 65535",
        {"OPENAI_API_BASE_URL": f"http://u:{PASSWORD}@127.0.0.1:99999/v1"},
    ),
    Case(
        "a base URL with a query",
        "has a query or fragment, which no request would carry",
        {"OPENAI_API_BASE_URL": f"http://127.0.0.1:9/v1?api_key={PASSWORD}"},
    ),
    Case(
        "a base URL's user and a key",
        "URL 1 holds a user name and OPENAI_API_KEY a key for it",
        {"OPENAI_API_BASE_URL": f"http://u:{PASSWORD}@127.0.0.1:9/v1", "OPENAI_API_KEY": KEY},
    ),
    Case(
        "an unknown sslmode",
        "sslmode must be one of disable, allow, prefer",
        {"DATABASE_URL": f"postgresql://u:{PASSWORD}@127.0.0.1/postgres?sslmode=bogus"},
    ),
    Case("a base path with '..'", "not a path like /chat", {"GATEWAY_BASE_PATH": "/chat/../x"}),
    Case("a base path with a space", "not a path like /chat", {"GATEWAY_BASE_PATH": "/a b"}),
    Case(
        "a signing key that is not UTF-8",
        "WEBUI_SECRET_KEY='***': holds bytes that are not UTF-8 text",
        {"WEBUI_SECRET_KEY": os.fsdecode(b"\xff" + PASSWORD.encode())},
    ),
    Case(
        "a static key no request could use",
        "the key of pair 1 does not start with sk- or ragflow-",
        {"GATEWAY_API_KEYS": f"{PASSWORD}=alice"},
    ),
    Case(
        "a static key twice",
        "the key of pair 2 is given twice",
        {"GATEWAY_API_KEYS": f"sk-{PASSWORD}=alice;sk-{PASSWORD}=bob"},
    ),
    Case("YAML's yes for a port", "gateway.yaml:1: port: True: true (YAML", config=b"port: yes\n"),
    # Numbers that are not finite, or times past a year: a timer or Redis's expiry
    # took them at start (inf crashed it; 1e300 made Redis refuse every expiry).
    Case("a time of inf", "GATEWAY_REPLAY_TTL_S='inf'", {"GATEWAY_REPLAY_TTL_S": "inf"}),
    Case(
        "a rate of nan", "GATEWAY_MAX_MESSAGES_PER_S='nan'", {"GATEWAY_MAX_MESSAGES_PER_S": "nan"}
    ),
    Case("a time past a year", "at most 31536000 seconds", {"GATEWAY_REPLAY_TTL_S": "1e300"}),
    Case(
        "YAML's .inf",
        "gateway.yaml:1: upstream_read_timeout_s",
        config=b"upstream_read_timeout_s: .inf\n",
    ),
    # A check that runs all the time, this often, kept an idle core busy.
    Case(
        "an interval of a microsecond",
        "greater than or equal to 0.1",
        {"GATEWAY_ACCESS_RECHECK_S": "0.000001"},
    ),
    Case(
        "too many hashing threads",
        "less than or equal to 8",
        {"GATEWAY_PASSWORD_HASH_THREADS": "99999999999999999999"},
    ),
]


@pytest.fixture(scope="module")
def port_in_use() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(1)
        yield int(sock.getsockname()[1])


def run(
    command: str, case: Case, workdir: Path, extra_env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "gateway", *command.split(), *case.args]
    if case.config is not None:
        (workdir / "gateway.yaml").write_bytes(case.config)
        argv += ["--config", "gateway.yaml"]
    names_a_port = (
        "--port" in case.args
        or b"port" in (case.config or b"")
        or any("PORT" in name for name in case.env)
    )
    if command == "serve" and not names_a_port:
        # Should the case be accepted after all, it must not take a port in use.
        argv += ["--port", str(free_port())]
    env = {"PATH": os.environ["PATH"], "HOME": str(workdir), **case.env, **(extra_env or {})}
    return subprocess.run(argv, cwd=workdir, env=env, capture_output=True, text=True, timeout=60)


def assert_refused(result: subprocess.CompletedProcess[str], expect: str) -> None:
    err = result.stderr
    assert result.returncode == 2, (result.returncode, err)
    assert err.count("\n") == 1 and err.endswith("\n"), err
    assert "Traceback" not in err and "listening" not in err, err
    assert expect in err, err
    assert result.stdout == "", result.stdout
    for secret in (PASSWORD, KEY):
        assert secret not in err


@pytest.mark.parametrize(
    ("case", "command"),
    [pytest.param(c, cmd, id=f"{c.name}: {cmd}") for c in CASES for cmd in c.commands],
)
def test_a_bad_setting_is_one_line_and_exit_2(case: Case, command: str, tmp_path: Path) -> None:
    workdir = tmp_path / "work"
    workdir.mkdir()
    result = run(command, case, workdir)
    assert_refused(result, case.expect)
    # Nothing made but the data dir (inside the working directory), never a parent.
    made = {p.relative_to(workdir).parts[0] for p in workdir.rglob("*")} - {"gateway.yaml"}
    assert made <= {"data"}, made
    assert not Path(MISSING).exists()


@pytest.mark.parametrize("command", ["serve", "check-config"])
def test_a_port_in_use_is_refused_before_listening(
    command: str, port_in_use: int, tmp_path: Path
) -> None:
    case = Case(
        "port in use",
        f"127.0.0.1:{port_in_use} is already in use",
        args=["--port", str(port_in_use)],
    )
    assert_refused(run(command, case, tmp_path), case.expect)


@pytest.mark.parametrize("base_path", ["", "/chat"])
def test_check_config_on_a_running_gateways_port_says_so_and_passes(
    base_path: str, start_gateway: Any, tmp_path: Path
) -> None:
    """The check before a restart: the address is the running gateway's, which is
    no fault of the configuration (`serve` is still refused: the port is taken)."""
    running = start_gateway({"GATEWAY_BASE_PATH": base_path} if base_path else None)
    case = Case("port of a running gateway", "", args=["--port", str(running.port)])
    checked = run("check-config", case, tmp_path)
    assert checked.returncode == 0, checked.stderr
    assert f"warning: 127.0.0.1:{running.port} is in use by a running gateway" in checked.stderr
    assert "Traceback" not in checked.stderr
    assert f"port: {running.port}" in checked.stdout
    # Where it listens, its base path included.
    assert f"gateway listening on http://127.0.0.1:{running.port}{base_path}/ " in running.log()
    served = Case("port of a running gateway", f"127.0.0.1:{running.port} is already in use")
    served.args = case.args
    assert_refused(run("serve", served, tmp_path), served.expect)


def test_the_refusals_cover_every_kind_of_source() -> None:
    """Environment, config file and flags each have refused cases above."""
    assert any(c.env for c in CASES) and any(c.config for c in CASES) and any(c.args for c in CASES)


def test_a_command_group_without_its_command_names_the_commands_it_has() -> None:
    import argparse

    from gateway.cli.parser import parser

    groups = [
        action
        for action in parser()._subparsers._group_actions  # type: ignore[union-attr]
        if isinstance(action, argparse._SubParsersAction)
    ]
    [top] = groups
    for name, group in top.choices.items():
        nested = [a for a in group._actions if isinstance(a, argparse._SubParsersAction)]
        for action in nested:
            # The usage line and "the following arguments are required: …" name them.
            assert action.metavar == "{" + ",".join(action.choices) + "}", name
    missing = subprocess.run(
        [sys.executable, "-m", "gateway", "users"], capture_output=True, text=True
    )
    assert missing.returncode == 2
    assert missing.stderr == (
        "gateway users: the following arguments are required: {add,list,remove,role} "
        "(see gateway users --help)\n"
    )
