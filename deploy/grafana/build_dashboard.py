"""Writes dashboards/mkd.json, the mkd Grafana dashboard (Grafana 11 JSON model), from this file.

    python deploy/grafana/build_dashboard.py          # rewrite dashboards/mkd.json
    python deploy/grafana/build_dashboard.py --check  # exit 1 if the committed JSON is stale

Edit the panels here, not in the JSON.  Standard library only: the tests check the
result (tests/test_promtool.py: the model's shape and layout, and the JSON against Grafana's
own TypeScript types, @grafana/schema 11.6, with tsc; tests/test_prometheus_e2e.py: every
query against a real Prometheus scraping a real daemon and a dcgm-exporter-shaped target).
Metric names: the docstring of mkd/metrics.py.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

Json = dict[str, Any]

HERE = Path(__file__).resolve().parent
OUTPUT = HERE / "dashboards" / "mkd.json"

UID = "mkd-training"
SCHEMA_VERSION = 39  # Grafana 11.0; later 11.x releases migrate it on load
DATASOURCE_UID = "mkd-prometheus"  # provisioning/datasources/mkd.yml
DS = {"type": "prometheus", "uid": "${datasource}"}
WIDTH = 24  # Grafana's grid is 24 columns wide

# Label filters: every query follows the dashboard's variables.
I = 'instance=~"$instance"'  # noqa: E741 (short on purpose: it is in every query)
JOB = f'{I}, job_id=~"$job_id"'
GPU = f'{I}, gpu=~"$gpu"'
STALL_SECONDS = 300  # the default [watch] stall_timeout, as in MkdRunStalled


# --- targets and panels --------------------------------------------------------------------


def refs(targets: list[Json]) -> list[Json]:
    """The targets with refIds A, B, ... in order."""
    return [{**t, "refId": chr(ord("A") + n)} for n, t in enumerate(targets)]


def target(expr: str, legend: str = "", *, instant: bool = False, table: bool = False) -> Json:
    out: Json = {
        "datasource": DS,
        "editorMode": "code",
        "expr": expr,
        "legendFormat": legend or "__auto",
        "range": not instant,
        "instant": instant,
    }
    if table:
        out["format"] = "table"
    return out


def panel(kind: str, title: str, description: str, targets: list[Json], size: tuple[int, int], **extra: Any) -> Json:
    """A panel without id and position (layout() sets them)."""
    return {
        "type": kind,
        "title": title,
        "description": description,
        "datasource": DS,
        "targets": refs(targets),
        "gridPos": {"w": size[0], "h": size[1]},
        **extra,
    }


def field_config(unit: str, *, minimum: float | None = None, maximum: float | None = None, **custom: Any) -> Json:
    defaults: Json = {"unit": unit, "color": {"mode": "palette-classic"}}
    if minimum is not None:
        defaults["min"] = minimum
    if maximum is not None:
        defaults["max"] = maximum
    if custom:
        defaults["custom"] = custom
    return {"defaults": defaults, "overrides": []}


def timeseries(
    title: str,
    description: str,
    targets: list[Json],
    unit: str = "short",
    size: tuple[int, int] = (8, 8),
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    stack: bool = False,
    overrides: Iterable[Json] = (),
    threshold: float | None = None,
) -> Json:
    custom: Json = {
        "drawStyle": "line",
        "lineWidth": 1,
        "fillOpacity": 20 if stack else 0,
        "showPoints": "never",
        "spanNulls": False,
        "stacking": {"mode": "normal" if stack else "none", "group": "A"},
    }
    config = field_config(unit, minimum=minimum, maximum=maximum, **custom)
    if threshold is not None:
        config["defaults"]["thresholds"] = {
            "mode": "absolute",
            "steps": [{"color": "green", "value": None}, {"color": "red", "value": threshold}],
        }
        config["defaults"]["custom"]["thresholdsStyle"] = {"mode": "dashed"}
    config["overrides"] = list(overrides)
    options = {
        "legend": {"displayMode": "list", "placement": "bottom", "showLegend": True, "calcs": []},
        "tooltip": {"mode": "multi", "sort": "desc"},
    }
    return panel("timeseries", title, description, targets, size, fieldConfig=config, options=options)


def stat(
    title: str,
    description: str,
    targets: list[Json],
    size: tuple[int, int] = (4, 4),
    *,
    unit: str = "short",
    text_mode: str = "value",
    mappings: list[Json] | None = None,
    no_value: str | None = None,
) -> Json:
    config = field_config(unit)
    config["defaults"]["color"] = {"mode": "thresholds"}
    config["defaults"]["thresholds"] = {"mode": "absolute", "steps": [{"color": "text", "value": None}]}
    if mappings:
        config["defaults"]["mappings"] = mappings
    if no_value is not None:
        config["defaults"]["noValue"] = no_value
    options = {
        "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
        "colorMode": "value",
        "graphMode": "none",
        "justifyMode": "auto",
        "orientation": "auto",
        "textMode": text_mode,
    }
    return panel("stat", title, description, targets, size, fieldConfig=config, options=options)


def up_down(down: float, up: float) -> list[Json]:
    """Value mappings that show a 0/1 gauge as a coloured word."""
    return [
        {
            "type": "value",
            "options": {
                str(down): {"text": "down", "color": "red", "index": 0},
                str(up): {"text": "up", "color": "green", "index": 1},
            },
        }
    ]


def table(title: str, description: str, targets: list[Json], renames: dict[str, str], units: dict[str, str]) -> Json:
    """Instant queries merged into one row per series (by their shared labels); the values
    of queries not in renames (e.g. the 1 of an info metric) are hidden."""
    hidden = {"Time": True, "__name__": True, "job": True}
    hidden.update({f"Value #{t['refId']}": True for t in refs(targets) if f"Value #{t['refId']}" not in renames})
    overrides = [
        {"matcher": {"id": "byName", "options": name}, "properties": [{"id": "unit", "value": unit}]}
        for name, unit in units.items()
    ]
    transformations = [
        {"id": "merge", "options": {}},
        {"id": "organize", "options": {"excludeByName": hidden, "renameByName": renames, "indexByName": {}}},
    ]
    config = {"defaults": {"custom": {"align": "auto"}}, "overrides": overrides}
    options = {"showHeader": True, "cellHeight": "sm", "footer": {"show": False, "reducer": ["sum"], "fields": ""}}
    return panel(
        "table",
        title,
        description,
        targets,
        (WIDTH, 7),
        fieldConfig=config,
        options=options,
        transformations=transformations,
    )


def by_ref(ref: str, **properties: Any) -> Json:
    """A field override for the series of one query (refId)."""
    return {
        "matcher": {"id": "byFrameRefID", "options": ref},
        "properties": [{"id": key, "value": value} for key, value in properties.items()],
    }


DASHED = {"fill": "dash", "dash": [10, 10]}


# --- the rows ------------------------------------------------------------------------------


def overview() -> list[Json]:
    t = target
    return [
        stat(
            "Daemon",
            'Whether Prometheus can scrape mkd (up{job="mkd"}), and its version (mkd_build_info).',
            [
                t(
                    f'up{{job="mkd", {I}}} * on (instance) group_left (version) mkd_build_info{{{I}}}',
                    "{{instance}} mkd {{version}}",
                )
            ],
            mappings=up_down(0, 1),
            no_value="down",
            text_mode="value_and_name",
        ),
        stat(
            "NVML",
            "Whether NVML answered mkd's last GPU sample (mkd_nvml_up). Down: no GPU metrics, GPU jobs wait.",
            [t(f"mkd_nvml_up{{{I}}}", "{{instance}}")],
            mappings=up_down(0, 1),
        ),
        stat("Queue", "Jobs waiting to start: queued or in retry_wait.", [t(f"sum(mkd_queue_length{{{I}}})")]),
        stat(
            "Running jobs",
            "Jobs starting or running.",
            [t(f'sum(mkd_jobs{{{I}, state="running"}})')],
        ),
        stat(
            "Attempts, last hour",
            "Attempts started in the last hour (retries included).",
            [t(f"sum(increase(mkd_attempts_total{{{I}}}[1h]))")],
            no_value="0",
        ),
        stat(
            "Failed attempts, last hour",
            "Attempts that failed in the last hour, all failure classes.",
            [t(f"sum(increase(mkd_failures_total{{{I}}}[1h]))")],
            no_value="0",
        ),
        panel(
            "bargauge",
            "Jobs by state",
            "Every job the daemon knows, per state (mkd_jobs).",
            [target(f"sum by (state) (mkd_jobs{{{I}}})", "{{state}}", instant=True)],
            (8, 8),
            fieldConfig=field_config("short", minimum=0),
            options={
                "orientation": "horizontal",
                "displayMode": "basic",
                "showUnfilled": True,
                "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            },
        ),
        timeseries(
            "Attempts, retries, failures, rejected files (per minute)",
            "Rates of mkd's counters; failures per failure class (the runbook's classes and mkd's own).",
            [
                t(f"60 * sum(rate(mkd_attempts_total{{{I}}}[$__rate_interval]))", "attempts"),
                t(f"60 * sum(rate(mkd_retries_total{{{I}}}[$__rate_interval]))", "retries"),
                t(f"60 * sum by (class) (rate(mkd_failures_total{{{I}}}[$__rate_interval]))", "failed: {{class}}"),
                t(f"60 * sum(rate(mkd_rejected_files_total{{{I}}}[$__rate_interval]))", "rejected files"),
                t(f"60 * sum(rate(mkd_intake_errors_total{{{I}}}[$__rate_interval]))", "intake errors"),
                t(
                    f"60 * sum by (step) (rate(mkd_internal_errors_total{{{I}}}[$__rate_interval]))",
                    "internal errors: {{step}}",
                ),
            ],
            size=(16, 8),
            minimum=0,
        ),
        timeseries(
            "Loop tick duration",
            "How long the daemon's loop ticks take (mkd_tick_duration_seconds): median and 99th percentile.",
            [
                t(
                    f"histogram_quantile(0.5, sum by (instance, le) "
                    f"(rate(mkd_tick_duration_seconds_bucket{{{I}}}[$__rate_interval])))",
                    "p50 {{instance}}",
                ),
                t(
                    f"histogram_quantile(0.99, sum by (instance, le) "
                    f"(rate(mkd_tick_duration_seconds_bucket{{{I}}}[$__rate_interval])))",
                    "p99 {{instance}}",
                ),
            ],
            "s",
            (WIDTH, 6),
            minimum=0,
        ),
        table(
            "Jobs",
            "The jobs mkd exports: unfinished ones, and finished ones for [metrics] retention (1h).",
            [
                t(f"mkd_job_info{{{I}}}", instant=True, table=True),
                t(f"mkd_job_attempt{{{I}}}", instant=True, table=True),
                t(f"mkd_job_iteration{{{I}}}", instant=True, table=True),
                t(f"mkd_job_samples_per_second{{{I}}}", instant=True, table=True),
                t(f"time() - mkd_job_last_progress_timestamp_seconds{{{I}}}", instant=True, table=True),
                t(f"mkd_job_test_stage_mean_return{{{I}}}", instant=True, table=True),
                t(f"mkd_job_test_stage_episodes{{{I}}}", instant=True, table=True),
            ],
            renames={
                "Value #B": "attempt",
                "Value #C": "iteration",
                "Value #D": "samples/s",
                "Value #E": "since progress",
                "Value #F": "test stage: mean return",
                "Value #G": "test stage: episodes",
            },
            units={"since progress": "s"},
        ),
        table(
            "GPUs",
            "Every GPU NVML reports, and the job that holds it (none: free).",
            [
                t(f"mkd_gpu_info{{{I}}}", instant=True, table=True),
                t(f"mkd_gpu_utilization_ratio{{{I}}}", instant=True, table=True),
                t(f"mkd_gpu_memory_used_bytes{{{I}}}", instant=True, table=True),
                t(f"mkd_gpu_memory_total_bytes{{{I}}}", instant=True, table=True),
                t(f"mkd_gpu_power_watts{{{I}}}", instant=True, table=True),
                t(f"mkd_gpu_temperature_celsius{{{I}}}", instant=True, table=True),
                t(f"mkd_gpu_job{{{I}}}", instant=True, table=True),
            ],
            renames={
                "Value #B": "utilization",
                "Value #C": "memory used",
                "Value #D": "memory total",
                "Value #E": "power",
                "Value #F": "temperature",
            },
            units={
                "utilization": "percentunit",
                "memory used": "bytes",
                "memory total": "bytes",
                "power": "watt",
                "temperature": "celsius",
            },
        ),
    ]


def per_job() -> list[Json]:
    t = target
    return [
        stat(
            "State",
            "The job's state and current stage (mkd_job_info).",
            [t(f"mkd_job_info{{{JOB}}}", "{{state}} · {{stage}}", instant=True)],
            size=(6, 5),
            text_mode="name",
        ),
        stat(
            "Attempt and retries",
            "The current attempt (1-based) and the retries so far.",
            [t(f"mkd_job_attempt{{{JOB}}}", "attempt"), t(f"mkd_job_retries{{{JOB}}}", "retries")],
            size=(6, 5),
            text_mode="value_and_name",
        ),
        timeseries(
            "Seconds since progress",
            f"Seconds since MimicKit printed a new iteration. mkd stops a run at the job's stall_timeout "
            f"(default {STALL_SECONDS} s, the dashed line).",
            [t(f"time() - mkd_job_last_progress_timestamp_seconds{{{JOB}}}", "since progress")],
            "s",
            (6, 5),
            minimum=0,
            threshold=STALL_SECONDS,
        ),
        stat(
            "Test stage result",
            "The last test stage's result: MimicKit's Mean Return, Mean Episode Length and the Episodes it ran.",
            [
                t(f"mkd_job_test_stage_mean_return{{{JOB}}}", "mean return"),
                t(f"mkd_job_test_stage_mean_episode_length{{{JOB}}}", "mean episode length"),
                t(f"mkd_job_test_stage_episodes{{{JOB}}}", "episodes"),
            ],
            size=(6, 5),
            text_mode="value_and_name",
            no_value="no test stage yet",
        ),
        timeseries(
            "Progress",
            "Iteration (left) and samples stitched across attempts (right).",
            [t(f"mkd_job_iteration{{{JOB}}}", "iteration"), t(f"mkd_job_samples_total{{{JOB}}}", "samples")],
            size=(6, 8),
            minimum=0,
            overrides=[by_ref("B", **{"custom.axisPlacement": "right"})],
        ),
        timeseries(
            "Throughput",
            "Samples per second between MimicKit's iterations (its Wall_Time), their median over the attempt "
            "(dashed), and Prometheus's rate of mkd_job_samples_total.",
            [
                t(f"mkd_job_samples_per_second{{{JOB}}}", "samples/s"),
                t(f"mkd_job_median_samples_per_second{{{JOB}}}", "median"),
                t(f"rate(mkd_job_samples_total{{{JOB}}}[$__rate_interval])", "rate"),
            ],
            size=(6, 8),
            minimum=0,
            overrides=[by_ref("B", **{"custom.lineStyle": DASHED})],
        ),
        timeseries(
            "Returns",
            "Train_Return, Test_Return, and the best Test_Return so far (dashed).",
            [
                t(f"mkd_job_train_return{{{JOB}}}", "train"),
                t(f"mkd_job_test_return{{{JOB}}}", "test"),
                t(f"mkd_job_best_test_return{{{JOB}}}", "best test"),
            ],
            size=(6, 8),
            overrides=[by_ref("C", **{"custom.lineStyle": DASHED})],
        ),
        timeseries(
            "Losses",
            "Each loss column MimicKit logs; a NaN shows as a gap (and fires MkdLossNaN).",
            [t(f"mkd_job_loss{{{JOB}}}", "{{name}}")],
            size=(6, 8),
        ),
        timeseries(
            "Optimizer statistics",
            "MimicKit's other per-iteration columns: Clip_Frac, Imp_Ratio, Adv_Mean/Std, Obs_Norm_Mean/Std.",
            [t(f"mkd_job_train_stat{{{JOB}}}", "{{name}}")],
            size=(12, 6),
        ),
        timeseries(
            "Episode length",
            "Train_Episode_Length and Test_Episode_Length.",
            [
                t(f"mkd_job_train_episode_length{{{JOB}}}", "train"),
                t(f"mkd_job_test_episode_length{{{JOB}}}", "test"),
            ],
            size=(6, 6),
            minimum=0,
        ),
        timeseries(
            "Wall time of the attempt",
            "MimicKit's Wall_Time of the current attempt.",
            [t(f"mkd_job_wall_time_seconds{{{JOB}}}", "wall time")],
            "s",
            (6, 6),
            minimum=0,
        ),
    ]


def per_gpu() -> list[Json]:
    t = target
    legend = "GPU {{gpu}}"
    return [
        timeseries(
            "Utilization",
            "GPU utilization (DCGM_FI_DEV_GPU_UTIL / 100).",
            [t(f"mkd_gpu_utilization_ratio{{{GPU}}}", legend)],
            "percentunit",
            minimum=0,
            maximum=1,
        ),
        timeseries(
            "Memory used and total",
            "Memory used (NVML v2: without the driver's reserve, as DCGM_FI_DEV_FB_USED) and in total (dashed).",
            [
                t(f"mkd_gpu_memory_used_bytes{{{GPU}}}", legend + " used"),
                t(f"mkd_gpu_memory_total_bytes{{{GPU}}}", legend + " total"),
            ],
            "bytes",
            minimum=0,
            overrides=[by_ref("B", **{"custom.lineStyle": DASHED})],
        ),
        timeseries(
            "Process memory by job",
            "GPU memory of the processes of each mkd job; 'other processes' are not mkd's.",
            [
                t(
                    "sum by (instance, gpu, job_id) (label_replace("
                    f'mkd_gpu_process_memory_bytes{{{GPU}}}, "job_id", "other processes", "job_id", ""))',
                    legend + ": {{job_id}}",
                )
            ],
            "bytes",
            minimum=0,
            stack=True,
        ),
        timeseries(
            "Power",
            "Power draw (DCGM_FI_DEV_POWER_USAGE).",
            [t(f"mkd_gpu_power_watts{{{GPU}}}", legend)],
            "watt",
            minimum=0,
        ),
        timeseries(
            "Temperature",
            "GPU temperature (DCGM_FI_DEV_GPU_TEMP).",
            [t(f"mkd_gpu_temperature_celsius{{{GPU}}}", legend)],
            "celsius",
        ),
        timeseries(
            "SM clock",
            "SM clock (DCGM_FI_DEV_SM_CLOCK, in hertz).",
            [t(f"mkd_gpu_sm_clock_hertz{{{GPU}}}", legend)],
            "hertz",
            minimum=0,
        ),
        timeseries(
            "Clock event reasons",
            "Why the clocks are held down now (NVML clocks event reasons, DCGM_FI_DEV_CLOCKS_EVENT_REASONS): "
            "one line per active reason; sw_power_cap and the *_slowdown ones cost throughput.",
            [t(f"mkd_gpu_clocks_event_active{{{GPU}}} == 1", legend + ": {{reason}}")],
            minimum=0,
            maximum=1,
        ),
        timeseries(
            "Energy (average power)",
            "The rate of NVML's energy counter (mkd_gpu_energy_joules_total, DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION).",
            [t(f"rate(mkd_gpu_energy_joules_total{{{GPU}}}[$__rate_interval])", legend)],
            "watt",
            minimum=0,
        ),
        timeseries(
            "XID and ECC errors, last hour",
            "XID errors NVML reported (by XID) and ECC errors (volatile counts), in the last hour.",
            [
                t(f"increase(mkd_gpu_xid_errors_total{{{GPU}}}[1h])", legend + ": XID errors"),
                t(f"increase(mkd_gpu_ecc_errors_total{{{GPU}}}[1h])", legend + ": ECC {{type}}"),
                t(f"mkd_gpu_last_xid{{{GPU}}} > 0", legend + ": last XID (value)"),
            ],
            minimum=0,
        ),
    ]


def dcgm() -> list[Json]:
    """mkd's jobs on dcgm-exporter's series: the join is the recording rule mkd:gpu_job:uuid."""
    t = target
    return [
        timeseries(
            "GPU utilization by job (dcgm-exporter)",
            "dcgm-exporter's DCGM_FI_DEV_GPU_UTIL of each GPU a job holds, joined on the GPU's UUID "
            "(recording rule mkd_job:dcgm_gpu_utilization:ratio). Empty without a dcgm-exporter scrape.",
            [t(f"mkd_job:dcgm_gpu_utilization:ratio{{{JOB}}}", "{{job_id}} on GPU {{gpu}} ({{modelName}})")],
            "percentunit",
            (12, 8),
            minimum=0,
            maximum=1,
        ),
        timeseries(
            "GPU power by job (dcgm-exporter)",
            "dcgm-exporter's DCGM_FI_DEV_POWER_USAGE of each GPU a job holds, joined on UUID by mkd:gpu_job:uuid.",
            [
                t(
                    f"mkd:gpu_job:uuid{{{JOB}}} * on (UUID) group_left (modelName, Hostname) DCGM_FI_DEV_POWER_USAGE",
                    "{{job_id}} on GPU {{gpu}} ({{Hostname}})",
                )
            ],
            "watt",
            (12, 8),
            minimum=0,
        ),
    ]


# --- layout and the dashboard ----------------------------------------------------------------


def row(title: str, repeat: str | None = None) -> Json:
    out: Json = {"type": "row", "title": title, "collapsed": False, "panels": [], "gridPos": {"w": WIDTH, "h": 1}}
    if repeat:
        out["repeat"] = repeat
    return out


def layout(sections: list[tuple[Json, list[Json]]]) -> list[Json]:
    """Rows and their panels in Grafana's flat list: each row header on its own line, panels
    left to right, a new line when the next one does not fit; ids 1, 2, ... in order."""
    out: list[Json] = []
    y = 0
    for header, panels in sections:
        header["gridPos"].update(x=0, y=y)
        out.append(header)
        y += 1
        x, line_height = 0, 0
        for p in panels:
            w, h = p["gridPos"]["w"], p["gridPos"]["h"]
            if x + w > WIDTH:
                x, y, line_height = 0, y + line_height, 0
            p["gridPos"].update(x=x, y=y)
            x, line_height = x + w, max(line_height, h)
            out.append(p)
        y += line_height
    for number, p in enumerate(out, start=1):
        p["id"] = number
    return out


def variable(name: str, label: str, query: str, *, all_value: str | None = None, sort: int = 1) -> Json:
    """A multi-value query variable over label_values(...), "All" by default."""
    out: Json = {
        "type": "query",
        "name": name,
        "label": label,
        "datasource": DS,
        "query": {"qryType": 1, "query": query, "refId": "PrometheusVariableQueryEditor-VariableQuery"},
        "refresh": 2,  # on time range change: jobs come and go
        "regex": "",
        "sort": sort,
        "multi": True,
        "includeAll": True,
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
        "options": [],
        "hide": 0,
    }
    if all_value is not None:
        out["allValue"] = all_value
    return out


def templating() -> Json:
    datasource = {
        "type": "datasource",
        "name": "datasource",
        "label": "Prometheus",
        "query": "prometheus",
        "current": {"selected": False, "text": "Prometheus (mkd)", "value": DATASOURCE_UID},
        "regex": "",
        "refresh": 1,
        "multi": False,
        "includeAll": False,
        "options": [],
        "hide": 0,
    }
    return {
        "list": [
            datasource,
            variable("instance", "mkd host", 'label_values(up{job="mkd"}, instance)', all_value=".+"),
            variable("job_id", "job", f"label_values(mkd_job_info{{{I}}}, job_id)"),
            variable("gpu", "GPU", f"label_values(mkd_gpu_info{{{I}}}, gpu)", all_value=".+", sort=3),
        ]
    }


def build() -> Json:
    panels = layout(
        [
            (row("Overview"), overview()),
            (row("Job $job_id", repeat="job_id"), per_job()),
            (row("GPUs $gpu"), per_gpu()),
            (row("Side by side with dcgm-exporter"), dcgm()),
        ]
    )
    return {
        "uid": UID,
        "title": "mkd: MimicKit training",
        "description": "Jobs, training progress and GPUs of the mkd daemons that Prometheus scrapes.",
        "tags": ["mkd", "mimickit", "gpu"],
        "schemaVersion": SCHEMA_VERSION,
        "version": 1,
        "editable": True,
        "graphTooltip": 1,
        "refresh": "30s",
        "time": {"from": "now-6h", "to": "now"},
        "timepicker": {},
        "timezone": "browser",
        "fiscalYearStartMonth": 0,
        "liveNow": False,
        "links": [],
        "annotations": {
            "list": [
                {
                    "builtIn": 1,
                    "datasource": {"type": "grafana", "uid": "-- Grafana --"},
                    "enable": True,
                    "hide": True,
                    "iconColor": "rgba(0, 211, 255, 1)",
                    "name": "Annotations & Alerts",
                    "type": "dashboard",
                }
            ]
        },
        "templating": templating(),
        "panels": panels,
    }


def render() -> str:
    return json.dumps(build(), indent=2, ensure_ascii=False) + "\n"


def iter_panels(dashboard: Json) -> Iterator[Json]:
    """Every panel, those nested in collapsed rows included."""
    for p in dashboard["panels"]:
        yield p
        yield from p.get("panels", [])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if dashboards/mkd.json differs from this file")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        current = OUTPUT.read_text(encoding="utf-8") if OUTPUT.exists() else ""
        if current != text:
            print(f"{OUTPUT.name} is stale: run python deploy/grafana/build_dashboard.py", file=sys.stderr)
            return 1
        return 0
    OUTPUT.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
