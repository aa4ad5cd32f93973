"""A real Prometheus scrapes a real daemon: the series arrive with the right values, every
query of the Grafana dashboard and of the alert rules returns data, and the alerts that the
scenario provokes fire.

One scenario for the whole module (Prometheus's first scrape comes ~5 s after it starts, so
each test paying for its own would be slow): a daemon on the fake NVML with two GPUs, job
"walk" (fake MimicKit, never ends) holding GPU 1 at 5 % utilization, job "diverge",
whose losses turn NaN at iteration 3, so mkd gives up on it, and job "tested", a short
train -> test job that succeeds. Beside mkd, Prometheus scrapes a dcgm-exporter-shaped
target (the label names and values dcgm-exporter gives, for the same fake GPUs' UUIDs).
Prometheus scrapes every 1 s, evaluates deploy/prometheus/mkd.rules.yml every 1 s, and is
stopped by its pid at the end.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.harness import REPO, Home, kill_leaked, new_token, wait_for
from tests.nvml_fixtures import build_fake_nvml, nvml_env, write_state_file

PROMETHEUS = shutil.which("prometheus")
RULES = REPO / "deploy" / "prometheus" / "mkd.rules.yml"
RULES_TEST = REPO / "deploy" / "prometheus" / "mkd.rules.test.yml"
DASHBOARD = REPO / "deploy" / "grafana" / "dashboards" / "mkd.json"
MIB = 2**20

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(PROMETHEUS is None, reason="prometheus not installed (Debian package: prometheus)"),
]

GPUS = {
    "GPUS": 2,
    "UTIL_0": 87,
    "UTIL_1": 5,
    "POWER_MW_0": 250000,
    "TEMP_C_1": 41,
    "SM_CLOCK_MHZ_0": 1755,
    "CLOCKS_EVENT_REASONS_1": 0x4,  # sw power cap
    "XID_1": "79",
    "ECC_CORRECTED_1": 2,
}
UUIDS = [f"GPU-fake-0000-0000-0000-{i:012d}" for i in range(2)]

# What dcgm-exporter 3.x/4.x serves for these GPUs (its label names; hpc_job from the job mapping files).
DCGM = "".join(
    f'DCGM_FI_DEV_GPU_UTIL{{gpu="{i}",UUID="{uuid}",pci_bus_id="00000000:{bus}:00.0",device="nvidia{i}",'
    f'modelName="NVIDIA H100 80GB HBM3",Hostname="gpu-host",hpc_job="{job}"}} {util}\n'
    f'DCGM_FI_DEV_POWER_USAGE{{gpu="{i}",UUID="{uuid}",pci_bus_id="00000000:{bus}:00.0",device="nvidia{i}",'
    f'modelName="NVIDIA H100 80GB HBM3",Hostname="gpu-host",hpc_job="{job}"}} {watts}\n'
    for i, uuid, bus, job, util, watts in ((0, UUIDS[0], "18", "", 88, 251.5), (1, UUIDS[1], "2A", "walk", 6, 95.25))
)
DCGM_TEXT = (
    "# HELP DCGM_FI_DEV_GPU_UTIL GPU utilization (in %).\n# TYPE DCGM_FI_DEV_GPU_UTIL gauge\n"
    + "".join(line + "\n" for line in DCGM.splitlines() if line.startswith("DCGM_FI_DEV_GPU_UTIL"))
    + "# HELP DCGM_FI_DEV_POWER_USAGE Power draw (in W).\n# TYPE DCGM_FI_DEV_POWER_USAGE gauge\n"
    + "".join(line + "\n" for line in DCGM.splitlines() if line.startswith("DCGM_FI_DEV_POWER_USAGE"))
)

JOB = """
[workload]
kind = "mimickit"
arg_file = "args/deepmimic_humanoid_ppo_args.txt"
engine_config = "data/engines/newton_engine.yaml"
devices = {devices}
num_envs = 64

[resources]
{resources}

[env]
FAKE_MK_FAIL = "{fail}"

[[stages]]
kind = "train"
max_samples = 1000000000

