"""Prometheus, Grafana, the alert rules and compose.yaml, checked without Docker or promtool.

The metric names they may use are gathered from what the code registers (the telemetry module's
counters and histograms, and the queue collector run against a real Redis), never from a list
kept here; PromQL is parsed with promql-parser, compose.yaml validated against the Compose
Specification schema (tests/fixtures/compose-spec), and every command it runs is parsed by the
real ``logloom`` argument parser.
"""

from __future__ import annotations

import argparse
import copy
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import promql_parser
import pytest
import redis
import yaml
from prometheus_client import REGISTRY
from prometheus_client.core import Metric

from pipeline import cli, metrics
from pipeline.config import load_config
from pipeline.discovery import find_candidates
from pipeline.keys import Keys

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "config"
COMPOSE_SCHEMA = ROOT / "tests" / "fixtures" / "compose-spec" / "compose_spec.json"
PROMETHEUS_BUILTINS = {"up"}
"""Series Prometheus makes itself for every target; dashboards and alerts may use them."""
SAMPLE_SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
    "gauge": ("",),
}


def logloom_families(client: redis.Redis) -> Iterator[Metric]:
    """What Logloom exports: the telemetry module's metrics, and the queue collector's."""
    yield from (f for f in REGISTRY.collect() if f.name.startswith("logloom_"))
    yield from metrics.QueueCollector(client, Keys()).collect()


@pytest.fixture
def exported(client: redis.Redis) -> dict[str, str]:
    """Every sample name a scrape of Logloom can show, with its family's type."""
    names = {}
    for family in logloom_families(client):
        for suffix in SAMPLE_SUFFIXES[family.type]:
            names[family.name + suffix] = family.type
    assert "logloom_group_lag" in names and "logloom_entries_in_total" in names
    return names


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def selectors(expr: str) -> set[str]:
    """The metric names a PromQL expression reads (parsing fails on invalid PromQL)."""
    names: set[str] = set()

    def visit(node: Any) -> None:
        if isinstance(node, promql_parser.VectorSelector):
            assert node.name, f"a selector without a metric name in {expr!r}"
            names.add(node.name)

    promql_parser.walk(promql_parser.parse(expr), visit)
    assert names, f"no metric in {expr!r}"
    return names


def grafana_to_promql(expr: str) -> str:
    """Grafana's interval variables replaced by a duration, as Grafana does before querying."""
    return re.sub(r"\$__(rate_interval|interval|range)\b", "5m", expr)


def dashboard_panels() -> list[dict[str, Any]]:
    dashboard = json.loads((CONFIG / "grafana" / "dashboards" / "logloom.json").read_text())
    return [panel for panel in dashboard["panels"] if panel["type"] != "row"]


def alert_rules() -> list[dict[str, Any]]:
    rules = load_yaml(CONFIG / "prometheus-alerts.yml")
    return [rule for group in rules["groups"] for rule in group["rules"]]


def test_the_dashboard_and_the_alerts_read_only_metrics_logloom_exports(
    exported: dict[str, str],
) -> None:
    used: dict[str, set[str]] = {}
    for panel in dashboard_panels():
        for target in panel["targets"]:
            used[f"panel {panel['title']!r}"] = selectors(grafana_to_promql(target["expr"]))
    for rule in alert_rules():
        used[f"alert {rule['alert']}"] = selectors(rule["expr"])
    known = set(exported) | PROMETHEUS_BUILTINS
    unknown = {where: sorted(names - known) for where, names in used.items() if names - known}
    assert not unknown, f"metrics Logloom does not export: {unknown}"
    raw_counters = {
        where: sorted(name for name in names if exported.get(name) == "counter")
        for where, names in used.items()
    }
    # A counter only means something through rate() or increase(): every use must be one.
    for where, counters in raw_counters.items():
        for name in counters:
            assert name.endswith("_total"), f"{where}: {name}"


def test_every_exported_metric_is_in_the_readme_table(client: redis.Redis) -> None:
    """The catalog (CONTRACT §9) is README's table: a metric added to the code without a row
    fails here, and so does a row for a metric the code no longer exports."""
    documented = dict(
        re.findall(r"^\| `(logloom_\w+)` \| (\w+) \|", (ROOT / "README.md").read_text(), re.M)
    )
    families = {family.name: family.type for family in logloom_families(client)}
    shown = {
        name + ("_total" if kind == "counter" else ""): kind for name, kind in families.items()
    }
    missing = {name: kind for name, kind in shown.items() if documented.get(name) != kind}
    assert not missing, (
        f"add these to README's metric table (name, type, labels, meaning): {missing}"
    )
    assert set(documented) <= set(shown), "README documents metrics the code does not export"


