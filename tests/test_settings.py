"""Reading settings: Open WebUI's variable names, the forms the file accepts,
warnings for what is ignored, secrets masked wherever settings are shown, and
the `token`/`check-config`/`--version` commands."""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import jwt
import pytest

from gateway import __version__
from gateway.cli.logs import ExtraFormatter
from gateway.edge import redact
from gateway.settings import SettingsError, read
from tests.fakes.upstream import free_port

PASSWORD = "pw-Secret-4711"


def gateway(
    *args: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        cwd=cwd,
        env={"PATH": os.environ["PATH"], "HOME": str(cwd), **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
    )


# -- Open WebUI's names ---------------------------------------------------------------
@pytest.mark.parametrize(
    ("environ", "field", "value"),
    [
        ({"PORT": "9999"}, "port", 9999),
        ({"PORT": "9999", "GATEWAY_PORT": "7000"}, "port", 7000),
        ({"GLOBAL_LOG_LEVEL": "debug"}, "log_level", "DEBUG"),
        ({"JWT_EXPIRES_IN": "4w"}, "jwt_expires_in_s", 4 * 7 * 86400),
        ({"JWT_EXPIRES_IN": "1h30m"}, "jwt_expires_in_s", 5400),
        ({"JWT_EXPIRES_IN": "-1"}, "jwt_expires_in_s", None),
        # A token may live past a year (the year's bound is for timers), a rate be high.
        ({"JWT_EXPIRES_IN": "400d"}, "jwt_expires_in_s", 400 * 86400),
        ({"GATEWAY_MAX_MESSAGES_PER_S": "1e8"}, "max_messages_per_s", 1e8),
        ({"JWT_EXPIRES_IN": "4w", "GATEWAY_JWT_EXPIRES_IN_S": "60"}, "jwt_expires_in_s", 60),
        (
            {"REDIS_URL": "redis://a/0", "WEBSOCKET_REDIS_URL": "redis://b/0"},
            "redis_url",
            "redis://b/0",
        ),
        ({"DEFAULT_MODELS": "llama3,qwen"}, "default_model", "llama3"),
        (
            {
                "OPENAI_API_BASE_URL": "http://a/v1",
                "OPENAI_API_BASE_URLS": "http://b/v1;http://c/v1",
            },
            "openai_api_base_urls",
            ["http://b/v1", "http://c/v1"],
        ),
        (
            {"CORS_ALLOW_ORIGIN": "https://a.example/;http://localhost:5173"},
            "cors_allow_origin",
            ["https://a.example", "http://localhost:5173"],
        ),
    ],
)
def test_open_webui_variables_are_read(environ: dict[str, str], field: str, value: object) -> None:
    assert getattr(read(environ=environ).settings, field) == value


def test_yaml_lists_may_be_written_as_open_webui_writes_them(tmp_path: Path) -> None:
    config = tmp_path / "gateway.yaml"
    config.write_text(
        'openai_api_base_urls: "http://a/v1;http://b/v1"\nopenai_api_keys: "k1;"\n'
        "api_keys: sk-static-key-000=alice\ntrusted_proxies: [10.0.0.0/8]\n"
    )
    settings = read(config, environ={}).settings
    assert settings.openai_api_base_urls == ["http://a/v1", "http://b/v1"]
    assert settings.openai_api_keys == ["k1"]
    assert settings.api_keys == {"sk-static-key-000": "alice"}
    assert settings.trusted_proxies == ["10.0.0.0/8"]


def test_flags_win_over_the_environment_and_the_file(tmp_path: Path) -> None:
    config = tmp_path / "gateway.yaml"
    config.write_text("port: 1000\nhost: 0.0.0.0\n")
    loaded = read(config, environ={"GATEWAY_PORT": "2000"}, flags={"port": ("--port", 3000)})
    assert (loaded.settings.port, loaded.settings.host) == (3000, "0.0.0.0")
    assert loaded.source("host").label() == f"{config}:2: host"


# -- warnings -------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("environ", "warning"),
    [
        (
            {"GATEWAY_PROT": "1"},
            "GATEWAY_PROT is not a setting of the gateway and is ignored; did you mean GATEWAY_PORT?",
        ),
        ({"GATEWAY_DATABASE_URL": "x"}, "did you mean DATABASE_URL?"),
        # A name the gateway reads, prefixed: the setting's own first variable.
        ({"GATEWAY_JWT_EXPIRES_IN": "3600"}, "did you mean GATEWAY_JWT_EXPIRES_IN_S?"),
        ({"GATEWAY_REDIS_URL": "redis://r"}, "did you mean WEBSOCKET_REDIS_URL?"),
        (
            {"OLLAMA_BASE_URL": "http://o:11434"},
            "OPENAI_API_BASE_URL=http://<ollama host>:11434/v1",
        ),
        (
            {"OPENAI_API_BASE_URL": "http://ollama:11434"},
            "'http://ollama:11434' does not end in /v1",
        ),
        ({"WEBSOCKET_MANAGER": "redis"}, "set the same WEBUI_SECRET_KEY on every replica"),
        ({"REDIS_URL": "redis://r/0"}, "REDIS_URL is set but WEBSOCKET_MANAGER is not redis"),
    ],
)
def test_what_is_ignored_or_suspicious_gets_a_warning(
    environ: dict[str, str], warning: str
) -> None:
    warnings = read(environ=environ).warnings
    assert any(warning in w for w in warnings), warnings