[watch]
stop_grace = "2s"
"""
WALK = JOB.format(devices='["cuda:0"]', resources='devices = ["cuda:1"]', fail="hang")
DIVERGE = JOB.format(devices='["cpu"]', resources="gpus = 0", fail="nan_at=3")
TESTED = """
[workload]
kind = "mimickit"
arg_file = "args/deepmimic_humanoid_ppo_args.txt"
engine_config = "data/engines/newton_engine.yaml"
devices = ["cpu"]
num_envs = 16

[resources]
gpus = 0

[[stages]]
name = "train"
kind = "train"
max_samples = 4096

[[stages]]
name = "test"
kind = "test"
num_envs = 4
test_episodes = 4
model_from = "train"
"""

# Rules whose condition this scenario creates (their expression must return data now);
# the others only need their selectors to find series.
PROVOKED = {"MkdRetriesExhausted", "MkdGpuIdleUnderJob", "mkd:gpu_job:uuid", "mkd_job:dcgm_gpu_utilization:ratio"}
FIRING = {"MkdRetriesExhausted"}  # no `for`: it fires within seconds


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Prometheus:
    """A Prometheus server on 127.0.0.1 with a config of our own, stopped by its pid."""

    def __init__(self, root: Path, target: str, token: str, dcgm_target: str) -> None:
        self.root = root
        self.port = free_port()
        self.log = root / "prometheus.log"
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(RULES)],
            "scrape_configs": [
                {"job_name": "mkd", "static_configs": [{"targets": [target]}]},
                {"job_name": "dcgm", "static_configs": [{"targets": [dcgm_target]}]},
            ],
        }
        (root / "prometheus.yml").write_text(json.dumps(config))  # JSON is YAML
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                [
                    str(PROMETHEUS),
                    f"--config.file={root / 'prometheus.yml'}",
                    f"--storage.tsdb.path={root / 'data'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                ],
                env={**os.environ, "MKD_TEST_TOKEN": token},
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def api(self, path: str, **params: str) -> dict[str, Any]:
        url = f"http://127.0.0.1:{self.port}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        try:
            with urllib.request.urlopen(url, timeout=10) as answer:
                body: dict[str, Any] = json.load(answer)
        except urllib.error.HTTPError as exc:  # a bad query: 400 with a JSON error
            body = json.load(exc)
        return body

    def query(self, expr: str) -> list[dict[str, Any]]:
        body = self.api("query", query=expr)
        assert body["status"] == "success", f"{expr}: {body.get('errorType')}: {body.get('error')}"
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    def value(self, expr: str) -> float | None:
        """The value of a query that returns one series, None while it returns none."""
        result = self.query(expr)
        assert len(result) <= 1, f"{expr}: {len(result)} series"
        return float(result[0]["value"][1]) if result else None

    def ready(self) -> bool:
        try:
            return self.value('up{job="mkd"}') == 1
        except (OSError, AssertionError):
            assert self.proc.poll() is None, f"prometheus exited:\n{self.log.read_text()[-3000:]}"
            return False

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise


class _DcgmHandler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = DCGM_TEXT.encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; version=0.0.4")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        """quiet"""


@contextlib.contextmanager
def dcgm_exporter() -> Iterator[str]:
    """A dcgm-exporter-shaped target on a free port: its address."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _DcgmHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@dataclass
class Scenario:
    home: Home
    prom: Prometheus
    instance: str


@pytest.fixture(scope="module")
def scenario(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scenario]:
    root = tmp_path_factory.mktemp("prometheus-e2e")
    home = Home(root, new_token())
    stack = contextlib.ExitStack()
    prom_token = new_token()
    state = root / "nvml.state"
    try:
        home.start(env=nvml_env(build_fake_nvml(), {**GPUS, "STATE_FILE": state}))
        home.drop("walk.toml", WALK)
        home.drop("diverge.toml", DIVERGE)
        home.drop("tested.toml", TESTED)
        instance = f"127.0.0.1:{home.metrics_port()}"
        dcgm = stack.enter_context(dcgm_exporter())
        prom = Prometheus(root, instance, prom_token, dcgm)  # started early: its first scrape takes ~5 s
        try:
            home.wait_state("walk", "running")
            pid = wait_for(lambda: home.child_pid("walk"), 10, "walk's pid")
            # walk's process uses 3000 MiB of GPU 1; a process no job owns, 500 MiB
            write_state_file(state, {"PROCS_1": f"{pid}:3000,999999:500"})
            home.wait_state("diverge", "failed")
            home.wait_state("tested", "succeeded", timeout=60)
            wait_for(prom.ready, 30, 'up{job="mkd"} == 1 in Prometheus')
            yield Scenario(home, prom, instance)
        finally:
            prom.stop()
        assert home.mkd("shutdown", "--stop-runs").returncode == 0
        assert home.proc is not None
        home.proc.wait(30)
    finally:
        stack.close()
        leaked = home.cleanup() + kill_leaked(prom_token)
    assert not leaked, f"processes left behind: {leaked}"


