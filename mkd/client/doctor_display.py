"""`mkd doctor`'s display checks: can a visualize stage open its GL window on this host?

A visualize stage runs MimicKit with `--visualize true`, and Newton's viewer opens a pyglet
window. On a host without a display mkd wraps the stage in `xvfb-run -a`, which needs Xvfb and
xauth; the window then needs libGL and a GLX implementation behind Xvfb (Mesa's, on a server).
Seen on GPU hosts: without libGL pyglet fails at import (`Library "GL" not found`), without Xvfb
the stage is skipped. So beside the tools, this opens a real 64x64 hidden window in MimicKit's
Python, under xvfb-run when there is no DISPLAY, and reports the GL renderer it got.
"""

from __future__ import annotations

import ctypes.util
import os
import shutil
import subprocess

from mkd.client.doctor import Check
from mkd.config import DaemonConfig

INSTALL = "apt install xvfb xauth libgl1 libglx-mesa0 libgl1-mesa-dri (Debian/Ubuntu)"
GL_PROBE = r"""
import pyglet
window = pyglet.window.Window(width=64, height=64, visible=False)
from pyglet.gl import gl_info
print("GL renderer:", gl_info.get_renderer(), "| version:", gl_info.get_version_string(), flush=True)
window.close()
"""
PROBE_SECONDS = 60


def display_checks(config: DaemonConfig, env: dict[str, str] | None = None) -> list[Check]:
    env = dict(os.environ if env is None else env) | dict(config.base_env)
    checks: list[Check] = []
    display = env.get("DISPLAY")
    if display:
        checks.append(Check("ok", f"visualize: DISPLAY={display} (xvfb-run not needed)"))
    else:
        missing = [tool for tool in ("xvfb-run", "Xvfb", "xauth") if shutil.which(tool, path=env.get("PATH")) is None]
        if missing:
            checks.append(
                Check(
                    "warn",
                    f"visualize: no DISPLAY and {', '.join(missing)} not found: visualize stages are skipped",
                    INSTALL,
                )
            )
            return checks
        checks.append(Check("ok", "visualize: no DISPLAY; visualize stages run under xvfb-run -a"))
    if ctypes.util.find_library("GL") is None:
        checks.append(Check("warn", 'visualize: no libGL.so.1: pyglet fails with Library "GL" not found', INSTALL))
        return checks
    checks.append(gl_window_check(config.mimickit_python, env, under_xvfb=not display))
    return checks


def gl_window_check(python: str, env: dict[str, str], *, under_xvfb: bool) -> Check:
    """Open a hidden pyglet window the way Newton's viewer does; ok with the renderer's name."""
    argv = [python, "-c", GL_PROBE]
    if under_xvfb:
        argv = ["xvfb-run", "-a", "-s", "-screen 0 1280x1024x24", *argv]
    try:
        done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=PROBE_SECONDS)
    except (OSError, subprocess.TimeoutExpired) as error:
        return Check("warn", f"visualize: could not open a GL window ({error})", INSTALL)
    found = [line for line in done.stdout.splitlines() if line.startswith("GL renderer:")]
    if done.returncode == 0 and found:
        return Check("ok", f"visualize: a GL window opened; {found[-1]}")
    tail = (done.stderr.strip().splitlines() or done.stdout.strip().splitlines() or ["no output"])[-1]
    fix = INSTALL
    if "GLSL" in done.stderr or "shader" in done.stderr.lower():
        fix = "set MESA_GL_VERSION_OVERRIDE=3.3 MESA_GLSL_VERSION_OVERRIDE=330 (the runbook's Mesa overrides)"
    elif "pyglet" in tail and "No module" in tail:
        fix = f"install pyglet into {python} (MimicKit's viewer needs it)"
    return Check("warn", f"visualize: a GL window did not open (rc {done.returncode}): {tail}", fix)
