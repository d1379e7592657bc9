"""nginx and Caddy from the Debian packages, run on loopback with the configs we ship.

A shipped config is read from `nginx/` or `caddy/` and only its deployment-specific
parts are replaced (listen ports, the replicas' addresses, the host name and the
certificate paths); every replacement must hit, so a config that drifts from what
the tests exercise fails here rather than passing untested."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from tests.fakes.upstream import free_port

REPO = Path(__file__).resolve().parents[2]
SHIPPED_REPLICAS = "127.0.0.1:8081", "127.0.0.1:8082"
COMPOSE_REPLICAS = "gateway-1:8080", "gateway-2:8080"  # deploy/compose/nginx.conf
LETSENCRYPT = "/etc/letsencrypt/live/chat.example.com/"


def replace(text: str, old: str, new: str, where: str) -> str:
    assert old in text, f"{where} no longer contains {old!r}: update tests/proxy/runners.py"
    return text.replace(old, new)


def self_signed(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and localhost (openssl from Debian's base system)."""
    cert, key = directory / "fullchain.pem", directory / "privkey.pem"
    if not cert.exists():
        subprocess.run(
            [
                "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                "-subj", "/CN=127.0.0.1",
                "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
                "-keyout", str(key), "-out", str(cert),
            ],
            check=True,
            capture_output=True,
        )  # fmt: skip
    return cert, key


def wait_listening(port: int, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"exited with {proc.returncode}:\n{log.read_text()}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}:\n{log.read_text()}")


@dataclass
class Proxy:
    """A running proxy: `base` is what clients are given (with the sub-path, if any)."""

    name: str
    port: int
    prefix: str
    proc: subprocess.Popen[bytes]
    log: Path
    tls_port: int | None = None
    cert: Path | None = None

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base(self) -> str:
        return self.origin + self.prefix

    @property
    def ws_base(self) -> str:
        return f"ws://127.0.0.1:{self.port}{self.prefix}"

    @property
    def sio_path(self) -> str:
        return f"{self.prefix}/ws/socket.io"

    def upstreams(self) -> list[tuple[str, str]]:
        """nginx's access log so far: (request, replica address) per proxied request."""
        log = self.log.parent / "access.log"
        lines = log.read_text().splitlines() if log.exists() else []
        return [(line.split()[1], line.split()[-1]) for line in lines]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