def test_good_settings_get_no_warning() -> None:
    environ = {
        "OPENAI_API_BASE_URLS": "http://a/v1;https://generativelanguage.googleapis.com/v1beta/openai",
        "WEBSOCKET_MANAGER": "redis",
        "WEBUI_SECRET_KEY": "k" * 32,
        "REDIS_URL": "redis://r/0",
        "GATEWAY_CONFIG": "",
    }
    assert read(environ=environ).warnings == ()


def test_serve_logs_the_warnings_before_listening(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway", "serve", "--port", "0"],
        cwd=tmp_path,
        env={"PATH": os.environ["PATH"], "GATEWAY_PROT": "1"},
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    with proc.stderr:
        try:
            first, second = proc.stderr.readline(), proc.stderr.readline()
        finally:
            proc.terminate()
            proc.wait(10)
    assert "WARNING" in first and "did you mean GATEWAY_PORT?" in first
    assert "gateway listening on http://127.0.0.1:" in second and ":0/" not in second


# -- secrets --------------------------------------------------------------------------
def test_check_config_masks_every_secret(tmp_path: Path) -> None:
    env = {
        "DATABASE_URL": f"postgresql://gw:{PASSWORD}@db.example/gw",
        "REDIS_URL": f"redis://:{PASSWORD}@redis.example:6379/0",
        "WEBSOCKET_MANAGER": "redis",
        "WEBUI_SECRET_KEY": f"signing-{PASSWORD}",
        "OPENAI_API_BASE_URLS": f"https://user:{PASSWORD}@models.example/v1;https://m.example/v1",
        "OPENAI_API_KEYS": f";sk-upstream-{PASSWORD}",
        "GATEWAY_API_KEYS": f"sk-static-{PASSWORD}=alice",
    }
    result = gateway("check-config", cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr
    assert PASSWORD not in result.stdout + result.stderr
    assert "database_url: postgresql://gw:***@db.example/gw" in result.stdout
    assert "redis_url: redis://:***@redis.example:6379/0" in result.stdout
    assert "secret_key: '*** (from WEBUI_SECRET_KEY)'" in result.stdout
    assert "- '***=alice'" in result.stdout


def test_check_config_says_which_key_signs(tmp_path: Path) -> None:
    before = gateway("check-config", cwd=tmp_path)
    assert "none yet: generated into" in before.stdout
    assert not (tmp_path / "data").exists()  # check-config makes nothing
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / ".webui_secret_key").write_text("k" * 40)
    after = gateway("check-config", cwd=tmp_path)
    assert f"*** (generated, kept in {tmp_path / 'data' / '.webui_secret_key'})" in after.stdout
    assert "k" * 40 not in after.stdout
    assert "fewer than 32 bytes" not in after.stderr


def test_check_config_warns_of_a_short_key_as_serve_does(tmp_path: Path) -> None:
    # Configured, or kept in the data dir (Open WebUI's start script makes a short one).
    configured = gateway("check-config", cwd=tmp_path, env={"WEBUI_SECRET_KEY": "short-key"})
    assert configured.returncode == 0, configured.stderr
    assert "gateway: warning: WEBUI_SECRET_KEY has fewer than 32 bytes" in configured.stderr
    assert "short-key" not in configured.stdout + configured.stderr
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / ".webui_secret_key").write_text("k" * 16)
    kept = gateway("check-config", cwd=tmp_path)
    assert "gateway: warning: WEBUI_SECRET_KEY has fewer than 32 bytes" in kept.stderr


