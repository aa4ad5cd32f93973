"""`mkd plot JOB`: return, losses and samples/s against samples, stitched across attempts.

Each attempt's MimicKit `out/log.txt` is one piece; MimicKit's counters start again in each
attempt (a resumed long run counts from 0), so a piece is drawn after the samples of the ones
before it. Attempt starts are dashed lines labelled with the attempt and stage; an attempt
that failed ends in a red cross labelled with its class. matplotlib is an optional extra
(`pip install 'mkd[plot]'`); nothing else in mkd imports it.
"""

from __future__ import annotations

import itertools
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mkd.layout import Layout
from mkd.mimickit.logtxt import Value, parse_log_txt
from mkd.store import Store

EXIT_NO_MATPLOTLIB = 6
FAILED_COLOUR = "#ff0000"  # in no colour of the curves (matplotlib's cycle has no pure red)
RETURN_COLUMNS = ("Train_Return", "Test_Return")
# matplotlib's tab10 without its red, which would read as a failure mark
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf")


@dataclass
class Piece:
    """One attempt's rows of log.txt and how it ended."""

    number: int
    stage: str
    rows: list[dict[str, Value]]
    failure: str | None = None
    test_return: float | None = None
    offset: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


def stitch(pieces: list[Piece]) -> list[Piece]:
    """Give each piece the samples done before it (MimicKit's count restarts in each attempt)."""
    offset = 0.0
    for piece in pieces:
        piece.offset = offset
        samples = [float(r["Samples"]) for r in piece.rows if isinstance(r.get("Samples"), int | float)]
        if samples:
            offset += max(samples)
    return pieces


def samples_per_second(rows: list[dict[str, Value]]) -> list[tuple[float, float]]:
    """(samples, rate) between consecutive rows; Wall_Time is in hours."""
    out = []
    for before, after in itertools.pairwise(rows):
        try:
            ds = float(after["Samples"]) - float(before["Samples"])
            dt = (float(after["Wall_Time"]) - float(before["Wall_Time"])) * 3600.0
        except (KeyError, TypeError, ValueError):
            continue
        if dt > 0:
            out.append((float(after["Samples"]), ds / dt))
    return out


def pieces_of(store: Store, job_id: str) -> list[Piece]:
    out = []
    for attempt in store.attempts(job_id):
        log = Path(attempt.dir) / "out" / "log.txt"
        try:
            rows = parse_log_txt(log.read_text(encoding="utf-8", errors="replace"))
        except OSError:
            rows = []
        test = (attempt.progress or {}).get("test_result") or {}
        failure = attempt.failure_class if attempt.failure_class not in (None, "paused") else None
        out.append(
            Piece(
                attempt.number,
                attempt.stage_label,
                rows,
                failure=failure,
                test_return=float(test["mean_return"]) if test.get("mean_return") is not None else None,
            )
        )
    return stitch(out)


def render(pieces: list[Piece], output: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (ret, loss, rate) = plt.subplots(3, 1, figsize=(10, 9), sharex=True)
    palette = PALETTE
    colours: dict[str, str] = {}
    labelled: set[str] = set()

    def draw(axis: Any, column: str, xs: list[float], ys: list[float]) -> None:
        """One metric keeps its colour across attempts and is named once in the legend."""
        colour = colours.setdefault(column, palette[len(colours) % len(palette)])
        label = None if column in labelled else column
        labelled.add(column)
        axis.plot(xs, ys, marker=".", color=colour, label=label)

    for piece in pieces:
        xs = [piece.offset + float(r["Samples"]) for r in piece.rows if "Samples" in r]
        for column in RETURN_COLUMNS:
            draw(ret, column, xs, [_num(r.get(column)) for r in piece.rows])
        losses = sorted({k for r in piece.rows for k in r if k.endswith("_Loss")})
        for column in losses:
            draw(loss, column, xs, [_num(r.get(column)) for r in piece.rows])
        rates = samples_per_second(piece.rows)
        draw(rate, "samples/s", [piece.offset + s for s, _ in rates], [v for _, v in rates])
        end = xs[-1] if xs else piece.offset
        if piece.test_return is not None:
            draw(ret, "test stage: Mean Return", [end], [piece.test_return])
        _mark_start(piece, ret, (ret, loss, rate))
        if piece.failure:
            _mark_failure(piece, end, ret, (ret, loss, rate))
    ret.set_ylabel("return")
    loss.set_ylabel("loss")
    rate.set_ylabel("samples/s")
    rate.set_xlabel("samples (stitched across attempts)")
    for axis in (ret, loss, rate):
        axis.grid(True, alpha=0.3)
        if axis.get_legend_handles_labels()[0]:
            axis.legend(fontsize=7, loc="best")
    figure.suptitle(title)
    figure.tight_layout()
    output.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(output, dpi=100)
    plt.close(figure)


def _mark_start(piece: Piece, ret: Any, axes: tuple[Any, ...]) -> None:
    """Where an attempt begins: a dashed line on every panel, its number and stage on the return panel."""
    for axis in axes:
        axis.axvline(piece.offset, color="grey", linestyle="--", linewidth=0.8)
    label = f"#{piece.number} {piece.stage}"
    ret.annotate(label, (piece.offset, 1.0), xycoords=("data", "axes fraction"), fontsize=8, rotation=90, va="top",
                 ha="right")  # fmt: skip


def _mark_failure(piece: Piece, end: float, ret: Any, axes: tuple[Any, ...]) -> None:
    """Where an attempt failed: a red line on every panel, a red X at its last return, and its class."""
    for axis in axes:
        axis.axvline(end, color=FAILED_COLOUR, linewidth=1.5)
    last_return = next((_num(r.get("Train_Return")) for r in reversed(piece.rows)), 0.0)
    ret.plot([end], [last_return], marker="X", markersize=14, color=FAILED_COLOUR, linestyle="")
    ret.annotate(f"{piece.failure}", (end, 0.45), xycoords=("data", "axes fraction"), color=FAILED_COLOUR,
                 fontsize=9, rotation=90, va="bottom", ha="left")  # fmt: skip


def _num(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


def plot_main(layout: Layout, name: str, output: str | None) -> int:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        print("mkd plot needs matplotlib, an optional extra: pip install 'mkd[plot]'", file=sys.stderr)
        return EXIT_NO_MATPLOTLIB
    if not layout.db.exists():
        print(f"mkd: no job {name!r}", file=sys.stderr)
        return 3
    store = Store.open(layout.db, readonly=True)
    try:
        job = store.find_job(name)
        if job is None:
            print(f"mkd: no job {name!r}", file=sys.stderr)
            return 3
        pieces = pieces_of(store, job.job_id)
        state = job.state.value
    finally:
        store.close()
    if not any(p.rows for p in pieces):
        print(f"mkd: {job.job_id} has no MimicKit log.txt rows yet (no attempt wrote out/log.txt)", file=sys.stderr)
        return 3
    path = Path(output) if output else layout.runs_dir / job.job_id / "plot.png"
    render(pieces, path, f"{job.job_id} ({state}): {len(pieces)} attempt(s)")
    print(f"wrote {path}")
    return 0
