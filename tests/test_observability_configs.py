"""The shipped operator configs agree with the code: the Grafana dashboard
(`config/grafana/`) queries only metrics `gateway.edge.metrics` declares, and shows
every one of them; the Traefik example (`config/traefik/`) parses with Docker
Compose itself and keeps Socket.IO sticky and unhealthy replicas out.

The Traefik example is parsed, not run: no Traefik routes a request here."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.edge import metrics
from tests.test_compose import compose

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "config" / "grafana" / "gateway-dashboard.json"
TRAEFIK = ROOT / "config" / "traefik" / "docker-compose.traefik.yml"

METRIC = re.compile(r"gateway_[a-z_]+")
# The series each kind of family is exposed as (prometheus_client, `_created` off).
SUFFIXES = {
    "counter": ("_total",),
    "gauge": ("",),
    "histogram": ("_bucket", "_sum", "_count"),
    "summary": ("_sum", "_count"),
}
UNITS = {"s", "ops", "short", "percentunit"}


# -- the registry ------------------------------------------------------------------
def declared() -> dict[str, set[str]]:
    """Every family in `metrics.REGISTRY`, with the series names Prometheus gets.

    A labelled family yields no samples until a label set is used, so its series
    are named by its type; where samples exist, their names must be among them."""
    families: dict[str, set[str]] = {}
    for family in metrics.REGISTRY.collect():
        assert family.type in SUFFIXES, (family.name, family.type)
        series = {family.name + suffix for suffix in SUFFIXES[family.type]}
        sampled = {sample.name for sample in family.samples}
        assert sampled <= series, (family.name, sampled - series)
        families[family.name] = series
    return families


# -- the dashboard -----------------------------------------------------------------
@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    parsed: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return parsed


def walk(panels: list[dict[str, Any]], row: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    """(the row a panel sits in, the panel), rows and the panels of collapsed rows too."""
    current = row
    for panel in panels:
        if panel["type"] == "row":
            current = panel["title"]
            yield current, panel
            yield from walk(panel.get("panels", []), current)
        else:
            yield current, panel


def queries(dashboard: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(row, panel title, expr) of every target of every panel."""
    return [
        (row, panel["title"], target["expr"])
        for row, panel in walk(dashboard["panels"])
        for target in panel.get("targets", [])
    ]


def test_the_registry_declares_the_metrics_the_dashboard_was_built_for() -> None:
    names = set().union(*declared().values())
    # If one of these is renamed, the dashboard (and this list) follow it.
    assert {
        "gateway_connections",
        "gateway_connections_opened_total",
        "gateway_rooms",
        "gateway_replies_running",
        "gateway_replies_total",
        "gateway_reply_failures_total",
        "gateway_time_to_first_token_seconds_bucket",
        "gateway_reply_duration_seconds_bucket",
        "gateway_events_delivered_total",
        "gateway_outbox_merges_total",
        "gateway_slow_client_disconnects_total",
        "gateway_auth_failures_total",
        "gateway_upstream_errors_total",
        "gateway_bus_published_total",
        "gateway_bus_received_total",
        "gateway_bus_malformed_total",
        "gateway_bus_send_lag_seconds_bucket",
        "gateway_bus_dropped_total",
        "gateway_bus_waits_total",
        "gateway_store_seconds_bucket",
        "gateway_store_seconds_count",
        "gateway_http_requests_total",
    } <= names