def eventually(prom: Prometheus, expr: str, expected: float, timeout: float = 15) -> None:
    wait_for(lambda: prom.value(expr) == expected, timeout, f"{expr} == {expected} (now {prom.value(expr)})", every=0.2)


# --- the series --------------------------------------------------------------------------------


def test_gpu_series_arrive_with_nvml_values(scenario: Scenario) -> None:
    prom = scenario.prom
    assert prom.value("mkd_nvml_up") == 1
    assert prom.value('mkd_gpu_utilization_ratio{gpu="0"}') == 0.87
    assert prom.value('mkd_gpu_utilization_ratio{gpu="1"}') == 0.05
    assert prom.value('mkd_gpu_power_watts{gpu="0"}') == 250
    assert prom.value('mkd_gpu_temperature_celsius{gpu="1"}') == 41
    assert prom.value('mkd_gpu_sm_clock_hertz{gpu="0"}') == 1755e6
    assert prom.value('mkd_gpu_memory_total_bytes{gpu="0"}') == 81559 * MIB
    assert {s["metric"]["gpu"] for s in prom.query("mkd_gpu_info")} == {"0", "1"}
    (held,) = prom.query("mkd_gpu_job")
    assert (held["metric"]["gpu"], held["metric"]["job_id"]) == ("1", "walk")
    eventually(prom, 'mkd_gpu_process_memory_bytes{gpu="1", job_id="walk"}', 3000 * MIB)
    eventually(prom, 'mkd_gpu_process_memory_bytes{gpu="1", job_id=""}', 500 * MIB)
    assert prom.value('mkd_gpu_clocks_event_active{gpu="1", reason="sw_power_cap"}') == 1
    assert prom.value('mkd_gpu_clocks_event_active{gpu="0", reason="sw_power_cap"}') == 0
    assert prom.value('mkd_gpu_xid_errors_total{gpu="1"}') == 1 and prom.value('mkd_gpu_last_xid{gpu="1"}') == 79
    assert prom.value('mkd_gpu_ecc_errors_total{gpu="1", type="corrected"}') == 2
    assert prom.value('mkd_gpu_energy_joules_total{gpu="0"}') == 3600
    # the process collector's series come with mkd's (appended, gzipped as a second member)
    assert (prom.value('process_resident_memory_bytes{job="mkd"}') or 0) > 0


def test_job_series_arrive(scenario: Scenario) -> None:
    prom = scenario.prom
    eventually(prom, 'mkd_job_running{job_id="walk"}', 1)
    eventually(prom, 'mkd_job_running{job_id="diverge"}', 0)
    eventually(prom, 'mkd_jobs{state="running"}', 1)
    eventually(prom, 'mkd_jobs{state="failed"}', 1)
    eventually(prom, 'mkd_failures_total{class="nan_divergence"}', 1)
    assert prom.value('mkd_failures_total{class="cuda_oom"}') == 0  # every class from the start
    assert prom.value('mkd_internal_errors_total{step="observe"}') == 0
    assert (prom.value("mkd_tick_duration_seconds_count") or 0) > 0
    eventually(prom, 'mkd_job_info{job_id="walk", state="running", stage="1-train", devices="cuda:1"}', 1)
    eventually(prom, 'mkd_job_info{job_id="diverge", state="failed"}', 1)
    first = prom.value('mkd_job_iteration{job_id="walk"}')
    assert first is not None
    wait_for(lambda: (prom.value('mkd_job_iteration{job_id="walk"}') or 0) > first, 10, "walk's iteration to grow")
    assert (prom.value('mkd_job_samples_total{job_id="walk"}') or 0) > 0
    assert (prom.value('rate(mkd_job_samples_total{job_id="walk"}[10s])') or 0) > 0
    assert (prom.value('mkd_job_samples_per_second{job_id="walk"}') or 0) > 0
    assert (prom.value('time() - mkd_job_last_progress_timestamp_seconds{job_id="walk"}') or 99) < 30
    assert math.isnan(prom.value('mkd_job_loss{job_id="diverge", name="Critic_Loss"}') or 0)
    assert math.isnan(prom.value('mkd_job_train_stat{job_id="diverge", name="Imp_Ratio"}') or 0)
    assert {s["metric"]["name"] for s in prom.query('mkd_job_loss{job_id="walk"}')} == {
        "Critic_Loss",
        "Actor_Loss",
        "Action_Bound_Loss",
    }


