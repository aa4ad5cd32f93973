"""Test helpers for GPU code: the fake libnvidia-ml and samplers in subprocesses.

pynvml loads libnvidia-ml.so.1 once per process (CDLL on first nvmlInit), and
the dynamic loader reads LD_LIBRARY_PATH only at process start, so every test
that talks to the fake NVML runs the sampler in a child Python process with
LD_LIBRARY_PATH and FAKE_NVML_* set (see tests/fake_nvml/fake_nvml.c for the
variables).  A SamplerProcess stays up between samples, so a test can change
the fake GPUs through FAKE_NVML_STATE_FILE and see one sampler follow.

A plain module, not a conftest: tests import what they use.
"""

from __future__ import annotations

import json
import os
import selectors
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from types import TracebackType

from mkd.gpus import GpuReading, reading_from_dict

REPO = Path(__file__).resolve().parent.parent
BUILD_SH = REPO / "tests" / "fake_nvml" / "build.sh"
FAKE_NVML_DIR = REPO / "build" / "fake-nvml"

_build_lock = threading.Lock()
_built: Path | None = None

# The child: one GpuSampler for its whole life; a line "sample" on stdin
# prints the reading as one JSON line; end of input closes the sampler.
_SAMPLER_CHILD = """
import json, sys
from mkd.gpus import GpuSampler, reading_to_dict
with GpuSampler(retry_init_seconds=float(sys.argv[1])) as sampler:
    for line in sys.stdin:
        if line.strip() == "sample":
            print(json.dumps(reading_to_dict(sampler.sample())), flush=True)
"""


def build_fake_nvml() -> Path:
    """Builds the fake (once per test process) and returns the directory that
    holds libnvidia-ml.so.1, for LD_LIBRARY_PATH."""
    global _built
    with _build_lock:
        if _built is None:
            done = subprocess.run(
                ["sh", str(BUILD_SH), str(FAKE_NVML_DIR)], capture_output=True, text=True, check=False
            )
            if done.returncode != 0:
                raise RuntimeError(f"building the fake NVML failed:\n{done.stdout}{done.stderr}")
            _built = FAKE_NVML_DIR
        return _built


def nvml_env(lib_dir: Path | None, fake: Mapping[str, object] | None = None) -> dict[str, str]:
    """This process's environment without any NVML settings, plus LD_LIBRARY_PATH=lib_dir
    (none: no NVML library at all) and FAKE_NVML_<key>=<value> for each item of fake."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FAKE_NVML_") and k != "LD_LIBRARY_PATH"}
    if lib_dir is not None:
        env["LD_LIBRARY_PATH"] = str(lib_dir)
    for key, value in (fake or {}).items():
        env[key if key.startswith("FAKE_NVML_") else f"FAKE_NVML_{key}"] = str(value)
    return env


def real_nvml_present() -> bool:
    """True if this machine has a libnvidia-ml the loader finds without help
    (then "library not found" cannot be tested here)."""
    probe = "import ctypes\ntry:\n ctypes.CDLL('libnvidia-ml.so.1')\nexcept OSError:\n raise SystemExit(1)"
    done = subprocess.run([sys.executable, "-c", probe], env=nvml_env(None), check=False)
    return done.returncode == 0


def run_python(code: str, env: Mapping[str, str], timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    """Runs a Python snippet in a child with env; raises with its output if it fails."""
    done = subprocess.run(
        [sys.executable, "-c", code], env=dict(env), cwd=REPO, capture_output=True, text=True, timeout=timeout
    )
    if done.returncode != 0:
        raise AssertionError(f"child failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return done


class SamplerProcess:
    """A child process holding one GpuSampler; sample() asks it for a reading."""

    def __init__(self, env: Mapping[str, str], retry_init_seconds: float = 0.0) -> None:
        self._proc = subprocess.Popen(
            [sys.executable, "-c", _SAMPLER_CHILD, str(retry_init_seconds)],
            env=dict(env),
            cwd=REPO,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def sample(self, timeout: float = 30.0) -> GpuReading:
        assert self._proc.stdin is not None and self._proc.stdout is not None
        self._proc.stdin.write("sample\n")
        self._proc.stdin.flush()
        with selectors.DefaultSelector() as sel:
            sel.register(self._proc.stdout, selectors.EVENT_READ)
            if not sel.select(timeout):
                raise AssertionError(f"sampler child gave no reading within {timeout} s")
        line = self._proc.stdout.readline()
        if not line:
            raise AssertionError(f"sampler child ended:\n{self._stderr()}")
        return reading_from_dict(json.loads(line))

    def close(self, timeout: float = 10.0) -> None:
        if self._proc.stdin is not None and not self._proc.stdin.closed:
            self._proc.stdin.close()  # end of input: the child closes its sampler and exits
        try:
            rc = self._proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
            raise AssertionError("sampler child did not exit at end of input") from None
        finally:
            for stream in (self._proc.stdout, self._proc.stderr):
                if stream is not None:
                    stream.close()
        if rc != 0:
            raise AssertionError(f"sampler child exited {rc}")

    def _stderr(self) -> str:
        self._proc.wait(10)
        return self._proc.stderr.read() if self._proc.stderr is not None else ""

    def __enter__(self) -> SamplerProcess:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()


def sample_once(env: Mapping[str, str]) -> GpuReading:
    """One reading from a fresh sampler in a child process."""
    with SamplerProcess(env) as sampler:
        return sampler.sample()


def write_state_file(path: Path, values: Mapping[str, object]) -> None:
    """Replaces the fake's state file atomically: FAKE_NVML_<key>=<value> lines."""
    lines = [f"{k if k.startswith('FAKE_NVML_') else 'FAKE_NVML_' + k}={v}\n" for k, v in values.items()]
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(lines))
    os.replace(tmp, path)


def wait_for(predicate: Callable[[], object], timeout: float, what: str, interval: float = 0.01) -> None:
    """Polls predicate until it is true; fails with `what` after timeout seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)