def test_log_lines_mask_secrets() -> None:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(ExtraFormatter("%(message)s", redact.Redactor([f"signing-{PASSWORD}"])))
    logger = logging.getLogger("test-redaction")
    logger.addHandler(handler)
    try:
        logger.warning(
            "store postgresql://gw:%s@db/gw key signing-%s token %s",
            PASSWORD,
            PASSWORD,
            jwt.encode({"id": "a"}, "k" * 32),
            extra={"url": f"redis://:{PASSWORD}@r:6379/0", "api_key": "sk-" + "0" * 32},
        )
    finally:
        logger.removeHandler(handler)
    line = out.getvalue()
    assert PASSWORD not in line and "eyJ" not in line and "0" * 32 not in line, line
    assert "postgresql://gw:***@db/gw" in line


def test_redacted_urls_keep_everything_but_the_password() -> None:
    assert redact.url("postgresql://gw:p@ss:w@rd@db:5432/gw?sslmode=require") == (
        "postgresql://gw:***@db:5432/gw?sslmode=require"
    )
    assert redact.url("redis://r:6379/0") == "redis://r:6379/0"
    assert (
        redact.text("at https://u:p@h/v1 and ftp://x:y@z")
        == "at https://u:***@h/v1 and ftp://x:***@z"
    )
    # Secrets in the query (redis-py and asyncpg take a password there), and only those.
    assert (
        redact.url("redis://r:6379/0?password=s3cret&db=1") == "redis://r:6379/0?password=***&db=1"
    )
    assert redact.url("http://h/v1?api_key=k1&x-api-key=k2&access_token=t&keyboard=1") == (
        "http://h/v1?api_key=***&x-api-key=***&access_token=***&keyboard=1"
    )
    assert redact.text("GET /ws/chat/s?token=abc&lang=en") == "GET /ws/chat/s?token=***&lang=en"
    assert redact.url("https://h/?accessToken=a&clientSecret=b&sslpassword=c#x_token=d") == (
        "https://h/?accessToken=***&clientSecret=***&sslpassword=***#x_token=***"
    )
    # A URL is shown as written, but for what is masked.
    for kept in (
        "sqlite:///data/gw.db",
        "sqlite:////abs/x.db",
        "unix:///r.sock?db=0",
        "http://h/?",
    ):
        assert redact.url(kept) == kept
    # A URL's secret is masked whole, whatever it holds.
    for secret in ("ab;S3CR3T", '"S3CR3T"', "x,y)z]"):
        assert redact.url(f"redis://r/0?password={secret}&db=1") == "redis://r/0?password=***&db=1"
    assert "S3CR3T" not in redact.text("at 1-redis://:S3CR3T@h/0")
    # In a text the value stops at a quote: a JSON log line stays JSON.
    logged = json.dumps({"upstream": "http://m/v1?api_key=k3y", "status": 502})
    assert json.loads(redact.text(logged)) == {"upstream": "http://m/v1?api_key=***", "status": 502}


def test_masking_a_long_line_takes_linear_time() -> None:
    """Every log line is masked: a long run that looks like the start of a URL again
    and again took seconds (80 KB: 3.5 s) before the patterns were bounded."""
    began = time.perf_counter()
    for line in ("x." * 200_000, "a://b:" * 70_000, "?a" * 200_000 + "=1"):
        redact.text(line)
    assert time.perf_counter() - began < 2.0