# -- nginx ----------------------------------------------------------------------------------
def nginx_main(directory: Path, site: str) -> str:
    """The main nginx.conf around a site file, everything inside `directory`."""
    user = "user root;\n" if os.geteuid() == 0 else ""
    temp = "\n".join(
        f"    {kind}_temp_path {directory}/tmp/{kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    return f"""{user}worker_processes 1;
pid {directory}/nginx.pid;
error_log {directory}/error.log info;
events {{ worker_connections 1024; }}
http {{
    log_format upstreams '$request_method $uri?$args $status $upstream_addr';
    access_log {directory}/access.log upstreams;
{temp}
    include {site};
}}
"""


def nginx_site(
    text: str, where: str, replicas: list[int], port: int, tls_port: int, cert: Path, key: Path
) -> str:
    """A shipped nginx site config pointed at the test's ports and certificate."""
    names = COMPOSE_REPLICAS if "gateway-1:8080" in text else SHIPPED_REPLICAS
    shipped = "".join(f"    server {address};\n" for address in names)
    ours = "".join(f"    server 127.0.0.1:{replica};\n" for replica in replicas)
    text = replace(text, shipped, ours, where)
    text = replace(text, "listen 80;", f"listen 127.0.0.1:{port};", where)
    if "listen 443 ssl;" in text:
        text = text.replace("listen 443 ssl;", f"listen 127.0.0.1:{tls_port} ssl;")
        text = replace(text, LETSENCRYPT + "fullchain.pem", str(cert), where)
        text = replace(text, LETSENCRYPT + "privkey.pem", str(key), where)
    return text


def nginx_binary() -> str:
    binary = shutil.which("nginx") or "/usr/sbin/nginx"
    assert Path(binary).exists(), "nginx is needed (Debian package nginx; scripts/test.sh)"
    return binary


def prepare_nginx(directory: Path, site_text: str) -> Path:
    """The directory layout nginx expects (snippets/ beside the config); returns nginx.conf."""
    (directory / "tmp").mkdir(parents=True, exist_ok=True)
    shutil.copytree(REPO / "nginx" / "snippets", directory / "snippets", dirs_exist_ok=True)
    (directory / "site.conf").write_text(site_text)
    main = directory / "nginx.conf"
    main.write_text(nginx_main(directory, "site.conf"))
    return main


def nginx_test(directory: Path, site_text: str) -> subprocess.CompletedProcess[str]:
    """`nginx -t` on a site config."""
    main = prepare_nginx(directory, site_text)
    return subprocess.run(
        [nginx_binary(), "-t", "-p", str(directory), "-e", str(directory / "error.log"),
         "-c", str(main)],
        capture_output=True,
        text=True,
    )  # fmt: skip


def start_nginx(
    directory: Path, config: str, replicas: list[int], *, prefix: str = "", text: str | None = None
) -> Proxy:
    """nginx with `config` (a path in the repository; or `text`, a config of the test's own)."""
    port, tls_port = free_port(), free_port()
    cert, key = self_signed(directory.parent)
    source = text if text is not None else (REPO / config).read_text()
    site = nginx_site(source, config, replicas, port, tls_port, cert, key)
    main = prepare_nginx(directory, site)
    log = directory / "error.log"
    proc = subprocess.Popen(
        [nginx_binary(), "-p", str(directory), "-e", str(log), "-c", str(main),
         "-g", "daemon off;"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )  # fmt: skip
    wait_listening(port, proc, log)
    tls = "ssl" in site
    return Proxy(
        f"nginx {Path(config).name}",
        port,
        prefix,
        proc,
        log,
        tls_port if tls else None,
        cert if tls else None,
    )


# -- Caddy ----------------------------------------------------------------------------------
def caddy_site(
    text: str, where: str, replicas: list[int], port: int, tls_port: int, cert: Path, key: Path
) -> str:
    """A shipped Caddyfile pointed at the test's ports: plain http on `port` and https on
    `tls_port` with the test's certificate (in place of the one Caddy would get itself)."""
    shipped = "reverse_proxy " + " ".join(SHIPPED_REPLICAS)
    ours = "reverse_proxy " + " ".join(f"127.0.0.1:{replica}" for replica in replicas)
    text = replace(text, shipped, ours, where)
    # One server may not mix http and https: the site twice, once on each port (the
    # snippets before it once: Caddy refuses a snippet declared twice).
    head, site = replace(text, "chat.example.com {", "\0", where).split("\0", 1)
    secure = f"https://127.0.0.1:{tls_port} {{\n\ttls {cert} {key}"
    text = f"{head}http://127.0.0.1:{port} {{{site}\n{secure}{site}"
    # No admin endpoint (it would take port 2019), nothing installed in the system trust,
    # no http->https redirect server on port 80.
    options = "\tadmin off\n\tskip_install_trust\n\tauto_https disable_redirects\n"
    return "{\n" + options + "}\n\n" + text


def caddy_binary() -> str:
    binary = shutil.which("caddy")
    assert binary is not None, "caddy is needed (Debian package caddy; scripts/test.sh)"
    return binary


def start_caddy(directory: Path, config: str, replicas: list[int], *, prefix: str = "") -> Proxy:
    binary = caddy_binary()
    directory.mkdir(parents=True, exist_ok=True)
    port, tls_port = free_port(), free_port()
    cert, key = self_signed(directory.parent)
    site = caddy_site(
        (REPO / "caddy" / config).read_text(), config, replicas, port, tls_port, cert, key
    )
    (directory / "Caddyfile").write_text(site)
    env = {
        **os.environ,
        "HOME": str(directory),
        "XDG_DATA_HOME": str(directory / "data"),
        "XDG_CONFIG_HOME": str(directory / "config"),
    }
    log = directory / "caddy.log"
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [binary, "run", "--config", str(directory / "Caddyfile"), "--adapter", "caddyfile"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    wait_listening(port, proc, log)
    wait_listening(tls_port, proc, log)
    return Proxy(f"caddy {config}", port, prefix, proc, log, tls_port, cert)
