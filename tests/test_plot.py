"""`mkd plot`'s picture, drawn from real MimicKit log.txt files (tests/fixtures/mimickit/).

Three attempts are stitched: a run that diverged to NaN (marked failed), a run resumed from
its model.pt, and a quick run. The PNG is checked by its pixels: its size, that it is not blank,
and that the failure mark (its red) is there only when an attempt failed.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from mkd.client.plot import FAILED_COLOUR, Piece, render, samples_per_second, stitch
from mkd.mimickit.logtxt import parse_log_txt

FIXTURES = Path(__file__).parent / "fixtures" / "mimickit"
LOGS = (
    ("train", "cpu_train_nenv4_stock_agent_nan_divergence.log.txt", "nan_divergence"),
    ("train", "cpu_resume_with_model_file_new_outdir.log.txt", None),
    ("long_run", "cpu_train_nenv16_quick.log.txt", None),
)

np = pytest.importorskip("numpy")
image = pytest.importorskip("matplotlib.image")


def pieces(with_failure: bool = True) -> list[Piece]:
    out = []
    for number, (stage, name, failure) in enumerate(LOGS, start=1):
        rows = parse_log_txt((FIXTURES / name).read_text(encoding="utf-8"))
        out.append(Piece(number, stage, rows, failure=failure if with_failure else None))
    return stitch(out)


def red_pixels(path: Path) -> int:
    pixels = image.imread(str(path))[:, :, :3]
    target = np.array([int(FAILED_COLOUR[i : i + 2], 16) / 255 for i in (1, 3, 5)])
    return int((np.abs(pixels - target).sum(axis=2) < 0.08).sum())


def test_attempts_are_stitched_one_after_another() -> None:
    stitched = pieces()
    assert all(p.rows for p in stitched), "a fixture parsed to no rows"
    assert stitched[0].offset == 0
    ends = [max(float(r["Samples"]) for r in p.rows) for p in stitched]
    assert stitched[1].offset == ends[0]
    assert stitched[2].offset == ends[0] + ends[1]


def test_samples_per_second_uses_wall_time_in_hours() -> None:
    rows = [{"Samples": 0, "Wall_Time": 0.0}, {"Samples": 3600, "Wall_Time": 0.001}]
    assert samples_per_second(rows) == [(3600.0, 1000.0)]  # 3,600 samples in 3.6 s


def test_the_png_shows_the_curves_and_marks_the_failure(tmp_path: Path) -> None:
    marked = tmp_path / "marked.png"
    render(pieces(), marked, "fixture: 3 attempts")
    pixels = image.imread(str(marked))
    assert pixels.shape[:2] == (900, 1000)  # figsize 10x9 at 100 dpi
    assert marked.stat().st_size > 30_000
    grey = pixels[:, :, :3].mean(axis=2)
    assert grey.std() > 0.05, "blank picture"
    assert (grey < 0.5).mean() > 0.01, "no curves or text drawn"
    plain = tmp_path / "plain.png"
    render(pieces(with_failure=False), plain, "fixture: 3 attempts")
    assert red_pixels(marked) > 5 * max(1, red_pixels(plain)), "the failed attempt is not marked"