# -- commands -------------------------------------------------------------------------
def test_token_uses_the_servers_key_and_says_which(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / ".webui_secret_key").write_text("server-key-" + "x" * 30)
    result = gateway("token", "--user", "bob", "--ttl", "60", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    claims = jwt.decode(result.stdout.strip(), "server-key-" + "x" * 30, algorithms=["HS256"])
    assert claims["id"] == "bob" and 0 < claims["exp"] - time.time() <= 60
    assert result.stderr == f"gateway: signed with the key from {data / '.webui_secret_key'}\n"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    refused = gateway("token", "--user", "bob", cwd=elsewhere)
    assert refused.returncode == 2 and "no signing key" in refused.stderr
    assert list(elsewhere.iterdir()) == []  # no key of its own made there
    by_env = gateway("token", "--user", "bob", cwd=elsewhere, env={"WEBUI_SECRET_KEY": "e" * 32})
    assert by_env.stderr == "gateway: signed with the key from WEBUI_SECRET_KEY\n"


def test_token_ttl_zero_means_no_expiry(tmp_path: Path) -> None:
    result = gateway(
        "token", "--user", "bob", "--ttl", "0", cwd=tmp_path, env={"WEBUI_SECRET_KEY": "e" * 32}
    )
    assert "exp" not in jwt.decode(result.stdout.strip(), "e" * 32, algorithms=["HS256"])


def test_version(tmp_path: Path) -> None:
    result = gateway("--version", cwd=tmp_path)
    assert result.returncode == 0 and result.stdout == f"gateway {__version__}\n"
    assert __version__[0].isdigit() and __version__ != "0+unknown"


def test_check_config_connect_reaches_each_service(tmp_path: Path, fake_upstream: object) -> None:
    url = fake_upstream.url
    env = {
        "DATABASE_URL": "postgresql://postgres@127.0.0.1:5432/postgres",
        "OPENAI_API_BASE_URL": url,
        "WEBSOCKET_MANAGER": "redis",
        "REDIS_URL": "redis://127.0.0.1:6379/0",
        "WEBUI_SECRET_KEY": "k" * 32,
    }
    result = gateway("check-config", "--connect", cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr
    reached = [line for line in result.stdout.splitlines() if line.startswith("# reached")]
    assert len(reached) == 3, result.stdout
    assert "(PostgreSQL " in reached[0] and "models)" in reached[2]
    missing_v1 = gateway(
        "check-config",
        "--connect",
        cwd=tmp_path,
        env={**env, "OPENAI_API_BASE_URL": url.removesuffix("/v1")},
    )
    assert missing_v1.returncode == 2
    assert "answered HTTP 404; is /v1 missing from the URL?" in missing_v1.stderr


# What a Redis user's ACL refuses the bus: named by check-config, each kind of command
# the bus sends tried on keys and a channel of the check's own (gateway/bus/check.py).
# Each user may use the deployment's prefix only, as README's scale-out section says.
RESTRICTED = {
    "all-it-needs": ([], None),
    "no-scripting": (["-@scripting"], "the bus's scripts ("),
    "no-script-load": (["-script|load"], "the bus's scripts ("),
    "scripts-without-hget": (["-hget"], "the bus's scripts ("),
    "lock-release-without-get": (["-get"], "a chat's edit lock ("),
    "no-mget": (["-mget", "-sadd"], "MGET: "),
    "no-channels": (["resetchannels"], "PUBLISH, SUBSCRIBE"),
    "no-subscribe": (["-subscribe"], "PUBLISH, SUBSCRIBE"),
    "no-transactions": (["-multi", "-exec"], "MULTI/EXEC"),
    "no-sets": (["-sadd"], "SADD, SISMEMBER, SREM"),
    "no-expiry": (["-pexpire"], "nothing else tried: it could not be made to expire"),
}


@pytest.mark.parametrize("kind", sorted(RESTRICTED))
def test_check_config_connect_names_what_redis_refuses_the_bus(
    tmp_path: Path, fake_upstream: object, kind: str
) -> None:
    import redis

    rules, named = RESTRICTED[kind]
    user = prefix = f"gw-check-{kind}-{os.getpid()}"
    prefix += ":"
    admin = redis.Redis(host="127.0.0.1", port=6379)
    try:
        admin.execute_command(
            "ACL",
            "SETUSER",
            user,
            "on",
            f">{PASSWORD}",
            f"~{prefix}*",
            f"&{prefix}*",
            "+@all",
            *rules,
        )
        result = gateway(
            "check-config",
            "--connect",
            cwd=tmp_path,
            env={
                "OPENAI_API_BASE_URL": fake_upstream.url,  # type: ignore[attr-defined]
                "WEBSOCKET_MANAGER": "redis",
                "GATEWAY_REDIS_KEY_PREFIX": prefix,
                "WEBUI_SECRET_KEY": "k" * 32,
                "REDIS_URL": f"redis://{user}:{PASSWORD}@127.0.0.1:6379/0",
            },
        )
        # What the check wrote is gone, refused or not (and would expire by itself).
        assert list(admin.scan_iter(match=f"{prefix}*")) == []
    finally:
        admin.execute_command("ACL", "DELUSER", user)
        admin.close()
    assert PASSWORD not in result.stdout + result.stderr
    if named is None:
        assert result.returncode == 0, result.stderr
        return
    assert result.returncode == 2, result.stderr
    [line] = result.stderr.splitlines()
    assert line.startswith("gateway: configuration error: REDIS_URL=")
    assert "the bus cannot work with this Redis: " in line and named in line
    if kind == "no-mget":  # each kind tried on its own: a refusal hides no other
        assert "SADD, SISMEMBER, SREM: " in line and "nothing else tried" not in line


def test_check_config_connect_names_a_read_only_redis(tmp_path: Path) -> None:
    """A replica of the test Redis, read-only: one line that says so, nothing else tried."""
    import shutil

    server = shutil.which("redis-server")
    assert server is not None, "the test command installs redis-server"
    port = free_port()
    replica = subprocess.Popen(
        [
            server,
            "--port",
            str(port),
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(tmp_path),  # where the replica's copy of its primary goes
            "--replicaof",
            "127.0.0.1",
            "6379",
        ],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        result = None
        while time.monotonic() < deadline:
            result = gateway(
                "check-config",
                "--connect",
                cwd=tmp_path,
                env={
                    "WEBSOCKET_MANAGER": "redis",
                    "REDIS_URL": f"redis://127.0.0.1:{port}/0",
                    "WEBUI_SECRET_KEY": "k" * 32,
                    "GATEWAY_DEMO_MODEL": "true",
                },
            )
            if "read-only replica" in result.stderr:
                break
            time.sleep(0.3)  # the replica is still loading from its primary
    finally:
        replica.terminate()
        replica.wait(10)
    assert result is not None and result.returncode == 2, result and result.stderr
    [line] = result.stderr.splitlines()
    assert line.endswith(
        "the bus cannot work with this Redis: REDIS_URL names a read-only replica; point it at "
        "the primary (README, scale-out: what Redis and a user's ACL must allow)"
    ), line


@pytest.mark.parametrize(
    "command",
    [["admin", "stats", "--url"], ["trace", "some-reply", "--url"], ["doctor"]],
)
@pytest.mark.parametrize(
    ("url", "said"),
    [
        ("notaurl", "is not an http:// or https:// URL"),
        ("http://127.0.0.1:99999", "is not a URL"),
        ("http://[::1", "is not a URL"),
        (f"http://u:{PASSWORD}@127.0.0.1:1", "without credentials"),
        (f"http://{PASSWORD}@127.0.0.1:1", "without credentials"),  # a token as the user
        (f"http://127.0.0.1:1/?token={PASSWORD}", "without a query"),
    ],
)
def test_a_gateway_url_that_cannot_be_is_one_line_and_masked(
    tmp_path: Path, command: list[str], url: str, said: str
) -> None:
    result = gateway(*command, url, cwd=tmp_path, env={"WEBUI_SECRET_KEY": "k" * 32})
    assert result.returncode == 2, (result.stdout, result.stderr)
    [line] = result.stderr.splitlines()
    assert said in line and PASSWORD not in line and "Traceback" not in line


# -- the event loop ---------------------------------------------------------------------
@pytest.mark.parametrize("choice", ["asyncio", "auto"])
def test_the_event_loop_is_the_one_asked_for(tmp_path: Path, choice: str) -> None:
    """auto is uvloop (locked, and installed here); asyncio is the standard library's.
    The whole suite runs the gateway on auto; this runs one on asyncio to its answer."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway", "serve", "--port", "0"],
        cwd=tmp_path,
        env={"PATH": os.environ["PATH"], "GATEWAY_EVENT_LOOP": choice},
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    with proc.stderr:
        try:
            line = proc.stderr.readline()
            port = int(line.split("http://127.0.0.1:")[1].split("/")[0])
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=5) as resp:
                pytest.fail(f"answered {resp.status} without a token")
        except urllib.error.HTTPError as exc:
            assert exc.code == 401
        finally:
            proc.terminate()
            proc.wait(10)
    expected = "uvloop" if choice == "auto" else "asyncio"
    assert line.rstrip().endswith(f"event loop {expected})"), line


def test_uvloop_asked_for_and_missing_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    from gateway import preflight

    monkeypatch.setitem(sys.modules, "uvloop", None)  # import uvloop raises ImportError
    with pytest.raises(SettingsError) as refused:
        preflight.loop_factory(read(environ={"GATEWAY_EVENT_LOOP": "uvloop"}))
    assert str(refused.value) == (
        "GATEWAY_EVENT_LOOP='uvloop': uvloop is not installed: pip install uvloop, or use auto"
    )
    assert preflight.loop_factory(read(environ={"GATEWAY_EVENT_LOOP": "auto"})) is None


# -- what the data dir holds ----------------------------------------------------------
@pytest.mark.parametrize("kind", ["empty", "a directory", "not UTF-8"])
def test_a_kept_signing_key_that_cannot_be_used_is_one_line_everywhere(
    kind: str, tmp_path: Path
) -> None:
    """An empty key file (a start that stopped while writing it) used to start a
    server whose every sign-in failed with a 500; a directory or an unreadable file
    was a traceback; `token` said the file did not exist."""
    data = tmp_path / "data"
    data.mkdir()
    kept = data / ".webui_secret_key"
    if kind == "empty":
        kept.write_text("")
    elif kind == "a directory":
        kept.mkdir()
    else:
        kept.write_bytes(b"\xff" * 40)
    for command in (
        ["serve", "--port", str(free_port())],
        ["check-config"],
        ["token", "--user", "a"],
    ):
        result = gateway(*command, cwd=tmp_path)
        assert result.returncode == 2, (command, result.stderr)
        assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
        assert f"the key file {kept.resolve()} is {kind}" in result.stderr, result.stderr


def test_check_config_connect_opens_an_existing_sqlite_file(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "gateway.db").write_text("not a database\n" * 100)
    result = gateway("check-config", "--connect", cwd=tmp_path)
    assert result.returncode == 2 and "file is not a database" in result.stderr, result.stderr
    (tmp_path / "data" / "gateway.db").unlink()
    made = gateway(
        "users", "add", "--email", "a@example.com", "--password", "a-secret-1", cwd=tmp_path
    )
    assert made.returncode == 0, made.stderr
    result = gateway("check-config", "--connect", cwd=tmp_path)
    assert result.returncode == 0 and "(exists, opened)" in result.stdout, result.stderr


def test_a_read_only_database_is_refused_before_listening(tmp_path: Path) -> None:
    """Not root's: root writes a read-only file anyway (the check is run without the
    capability that lets it)."""
    made = gateway(
        "users", "add", "--email", "a@example.com", "--password", "a-secret-1", cwd=tmp_path
    )
    assert made.returncode == 0, made.stderr
    db = tmp_path / "data" / "gateway.db"
    db.chmod(0o400)
    unprivileged = ["setpriv", "--inh-caps=-all", "--bounding-set=-dac_override,-fowner", "--"]
    result = subprocess.run(
        [*unprivileged, sys.executable, "-m", "gateway", "check-config"],
        cwd=tmp_path,
        env={"PATH": os.environ["PATH"], "HOME": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2, result.stderr
    assert f"{db.resolve()} is read-only for this user" in result.stderr


def test_an_api_key_with_no_model_server_is_a_warning_not_a_refusal(tmp_path: Path) -> None:
    """Many shells export OPENAI_API_KEY: the quick start must still run."""
    key = "sk-proj-" + "x" * 40
    result = gateway("check-config", cwd=tmp_path, env={"OPENAI_API_KEY": key})
    assert result.returncode == 0, result.stderr
    assert "OPENAI_API_KEY is set but no model server is: the key is not used" in result.stderr
    assert key not in result.stdout + result.stderr


def test_a_public_key_of_a_kind_never_verified_is_refused(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519

    for key in (ed25519.Ed25519PrivateKey.generate(), ec.generate_private_key(ec.SECP384R1())):
        pem = key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        (tmp_path / "key.pem").write_bytes(pem)
        env = {"GATEWAY_JWT_PUBLIC_KEY_FILE": str(tmp_path / "key.pem")}
        result = gateway("check-config", cwd=tmp_path, env=env)
        assert result.returncode == 2, result.stderr
        assert "is neither an RSA key (RS256) nor an EC P-256 key (ES256)" in result.stderr


@pytest.mark.parametrize(
    ("variable", "url"),
    [
        ("DATABASE_URL", "postgresql://db.example/gw?user=admin@myserver"),  # no user info
        ("DATABASE_URL", "postgresql://gw@db.example:5432/gw?sslmode=verify_full"),  # asyncpg's
        ("DATABASE_URL", "postgresql://[::1]:5432/gw?application_name=a@b"),
        ("OPENAI_API_BASE_URL", "http://models.example:8080/team@x/v1"),
        ("OPENAI_API_BASE_URL", "http://user:pa%2Fss@models.example/v1"),  # percent-encoded
    ],
)
def test_an_at_sign_outside_the_user_info_is_no_refusal(variable: str, url: str) -> None:
    assert read(environ={variable: url}).settings is not None


@pytest.mark.parametrize(
    ("written", "secret"),
    [
        ("postgresql://gw:it's@db/gw", "it's"),  # a quote is legal in user info
        ('in JSON: "redis://:p\\"w@h/0"', 'p\\"w'),  # an escaped quote in a JSON string
        ("postgresql://us/er:hunter2@db/gw", "hunter2"),  # a raw '/' before the password
        ("http://u:pa/ss#x@models.example/v1", "pa/ss"),  # (refused as a setting)
    ],
)
def test_a_password_is_masked_whatever_it_holds(written: str, secret: str) -> None:
    """In a log line (`text`: a password holding a raw '/' never gets there, the
    settings refuse it) and as a setting is shown (`url`)."""
    if "/" not in secret:
        assert secret not in redact.text(written), redact.text(written)
    url = written.removeprefix('in JSON: "').removesuffix('"')
    assert secret not in redact.url(url), redact.url(url)


def test_a_configured_password_is_masked_where_the_patterns_stop(tmp_path: Path) -> None:
    """A raw double quote ends `text()`'s pattern (a JSON line must stay JSON); the
    passwords of the configured URLs are masked by value as well, as written and
    percent-decoded."""
    loaded = read(
        environ={
            "DATABASE_URL": 'postgresql://gw:hun"ter2x@db/gw',
            "REDIS_URL": "redis://:r%40dis-pw@r:6379/0",
        }
    )
    assert loaded.settings is not None
    settings = loaded.settings
    found = redact.passwords(
        [settings.database_url, settings.redis_url, *settings.openai_api_base_urls]
    )
    assert found == ['hun"ter2x', 'hun"ter2x', "r%40dis-pw", "r@dis-pw"]
    line = 'store postgresql://gw:hun"ter2x@db/gw unreachable; redis said r@dis-pw'
    assert 'hun"ter2x' in redact.text(line)  # what the pattern alone leaves
    # The serving process's logging, as `serve` sets it up, in a process of its own.
    script = (
        "import logging, sys\n"
        "from gateway.cli import logs\n"
        "from gateway.settings import read\n"
        "logs.setup(read())\n"
        "logging.getLogger('gateway.test').warning(sys.argv[1])\n"
    )
    env = {**os.environ, "DATABASE_URL": settings.database_url, "REDIS_URL": settings.redis_url}
    done = subprocess.run(
        [sys.executable, "-c", script, line],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    logged = done.stderr
    assert "unreachable" in logged, logged
    assert "ter2x" not in logged and "r@dis-pw" not in logged, logged