def test_a_finished_jobs_results_and_training_series_stay(scenario: Scenario) -> None:
    prom = scenario.prom
    eventually(prom, 'mkd_job_info{job_id="tested", state="succeeded"}', 1)
    assert prom.value('mkd_job_test_stage_episodes{job_id="tested"}') == 4
    assert prom.value('mkd_job_test_stage_mean_return{job_id="tested"}') is not None
    assert prom.value('mkd_job_test_stage_mean_episode_length{job_id="tested"}') is not None
    # the train stage's figures, though the job's last attempt (the test) printed no table
    assert (prom.value('mkd_job_iteration{job_id="tested"}') or 0) > 0
    assert (prom.value('mkd_job_samples_total{job_id="tested"}') or 0) >= 4096
    assert prom.value('mkd_job_running{job_id="tested"}') == 0


def test_the_dcgm_join_labels_dcgm_series_with_the_job(scenario: Scenario) -> None:
    prom = scenario.prom
    # a recording rule: its first value comes at the group's next evaluation after both targets were scraped
    wait_for(lambda: prom.query("mkd_job:dcgm_gpu_utilization:ratio"), 30, "the recorded join", every=0.2)
    (joined,) = prom.query("mkd_job:dcgm_gpu_utilization:ratio")
    assert joined["metric"]["job_id"] == "walk" and joined["metric"]["UUID"] == UUIDS[1]
    assert joined["metric"]["modelName"] == "NVIDIA H100 80GB HBM3" and joined["metric"]["Hostname"] == "gpu-host"
    assert float(joined["value"][1]) == 0.06
    power = prom.query("mkd:gpu_job:uuid * on (UUID) group_left (modelName, Hostname) DCGM_FI_DEV_POWER_USAGE")
    assert [(s["metric"]["job_id"], float(s["value"][1])) for s in power] == [("walk", 95.25)]
    # mkd's job next to dcgm-exporter's own hpc_job label (the mapping files): the same job
    assert prom.query('DCGM_FI_DEV_GPU_UTIL{hpc_job="walk"}')[0]["metric"]["UUID"] == joined["metric"]["UUID"]


def test_nan_alert_is_quiet_once_the_job_stopped(scenario: Scenario) -> None:
    # diverge's NaN losses stay exported (retention) but mkd stopped it: no MkdLossNaN
    prom = scenario.prom
    assert prom.query('mkd_job_loss{job_id="diverge"} != mkd_job_loss{job_id="diverge"}')
    alerts = prom.api("alerts")["data"]["alerts"]
    assert not [a for a in alerts if a["labels"]["alertname"] == "MkdLossNaN"]


# --- the dashboard -----------------------------------------------------------------------------


def dashboard_targets() -> list[tuple[str, str, str]]:
    """(panel title, expr, legendFormat) of every query of the dashboard."""
    model = json.loads(DASHBOARD.read_text())
    out = []
    for panel in model["panels"] + [p for row in model["panels"] for p in row.get("panels", [])]:
        for target in panel.get("targets", []):
            out.append((panel["title"], target["expr"], target.get("legendFormat", "")))
    return out


def substitute(expr: str, scenario: Scenario) -> str:
    values = {
        "instance": scenario.instance,
        "job_id": "walk|tested",
        "gpu": "1",
        "__rate_interval": "1m",
        "__interval": "15s",
        "__range": "1h",
    }
    return re.sub(r"\$\{?(\w+)\}?", lambda m: values[m.group(1)], expr)


