"""`mkd doctor`'s display checks (mkd/client/doctor_display.py): the tools xvfb-run needs, then a
real hidden GL window opened in MimicKit's Python. Here the tools and that Python are small
scripts on a PATH of the test's own, so each answer the checks can give is seen."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from mkd.client import doctor_display
from mkd.client.doctor_display import INSTALL, display_checks
from mkd.config import DaemonConfig


def script(folder: Path, name: str, body: str) -> Path:
    path = folder / name
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


@pytest.fixture
def tools(tmp_path: Path) -> Path:
    """xvfb-run that drops its own options (-a, -s ARG) and runs the command; Xvfb and xauth present."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    skip_options = 'while [ "$1" = -a ] || [ "$1" = -s ]; do [ "$1" = -s ] && shift; shift; done'
    script(bin_dir, "xvfb-run", f'{skip_options}\nexec "$@"')
    script(bin_dir, "Xvfb", "exit 0")
    script(bin_dir, "xauth", "exit 0")
    return bin_dir


def config(python: Path) -> DaemonConfig:
    return DaemonConfig(mimickit_python=str(python))


def test_no_display_and_no_xvfb_says_visualize_stages_are_skipped(tmp_path: Path) -> None:
    checks = display_checks(config(Path("python3")), {"PATH": str(tmp_path)})
    assert [c.level for c in checks] == ["warn"]
    assert "xvfb-run, Xvfb, xauth not found: visualize stages are skipped" in checks[0].what
    assert checks[0].fix == INSTALL


def test_a_window_that_opens_is_ok_with_its_renderer(tools: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(doctor_display.ctypes.util, "find_library", lambda name: "libGL.so.1")
    python = script(tools, "mk-python", 'echo "GL renderer: llvmpipe (LLVM 15.0.6, 256 bits) | version: 4.5"')
    checks = display_checks(config(python), {"PATH": f"{tools}:/usr/bin:/bin"})
    assert [c.level for c in checks] == ["ok", "ok"]
    assert "visualize stages run under xvfb-run -a" in checks[0].what
    assert checks[1].what.endswith("GL renderer: llvmpipe (LLVM 15.0.6, 256 bits) | version: 4.5")


def test_a_glsl_error_points_at_the_runbooks_mesa_overrides(tools: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(doctor_display.ctypes.util, "find_library", lambda name: "libGL.so.1")
    python = script(tools, "mk-python", 'echo "pyglet.gl.lib.GLException: GLSL 1.50 is not supported" >&2; exit 1')
    checks = display_checks(config(python), {"PATH": f"{tools}:/usr/bin:/bin"})
    assert checks[-1].level == "warn" and "did not open (rc 1): pyglet.gl.lib.GLException" in checks[-1].what
    assert "MESA_GL_VERSION_OVERRIDE=3.3" in checks[-1].fix


def test_no_libgl_is_named_before_any_window_is_tried(tools: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(doctor_display.ctypes.util, "find_library", lambda name: None)
    checks = display_checks(config(tools / "absent-python"), {"PATH": str(tools), "DISPLAY": ":7"})
    assert [c.level for c in checks] == ["ok", "warn"]
    assert checks[0].what == "visualize: DISPLAY=:7 (xvfb-run not needed)"
    assert 'Library "GL" not found' in checks[1].what
