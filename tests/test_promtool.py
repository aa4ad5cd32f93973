"""The Prometheus and Grafana files under deploy/, checked offline: promtool on the scrape
config, the rules and their unit tests; the dashboard's JSON model (generated, complete,
laid out without overlaps) and the provisioning files. tests/test_prometheus_e2e.py runs
the same queries against a real Prometheus."""

from __future__ import annotations

import importlib.util
import itertools
import json
import re
import shutil
import subprocess
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from tests.harness import REPO

PROMETHEUS_DIR = REPO / "deploy" / "prometheus"
GRAFANA_DIR = REPO / "deploy" / "grafana"
RULES = PROMETHEUS_DIR / "mkd.rules.yml"
RULES_TEST = PROMETHEUS_DIR / "mkd.rules.test.yml"
DASHBOARD = GRAFANA_DIR / "dashboards" / "mkd.json"
PANEL_TYPES = {"timeseries", "stat", "bargauge", "table"}
VARIABLES = {"instance", "job_id", "gpu"}
GRAFANA_VARIABLES = {"__rate_interval", "__interval", "__range"}

needs_promtool = pytest.mark.skipif(
    shutil.which("promtool") is None, reason="promtool not installed (Debian package: prometheus)"
)


def promtool(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["promtool", *map(str, args)], capture_output=True, text=True, timeout=60, check=False)


def alerts() -> list[dict[str, Any]]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


# --- promtool ----------------------------------------------------------------------------------


@needs_promtool
def test_promtool_check_config() -> None:
    done = promtool("check", "config", PROMETHEUS_DIR / "prometheus.yml")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 rule files found" in done.stdout, "prometheus.yml loads mkd.rules.yml"


@needs_promtool
def test_promtool_check_rules() -> None:
    done = promtool("check", "rules", RULES)
    assert done.returncode == 0, done.stdout + done.stderr


@needs_promtool
def test_promtool_rule_unit_tests_pass() -> None:
    done = promtool("test", "rules", RULES_TEST)
    assert done.returncode == 0, done.stdout + done.stderr


@needs_promtool
def test_rule_unit_tests_catch_a_broken_rule(tmp_path: Path) -> None:
    # The unit tests are only worth something if they fail on a wrong expression.
    shutil.copy(RULES_TEST, tmp_path / RULES_TEST.name)
    broken = RULES.read_text().replace("mkd_job_loss != mkd_job_loss", "mkd_job_loss == mkd_job_loss")
    assert broken != RULES.read_text()
    (tmp_path / RULES.name).write_text(broken)
    done = promtool("test", "rules", tmp_path / RULES_TEST.name)
    assert done.returncode == 1 and "MkdLossNaN" in done.stdout + done.stderr


@needs_promtool
def test_dashboard_queries_parse(tmp_path: Path) -> None:
    """Every panel query, variables filled in, as a recording rule: promtool parses it."""
    exprs = [substitute(t["expr"]) for p in panels(dashboard()) for t in p.get("targets", [])]
    rules = [{"record": f"panel:{n}", "expr": e} for n, e in enumerate(exprs)]
    path = tmp_path / "panels.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "panels", "rules": rules}]}))
    done = promtool("check", "rules", path)
    assert done.returncode == 0, done.stdout + done.stderr


# --- the alert rules, without promtool -----------------------------------------------------------


def test_every_alert_has_severity_and_annotations_naming_what_it_is_about() -> None:
    names = [rule["alert"] for rule in alerts()]
    assert sorted(names) == sorted(
        [
            "MkdDaemonDown",
            "MkdNvmlDown",
            "MkdGpuIdleUnderJob",
            "MkdRunStalled",
            "MkdRetriesExhausted",
            "MkdLossNaN",
            "MkdReturnCollapsed",
            "MkdThroughputDropped",
        ]
    )
    for rule in alerts():
        assert rule["labels"]["severity"] in {"warning", "critical"}, rule["alert"]
        summary, description = rule["annotations"]["summary"], rule["annotations"]["description"]
        subject = re.compile(r"\$labels\.(job_id|gpu|instance)")
        assert subject.search(summary) and subject.search(description), rule["alert"]
        if "job_id" in rule["expr"] or "mkd_job_" in rule["expr"]:
            assert "$labels.job_id" in summary, f"{rule['alert']}: a job alert names the job"
        if "mkd_gpu_" in rule["expr"]:
            assert "$labels.gpu" in summary, f"{rule['alert']}: a GPU alert names the GPU"


def test_every_alert_has_a_unit_test_where_it_fires_and_one_where_it_does_not() -> None:
    tests = yaml.safe_load(RULES_TEST.read_text())["tests"]
    cases = [case for t in tests for case in t.get("alert_rule_test", [])]
    assert {case["alertname"] for case in cases if case["exp_alerts"]} == {rule["alert"] for rule in alerts()}
    assert {case["alertname"] for case in cases if not case["exp_alerts"]} == {rule["alert"] for rule in alerts()}