def test_every_dashboard_query_returns_data(scenario: Scenario) -> None:
    targets = dashboard_targets()
    assert len(targets) > 30

    def failures() -> list[str]:
        found = []
        for title, expr, legend in targets:
            result = scenario.prom.query(substitute(expr, scenario))
            if not result:
                found.append(f"{title!r}: no series from {expr}")
            for label in re.findall(r"\{\{\s*(\w+)\s*\}\}", legend):
                if any(label not in s["metric"] for s in result):
                    found.append(f"{title!r}: legend {legend!r} names {label}, which {expr} drops")
        return found

    # rate() needs two samples in its range: a few scrapes after the first one
    try:
        wait_for(lambda: not failures(), 15, "every panel to have data", every=1)
    except AssertionError:
        pytest.fail("\n".join(failures()))


def test_dashboard_variables_find_the_jobs_and_gpus(scenario: Scenario) -> None:
    model = json.loads(DASHBOARD.read_text())
    found = {}
    for variable in model["templating"]["list"]:
        if variable["type"] != "query":
            continue
        match = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", variable["query"]["query"])
        assert match, variable["query"]
        result = scenario.prom.query(substitute(match.group(1), scenario))
        found[variable["name"]] = {s["metric"].get(match.group(2)) for s in result}
    assert found == {"instance": {scenario.instance}, "job_id": {"walk", "diverge", "tested"}, "gpu": {"0", "1"}}


# --- the rules ---------------------------------------------------------------------------------


def rules() -> list[dict[str, Any]]:
    return [r for group in yaml.safe_load(RULES.read_text())["groups"] for r in group["rules"]]


def selectors(expr: str) -> list[str]:
    """The series selectors of an expression: metric names with their {matchers}."""
    return [m.group(0) for m in re.finditer(r"\b(?:mkd_\w+|up)\b(?:\{[^}]*\})?", expr)]


def test_every_rule_expression_finds_its_series(scenario: Scenario) -> None:
    prom = scenario.prom
    for rule in rules():
        name, expr = rule.get("alert") or rule["record"], rule["expr"]
        if name in PROVOKED:
            wait_for(functools.partial(prom.query, expr), 10, f"{name}'s expression to return data")
        elif not prom.query(expr):
            for selector in selectors(expr):
                assert prom.query(selector), f"{name}: {selector} finds no series"


def test_rules_evaluate_without_errors_and_provoked_alerts_fire(scenario: Scenario) -> None:
    prom = scenario.prom

    def firing() -> set[str]:
        alerts = prom.api("alerts")["data"]["alerts"]
        return {a["labels"]["alertname"] for a in alerts if a["state"] == "firing"}

    wait_for(lambda: firing() >= FIRING, 10, f"{FIRING} to fire (firing: {firing()})")
    alerts = prom.api("alerts")["data"]["alerts"]
    by_name = {a["labels"]["alertname"]: a for a in alerts}
    assert by_name["MkdRetriesExhausted"]["labels"]["job_id"] == "diverge"
    assert by_name["MkdRetriesExhausted"]["annotations"]["runbook_url"] == "README.md#mkdretriesexhausted"
    assert by_name["MkdGpuIdleUnderJob"]["state"] == "pending"  # for: 10m
    assert by_name["MkdGpuIdleUnderJob"]["labels"]["gpu"] == "1"
    loaded = [r for g in prom.api("rules")["data"]["groups"] for r in g["rules"]]
    assert {r["name"] for r in loaded} == {r.get("alert") or r["record"] for r in rules()}
    assert [(r["name"], r.get("lastError")) for r in loaded if r["health"] != "ok"] == []


def test_unit_test_series_are_shaped_like_real_ones(scenario: Scenario) -> None:
    """promtool's synthetic input series carry exactly the label names of real series, so
    the unit tests exercise the joins on the labels a real scrape has."""
    real: dict[str, set[frozenset[str]]] = {}
    tests = yaml.safe_load(RULES_TEST.read_text())["tests"]
    for series in (s["series"] for t in tests for s in t["input_series"]):
        name, _, labels = series.partition("{")
        if not (name.startswith(("mkd_", "DCGM_")) or name == "up"):
            continue
        if name not in real:
            real[name] = {frozenset(s["metric"]) for s in scenario.prom.query(name)}
        names = frozenset({"__name__", *re.findall(r"(\w+)=", labels)})
        assert names in real[name], f"{series}: real {name} series have labels {real[name]}"