def test_the_dashboard_shows_the_queue_native_signals() -> None:
    on_dashboard = {
        name
        for panel in dashboard_panels()
        for target in panel["targets"]
        for name in selectors(grafana_to_promql(target["expr"]))
    }
    for name in (
        "logloom_group_lag",
        "logloom_group_pending",
        "logloom_group_oldest_pending_seconds",
        "logloom_group_consumers_active",
        "logloom_dlq_size",
        "logloom_stream_length",
        "logloom_rq_jobs",
        "logloom_plugin_circuit_state",
        "logloom_plugin_call_seconds_bucket",
        "logloom_entries_in_total",
        "logloom_entries_out_total",
        "logloom_entries_dropped_total",
        "logloom_batch_size_count",
    ):
        assert name in on_dashboard, f"no dashboard panel shows {name}"


def test_the_alert_rules_are_well_formed_and_cover_the_failures_that_matter() -> None:
    rules = load_yaml(CONFIG / "prometheus-alerts.yml")
    assert set(rules) == {"groups"}
    names = set()
    for group in rules["groups"]:
        assert set(group) <= {"name", "interval", "rules"} and group["rules"]
        for rule in group["rules"]:
            assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}, rule
            assert rule["alert"] not in names, f"two alerts named {rule['alert']}"
            names.add(rule["alert"])
            selectors(rule["expr"])
            assert promql_parser.parse_duration(rule["for"]).total_seconds() > 0
            assert rule["labels"]["severity"] in ("warning", "critical")
            assert rule["annotations"]["summary"]
            for text in rule["annotations"].values():
                assert text.count("{{") == text.count("}}"), f"a broken template: {text}"
    watched = {metric for rule in alert_rules() for metric in selectors(rule["expr"])}
    for signal in (
        "logloom_group_lag",  # lag growing
        "logloom_dlq_size",  # DLQ growing
        "logloom_plugin_circuit_state",  # circuit open
        "logloom_group_consumers_active",  # no consumers
    ):
        assert signal in watched, f"no alert on {signal}"


def test_a_broken_expression_is_caught() -> None:
    with pytest.raises(ValueError):
        selectors("sum by (group) (logloom_group_lag")
    with pytest.raises(ValueError):
        selectors("rate(logloom_entries_in_total[$__rate_interval])")


def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = load_yaml(ROOT / "compose.yaml")
    return loaded