def github_anchors(markdown: str) -> set[str]:
    """The anchors GitHub gives a file's headings: lower case, punctuation dropped, spaces as '-'."""
    headings = re.findall(r"^#+ (.+)$", markdown, flags=re.MULTILINE)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}


def test_every_alert_links_the_readme_section_on_it() -> None:
    anchors = github_anchors((REPO / "README.md").read_text())
    for rule in alerts():
        url = rule["annotations"]["runbook_url"]
        page, _, anchor = url.partition("#")
        assert page == "README.md" and anchor == rule["alert"].lower(), rule["alert"]
        assert anchor in anchors, f"{rule['alert']}: README.md has no section #{anchor}"


# --- the dashboard ---------------------------------------------------------------------------------


def dashboard() -> dict[str, Any]:
    model: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return model


def panels(model: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel, those nested in collapsed rows included."""
    top: list[dict[str, Any]] = model["panels"]
    return top + [p for row in top for p in row.get("panels", [])]


def substitute(expr: str) -> str:
    values = {"instance": ".+", "job_id": "walk", "gpu": "0", "__rate_interval": "1m", "__interval": "15s"}
    return re.sub(r"\$\{?(\w+)\}?", lambda m: values[m.group(1)], expr)


def generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("build_dashboard", GRAFANA_DIR / "build_dashboard.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# Grafana's own TypeScript types of the dashboard JSON model, for the Grafana line the
# dashboard targets; tsc checks the emitted JSON against them (no Grafana server is needed).
SCHEMA_PACKAGES = ("@grafana/schema@11.6.16", "typescript@5.9.3")
needs_npm = pytest.mark.skipif(shutil.which("npm") is None, reason="npm not installed (Debian packages: nodejs npm)")
# JSON has no TypeScript enums: AsJson<T> takes each enum member as its string value, the rest as the schema says.
SCHEMA_CHECK = """import type { Dashboard } from '@grafana/schema';
type AsJson<T> = T extends string ? `${T}` : T extends (infer U)[] ? AsJson<U>[]
  : T extends object ? { [K in keyof T]: AsJson<T[K]> } : T;
export const dashboard = (%s) satisfies AsJson<Dashboard>;
"""
TSCONFIG = {
    "compilerOptions": {"strict": True, "noEmit": True, "module": "esnext", "moduleResolution": "bundler",
                        "target": "es2020", "skipLibCheck": True},
    "files": ["dashboard.ts"],
}  # fmt: skip


@pytest.fixture(scope="module")
def grafana_schema() -> Path:
    """A folder with @grafana/schema and tsc installed (once: build/grafana-schema)."""
    folder = REPO / "build" / "grafana-schema"
    stamp = folder / "installed"
    if not stamp.exists() or stamp.read_text() != " ".join(SCHEMA_PACKAGES):
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "package.json").write_text('{"private": true}\n')
        done = subprocess.run(
            ["npm", "install", "--no-audit", "--no-fund", "--silent", *SCHEMA_PACKAGES],
            cwd=folder, capture_output=True, text=True, timeout=300, check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stdout + done.stderr
        stamp.write_text(" ".join(SCHEMA_PACKAGES))
    return folder


def check_against_schema(folder: Path, model_json: str) -> subprocess.CompletedProcess[str]:
    (folder / "tsconfig.json").write_text(json.dumps(TSCONFIG))
    (folder / "dashboard.ts").write_text(SCHEMA_CHECK % model_json)
    tsc = folder / "node_modules" / ".bin" / "tsc"
    return subprocess.run([str(tsc), "-p", str(folder)], capture_output=True, text=True, timeout=300, check=False)


@needs_npm
def test_dashboard_satisfies_grafanas_schema(grafana_schema: Path) -> None:
    done = check_against_schema(grafana_schema, DASHBOARD.read_text())
    assert done.returncode == 0, done.stdout + done.stderr


@needs_npm
def test_schema_check_catches_what_grafana_would_not_load(grafana_schema: Path) -> None:
    model = dashboard()
    model["panels"][1]["gridPos"]["h"] = "nine"
    model["templating"]["list"][1]["definition"] = "label_values(up, instance)"
    done = check_against_schema(grafana_schema, json.dumps(model))
    assert done.returncode != 0
    assert "'string' is not assignable to type 'number'" in done.stdout
    assert "'\"definition\"' does not exist" in done.stdout


def test_dashboard_json_is_what_the_generator_writes() -> None:
    assert DASHBOARD.read_text() == generator().render(), "run: python deploy/grafana/build_dashboard.py"


def test_dashboard_model() -> None:
    model = dashboard()
    assert model["uid"] == "mkd-training" and model["title"]
    assert 39 <= model["schemaVersion"] <= 41, "Grafana 11 (11.0: 39 ... 11.6: 41)"
    assert model["time"]["from"].startswith("now-") and model["refresh"]
    variables = {v["name"]: v for v in model["templating"]["list"]}
    assert set(variables) == {"datasource"} | VARIABLES
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    for name in VARIABLES:
        variable = variables[name]
        assert variable["type"] == "query" and variable["datasource"]["uid"] == "${datasource}"
        assert re.fullmatch(rf"label_values\((mkd_\w+|up)(\{{[^}}]*\}})?, {name}\)", variable["query"]["query"])
        assert variable["multi"] and variable["includeAll"]


def test_every_panel_has_a_datasource_and_queries() -> None:
    for panel in panels(dashboard()):
        if panel["type"] == "row":
            assert not panel.get("targets")
            continue
        where = f"panel {panel['id']} {panel['title']!r}"
        assert panel["type"] in PANEL_TYPES, where
        assert panel["title"] and panel["description"], where
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, where
        assert panel["targets"], where
        ref_ids = [t["refId"] for t in panel["targets"]]
        assert len(set(ref_ids)) == len(ref_ids), where
        for target in panel["targets"]:
            assert target["datasource"] == panel["datasource"], where
            assert target["expr"].strip(), where
            used = set(re.findall(r"\$\{?(\w+)", target["expr"]))
            assert used <= VARIABLES | GRAFANA_VARIABLES, f"{where}: unknown variables {used}"


def test_panels_fit_the_grid_without_overlaps() -> None:
    model = dashboard()
    ids = [p["id"] for p in panels(model)]
    assert len(set(ids)) == len(ids), "panel ids are unique"
    boxes = []
    for panel in model["panels"]:
        pos = panel["gridPos"]
        assert all(isinstance(pos[k], int) for k in ("x", "y", "w", "h")), panel["title"]
        assert pos["x"] >= 0 and pos["y"] >= 0 and pos["w"] >= 1 and pos["h"] >= 1, panel["title"]
        assert pos["x"] + pos["w"] <= 24, f"{panel['title']!r} is wider than the grid"
        boxes.append((panel["title"], pos["x"], pos["y"], pos["x"] + pos["w"], pos["y"] + pos["h"]))
    for (a, ax0, ay0, ax1, ay1), (b, bx0, by0, bx1, by1) in itertools.combinations(boxes, 2):
        assert ax1 <= bx0 or bx1 <= ax0 or ay1 <= by0 or by1 <= ay0, f"{a!r} overlaps {b!r}"
    rows = [p for p in model["panels"] if p["type"] == "row"]
    assert [r["title"] for r in rows] == ["Overview", "Job $job_id", "GPUs $gpu", "Side by side with dcgm-exporter"]
    assert rows[1]["repeat"] == "job_id"


def test_dashboard_covers_the_metrics() -> None:
    """Every metric named in mkd/metrics.py's docstring has a panel, but the daemon's own
    timing and mkd_job_running (the job's state shows it)."""
    exprs = " ".join(t["expr"] for p in panels(dashboard()) for t in p.get("targets", []))
    docstring = (REPO / "mkd" / "metrics.py").read_text().split('"""')[1]
    documented = set(re.findall(r"\bmkd_[a-z_]*[a-z]\b", docstring))
    left_out = {"mkd_daemon_start_time_seconds", "mkd_tick_duration_seconds", "mkd_job_running"}
    assert left_out <= documented
    missing = {m for m in documented - left_out if not re.search(rf"\b{m}\b", exprs)}
    assert not missing, f"metrics without a panel: {sorted(missing)}"


# --- Grafana provisioning ------------------------------------------------------------------------


def test_provisioned_datasource_is_the_dashboards_default() -> None:
    provisioning = yaml.safe_load((GRAFANA_DIR / "provisioning" / "datasources" / "mkd.yml").read_text())
    assert provisioning["apiVersion"] == 1
    (source,) = provisioning["datasources"]
    assert source["type"] == "prometheus" and source["url"].startswith("http")
    assert source["isDefault"] is False, "a second default data source stops Grafana's provisioning"
    variables = {v["name"]: v for v in dashboard()["templating"]["list"]}
    assert variables["datasource"]["current"]["value"] == source["uid"]


def test_dashboard_provider_reads_a_folder_of_files() -> None:
    provisioning = yaml.safe_load((GRAFANA_DIR / "provisioning" / "dashboards" / "mkd.yml").read_text())
    assert provisioning["apiVersion"] == 1
    (provider,) = provisioning["providers"]
    assert provider["type"] == "file" and provider["options"]["path"].startswith("/")