def test_the_dashboard_is_importable_with_a_prometheus_input(dashboard: dict[str, Any]) -> None:
    assert dashboard["schemaVersion"] == 39
    assert dashboard["uid"] and dashboard["title"]
    (source,) = dashboard["__inputs"]
    assert (source["name"], source["type"], source["pluginId"]) == (
        "DS_PROMETHEUS",
        "datasource",
        "prometheus",
    )
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert set(variables) == {"datasource", "instance"}
    datasource = variables["datasource"]
    assert (datasource["type"], datasource["query"]) == ("datasource", "prometheus")
    assert datasource["current"]["value"] == "${DS_PROMETHEUS}"
    instance = variables["instance"]
    assert instance["type"] == "query"
    assert instance["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
    assert instance["query"]["query"] == "label_values(gateway_replies_running, instance)"
    assert instance["multi"] is True and instance["includeAll"] is True


def test_every_panel_queries_prometheus_through_the_variable(dashboard: dict[str, Any]) -> None:
    ids = []
    rows = []
    for row, panel in walk(dashboard["panels"]):
        ids.append(panel["id"])
        if panel["type"] == "row":
            rows.append(row)
            continue
        assert panel["type"] in ("timeseries", "stat"), panel["title"]
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert panel["fieldConfig"]["defaults"]["unit"] in UNITS, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == panel["datasource"]
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24 and grid["h"] > 0, panel["title"]
    assert len(ids) == len(set(ids))
    assert rows == [
        "Connections",
        "Replies",
        "Delivery",
        "Security",
        "Upstreams",
        "Bus (Redis)",
        "Store",
        "HTTP",
    ]
    # At least one collapsed row, whose panels are nested in it: the walk reaches them.
    nested = [p for p in dashboard["panels"] if p["type"] == "row" and p["panels"]]
    assert nested and all(p["collapsed"] for p in nested)


def test_every_query_names_only_declared_metrics(dashboard: dict[str, Any]) -> None:
    series = set().union(*declared().values())
    found = queries(dashboard)
    assert len(found) >= 30
    for row, title, expr in found:
        names = METRIC.findall(expr)
        assert names, (row, title, expr)
        unknown = set(names) - series
        assert not unknown, f"{row} / {title}: {sorted(unknown)} not in gateway.edge.metrics"


def test_every_declared_metric_is_on_a_panel(dashboard: dict[str, Any]) -> None:
    used = {name for _, _, expr in queries(dashboard) for name in METRIC.findall(expr)}
    missing = sorted(family for family, series in declared().items() if not series & used)
    assert not missing, f"declared in gateway.edge.metrics but on no panel: {missing}"


def test_each_row_shows_its_own_metrics(dashboard: dict[str, Any]) -> None:
    by_row: dict[str, set[str]] = {}
    for row, _, expr in queries(dashboard):
        by_row.setdefault(row, set()).update(METRIC.findall(expr))
    expected = {
        "Connections": {
            "gateway_connections",
            "gateway_connections_opened_total",
            "gateway_rooms",
        },
        "Replies": {
            "gateway_replies_running",
            "gateway_replies_total",
            "gateway_reply_failures_total",
            "gateway_time_to_first_token_seconds_bucket",
            "gateway_reply_duration_seconds_bucket",
        },
        "Delivery": {
            "gateway_events_delivered_total",
            "gateway_outbox_merges_total",
            "gateway_slow_client_disconnects_total",
        },
        "Security": {"gateway_auth_failures_total"},
        "Upstreams": {"gateway_upstream_errors_total"},
        "Bus (Redis)": {
            "gateway_bus_published_total",
            "gateway_bus_received_total",
            "gateway_bus_malformed_total",
            "gateway_bus_send_lag_seconds_bucket",
            "gateway_bus_dropped_total",
            "gateway_bus_waits_total",
        },
        "Store": {"gateway_store_seconds_bucket", "gateway_store_seconds_count"},
        "HTTP": {"gateway_http_requests_total"},
    }
    for row, names in expected.items():
        assert names <= by_row.get(row, set()), (row, names - by_row.get(row, set()))


def test_every_series_is_filtered_by_the_replica_variable(dashboard: dict[str, Any]) -> None:
    for row, title, expr in queries(dashboard):
        for match in METRIC.finditer(expr):
            after = expr[match.end() :]
            assert after.startswith('{instance=~"$instance"'), (row, title, expr)


def test_quantiles_come_from_buckets_summed_by_le(dashboard: dict[str, Any]) -> None:
    quantiles = 0
    for row, title, expr in queries(dashboard):
        if "_bucket" in expr:
            assert expr.startswith("histogram_quantile(0."), (row, title, expr)
            assert re.search(r"sum by \(le(, [a-z]+)?\) \(rate\(", expr), (row, title, expr)
            quantiles += 1
        if "histogram_quantile" in expr:
            assert "_bucket{" in expr, (row, title, expr)
    # TTFT p50/p99 and duration p50/p99 by model (and overall), bus lag, store.
    assert quantiles >= 8


# -- the Traefik example -------------------------------------------------------------
SECRET = "k" * 32
TRAEFIK_GATEWAYS = ("gateway1", "gateway2")


@pytest.fixture(scope="module")
def traefik() -> dict[str, Any]:
    done = compose(
        "config",
        "--format",
        "json",
        env={"WEBUI_SECRET_KEY": SECRET, "PUBLIC_HOST": "chat.example.com"},
        file=TRAEFIK,
    )
    assert done.returncode == 0, done.stderr
    parsed: dict[str, Any] = json.loads(done.stdout)
    return parsed


def test_the_traefik_stack_has_its_services(traefik: dict[str, Any]) -> None:
    services = traefik["services"]
    assert set(services) == {"postgres", "redis", *TRAEFIK_GATEWAYS, "traefik"}
    proxy = services["traefik"]
    assert proxy["image"].startswith("traefik:v3")
    assert [(p["published"], p["target"]) for p in proxy["ports"]] == [("8080", 80)]
    assert any(v["source"] == "/var/run/docker.sock" for v in proxy["volumes"])
    for name in TRAEFIK_GATEWAYS:
        assert "ports" not in services[name]  # reached through Traefik only
        assert services[name]["build"]["context"] == str(ROOT)


def test_the_traefik_stack_needs_the_shared_secret() -> None:
    done = compose("config", "-q", file=TRAEFIK)
    assert done.returncode != 0 and "WEBUI_SECRET_KEY" in done.stderr


def test_the_replicas_are_configured_as_in_docker_compose_yml(traefik: dict[str, Any]) -> None:
    main = compose("config", "--format", "json", env={"WEBUI_SECRET_KEY": SECRET})
    assert main.returncode == 0, main.stderr
    reference = json.loads(main.stdout)["services"]["gateway-1"]
    for name in TRAEFIK_GATEWAYS:
        service = traefik["services"][name]
        env = dict(service["environment"])
        assert env.pop("GATEWAY_METRICS_TOKEN") == ""  # empty: no token
        assert env == reference["environment"]
        assert service["healthcheck"]["test"] == reference["healthcheck"]["test"]
        assert service["depends_on"] == reference["depends_on"]


def test_socketio_sessions_stick_to_one_replica(traefik: dict[str, Any]) -> None:
    service = "traefik.http.services.gateway.loadbalancer."
    labels = [traefik["services"][name]["labels"] for name in TRAEFIK_GATEWAYS]
    # The same service on both: Traefik merges them into one pool only if they agree.
    assert labels[0] == labels[1]
    for label in labels:
        assert label["traefik.enable"] == "true"
        assert label[service + "server.port"] == "8080"
        assert label[service + "sticky.cookie"] == "true"
        assert label[service + "sticky.cookie.name"] == "gw_sticky"
        assert label[service + "sticky.cookie.httponly"] == "true"
        assert label[service + "sticky.cookie.samesite"] == "lax"


def test_unhealthy_replicas_are_taken_out(traefik: dict[str, Any]) -> None:
    check = "traefik.http.services.gateway.loadbalancer.healthcheck."
    for name in TRAEFIK_GATEWAYS:
        service = traefik["services"][name]
        assert service["labels"][check + "path"] == "/ready?upstreams=0"
        assert service["labels"][check + "interval"] == "5s"
        assert "/ready?upstreams=0" in " ".join(service["healthcheck"]["test"])


def test_one_router_for_the_host_without_metrics_or_forged_headers(
    traefik: dict[str, Any],
) -> None:
    labels = traefik["services"]["gateway1"]["labels"]
    router = "traefik.http.routers.gateway."
    assert labels[router + "rule"] == "Host(`chat.example.com`) && !Path(`/metrics`)"
    assert labels[router + "service"] == "gateway"
    assert labels[router + "entrypoints"] == "web"
    assert labels[router + "middlewares"] == "gateway-headers"
    headers = "traefik.http.middlewares.gateway-headers.headers.customrequestheaders."
    # An empty value removes the header: a client's own never reaches the gateway.
    assert labels[headers + "Forwarded"] == ""
    assert labels[headers + "X-Forwarded-Prefix"] == ""


def test_long_streams_are_not_cut_by_traefiks_timeouts(traefik: dict[str, Any]) -> None:
    command = traefik["services"]["traefik"]["command"]
    assert "--providers.docker=true" in command
    assert "--providers.docker.exposedbydefault=false" in command
    assert "--entrypoints.web.address=:80" in command
    # v3 reads each request under a 60 s deadline by default; SSE, long-polls and
    # WebSockets outlive it.
    assert "--entrypoints.web.transport.respondingTimeouts.readTimeout=0s" in command
    assert "--entrypoints.web.transport.respondingTimeouts.writeTimeout=0s" in command
    # Idle connections to a replica close before the gateway's 75 s keep-alive.
    assert "--serverstransport.forwardingtimeouts.idleconntimeout=60s" in command