def logloom_services(spec: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Services running the image the Dockerfile builds, whose command is logloom's."""
    return {name: svc for name, svc in spec["services"].items() if "build" in svc}


def parse_command(service: str, command: list[str]) -> argparse.Namespace:
    try:
        return cli._parser().parse_args(command)
    except SystemExit:
        pytest.fail(f"compose service {service}: `logloom {' '.join(command)}` is not a command")


def served_port(args: argparse.Namespace) -> int | None:
    """The port a parsed logloom command listens on, in the compose config."""
    config = load_config(CONFIG / "logloom.compose.yaml")
    if args.command == "worker":
        return int(args.metrics_port)
    if args.command == "metrics":
        return int(args.port or config.metrics.port)
    if args.command == "dashboard":
        return int(args.port or config.dashboard.port)
    return None


def test_compose_yaml_is_valid_under_the_compose_specification() -> None:
    schema = json.loads(COMPOSE_SCHEMA.read_text())
    # The file names draft 2019-09 by a URI that is not the draft's; the compose-spec project
    # validates it as draft 7, as its newer releases declare.
    validator = jsonschema.Draft7Validator(schema)
    spec = compose()
    errors = [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(spec)]
    assert not errors, errors

    broken = copy.deepcopy(spec)
    broken["services"]["filter"]["deploy"]["replicas"] = "two"
    broken["services"]["dashboard"]["healthcheck"]["intervall"] = "5s"
    caught = {tuple(error.absolute_path) for error in validator.iter_errors(broken)}
    assert caught == {
        ("services", "filter", "deploy", "replicas"),
        ("services", "dashboard", "healthcheck"),
    }, "the schema check catches mistakes"


def test_compose_runs_only_real_logloom_commands() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert 'ENTRYPOINT ["logloom"]' in dockerfile, "compose commands are logloom's arguments"
    services = logloom_services(compose())
    commands = {name: parse_command(name, svc["command"]) for name, svc in services.items()}
    assert commands["filter"].stage == "filter" and commands["sink"].stage == "sink"
    assert commands["ai"].stage == "ai"
    assert commands["metrics"].command == "metrics"
    assert commands["dashboard"].command == "dashboard"
    for name, svc in services.items():
        probe = " ".join(svc["healthcheck"]["test"])
        port = served_port(commands[name])
        assert f"http://127.0.0.1:{port}/" in probe, f"{name}'s healthcheck asks another port"


def test_compose_scales_the_workers_and_keeps_redis_on_disk() -> None:
    spec = compose()
    services = spec["services"]
    for name in ("filter", "sink", "ai"):
        svc = services[name]
        assert svc["deploy"]["replicas"] >= 1
        assert "container_name" not in svc and "ports" not in svc, f"{name} could not scale"
    redis_command = services["redis"]["command"]
    assert redis_command[redis_command.index("--appendonly") + 1] == "yes"
    assert any(volume.endswith(":/data") for volume in services["redis"]["volumes"])
    for name, svc in services.items():
        assert svc.get("healthcheck", {}).get("test"), f"{name} has no healthcheck"
    for name, svc in logloom_services(spec).items():
        assert "./config:/app/config:ro" in svc["volumes"], f"{name} does not mount config/"
        assert svc["depends_on"]["redis"]["condition"] == "service_healthy"
        config_file = svc["environment"]["LOGLOOM_CONFIG"]
        assert config_file.startswith("/app/config/")
        assert (CONFIG / config_file.removeprefix("/app/config/")).is_file()
    assert {"redis", "prometheus", "grafana", "rq-dashboard", "dashboard"} <= set(services)


def test_the_compose_config_loads_and_names_bundled_plugins() -> None:
    config = load_config(CONFIG / "logloom.compose.yaml")
    found = find_candidates(config)
    missing = [name for name in config.enabled_plugins() if name not in found]
    assert not missing, f"plugins the compose config enables but nothing provides: {missing}"
    assert config.redis.embedded == "never"


def test_prometheus_scrapes_every_component_compose_runs() -> None:
    prometheus = load_yaml(CONFIG / "prometheus.yml")
    for rule_file in prometheus["rule_files"]:
        assert (CONFIG / rule_file).is_file()
    targets: set[tuple[str, int]] = set()
    for job in prometheus["scrape_configs"]:
        for static in job.get("static_configs", []):
            for target in static["targets"]:
                host, port = target.rsplit(":", 1)
                targets.add((host, int(port)))
        for dns in job.get("dns_sd_configs", []):
            assert dns["type"] == "A"
            targets |= {(name, int(dns["port"])) for name in dns["names"]}
    jobs = [job["job_name"] for job in prometheus["scrape_configs"]]
    assert len(jobs) == len(set(jobs))

    spec = compose()
    serving = {
        (name, served_port(parse_command(name, svc["command"])))
        for name, svc in logloom_services(spec).items()
        if svc["command"][0] in ("worker", "metrics")
    }
    assert serving <= targets, f"not scraped: {serving - targets}"
    for host, _port in targets - {("localhost", 9090)}:
        assert host in spec["services"], f"Prometheus scrapes {host}, which compose does not run"
    mounts = spec["services"]["prometheus"]["volumes"]
    assert "./config/prometheus.yml:/etc/prometheus/prometheus.yml:ro" in mounts
    for rule_file in prometheus["rule_files"]:
        assert f"./config/{rule_file}:/etc/prometheus/{rule_file}:ro" in mounts


def test_grafana_is_provisioned_with_the_datasource_and_the_dashboard() -> None:
    provisioning = CONFIG / "grafana" / "provisioning"
    (datasource,) = load_yaml(provisioning / "datasources" / "prometheus.yml")["datasources"]
    assert datasource["type"] == "prometheus"
    assert datasource["url"] == "http://prometheus:9090"
    (provider,) = load_yaml(provisioning / "dashboards" / "logloom.yml")["providers"]
    grafana = compose()["services"]["grafana"]
    assert "./config/grafana/provisioning:/etc/grafana/provisioning:ro" in grafana["volumes"]
    assert f"./config/grafana/dashboards:{provider['options']['path']}:ro" in grafana["volumes"]

    dashboard = json.loads((CONFIG / "grafana" / "dashboards" / "logloom.json").read_text())
    assert dashboard["uid"] and dashboard["title"]
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard_panels():
        assert panel["datasource"]["uid"] == datasource["uid"], panel["title"]
        assert panel["targets"] and panel["description"], panel["title"]
        assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24
