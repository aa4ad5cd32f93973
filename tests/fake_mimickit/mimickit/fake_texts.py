"""The texts the fake prints, each marked as seen in a real run (mimickit.md section) or synthesized.

Exception classes carry the real module names so that Python's own traceback prints them
as the real run does (e.g. `torch.distributed.DistNetworkError: ...`).
"""

from __future__ import annotations

import os
import socket
import time

WARP_VERSION = "1.12.1"


class DistNetworkError(RuntimeError):
    """Seen: §6.2, rank 0 when master_port is taken."""

    __module__ = "torch.distributed"


class DistBackendError(RuntimeError):
    """Synthesized: torch's NCCL init error (format of torch's DistBackendError reports)."""

    __module__ = "torch.distributed"


class ShaderException(Exception):
    """Synthesized: pyglet's shader error; the runbook only quotes `GLSL 1.50 is not supported`."""

    __module__ = "pyglet.graphics.shader"


class NoSuchDisplayException(Exception):
    """Seen: §1 `visualize`, §6 (headless machine without --visualize false)."""

    __module__ = "pyglet.display.xlib"


def warp_banner(devices: list[str]) -> str:
    """Seen: §3.2 (GPU) and the CPU fixtures' banner."""
    cuda = sorted({device for device in devices if device.startswith("cuda")})
    if not cuda:
        return (
            "Warp CUDA warning: Could not find or load the NVIDIA CUDA driver. GPU execution will not be available.\n"
            f"Warp {WARP_VERSION} initialized:\n"
            "   CUDA Toolkit 12.9, CUDA driver not available (NVRTC compilation available)\n"
            "   Devices:\n"
            '     "cpu"      : "CPU"\n'
            "   Kernel cache:\n"
            f"     ~/.cache/warp/{WARP_VERSION}"
        )
    lines = [f"Warp {WARP_VERSION} initialized:", "   CUDA Toolkit 12.9, Driver 13.0", "   Devices:"]
    lines.append('     "cpu"      : "x86_64"')
    for device in cuda:
        name = f'"{device}"'
        lines.append(f'     {name:<10} : "NVIDIA H100 80GB HBM3" (79 GiB, sm_90, mempool enabled)')
    lines += ["   Kernel cache:", f"     ~/.cache/warp/{WARP_VERSION}"]
    return "\n".join(lines)


def module_lines(device: str) -> str:
    """Seen: §3.2, one line per Warp module (a few of the 35)."""
    modules = (
        "validate_and_correct_inertia_kernel_24b63428 3ec1a31",
        "newton._src.sim.articulation bbc6165",
        "newton._src.solvers.mujoco.kernels c736c54",
        "mujoco_warp._src.smooth 72e1290",
    )
    return "\n".join(f"Module {module} load on device '{device}' took 0.42 ms  (cached)" for module in modules)


# Seen: §6.3 row 1 (native stderr line before the traceback) and row 3.
WARP_ALLOC_OOM = (
    "Warp CUDA error 2: out of memory (in function wp_alloc_device_async, "
    "/builds/omniverse/warp/warp/native/warp.cu:755)"
)
WARP_GRAPH_OOM = (
    "Warp CUDA error 2: out of memory (in function wp_cuda_graph_launch, "
    "/builds/omniverse/warp/warp/native/warp.cu:3659)"
)


def alloc_failed(num_envs: int, device: str) -> str:
    """Seen: §6.3 row 1; Newton's contact buffer is num_envs x 700 contacts x 12 bytes (34406400 at 4096)."""
    return f"Failed to allocate {num_envs * 700 * 12} bytes on device '{device}'"


# Seen: §6.3 row 2, torch/cuBLAS at the first actor forward.
CUBLAS_ALLOC_FAILED = "CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`"

# Seen: §5.1, newton 1.8.0.
NEWTON_MISMATCH = "'AttributeNamespace' object has no attribute 'dof_passive_damping'"


def port_in_use(port: int) -> str:
    """Seen: §6.2."""
    return (
        "The server socket has failed to listen on any local network address. "
        f"port: {port}, useIpv6: false, code: -98, name: EADDRINUSE, message: address already in use"
    )


# Synthesized from torch's DistBackendError reports for ncclUnhandledCudaError (never provoked here).
NCCL_INIT_FAILED = (
    "NCCL error in: /pytorch/torch/csrc/distributed/c10d/NCCLUtils.cpp:77, unhandled cuda error "
    "(run with NCCL_DEBUG=INFO for details), NCCL version 2.28.9\n"
    "ncclUnhandledCudaError: Call to CUDA function failed.\n"
    "Last error:\n"
    "Cuda failure 'out of memory'"
)


def nccl_abort_lines(nranks: int) -> str:
    """Synthesized: the runbook's class D texts ("Cuda failure 2 'out of memory'", "Abort COMPLETE")
    in NCCL's `host:pid:tid [dev] ... NCCL WARN/INFO` format and torch's `[rank0]:` prefix."""
    who = f"{socket.gethostname()}:{os.getpid()}:{os.getpid() + 17}"
    return (
        f"{who} [0] include/alloc.h:125 NCCL WARN Cuda failure 2 'out of memory'\n"
        f"{who} [0] NCCL INFO comm 0x55d0c8a0e2b0 rank 0 nranks {nranks} cudaDev 0 busId 6000 - Abort COMPLETE\n"
        f"[rank0]:[E{_stamp()} ProcessGroupNCCL.cpp:1895] [PG ID 0 PG GUID 0(default_pg) Rank 0] "
        "ProcessGroupNCCL aborted communicators after an NCCL error - Abort COMPLETE"
    )


# Seen: §6.1, rank 1 of a CPU (gloo) run after its root died (the real text ends with an emoji).
GLOO_PEER_CLOSED = (
    "[/__w/pytorch/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:553] Connection closed by peer "
    "[127.0.0.1]:11664. This is typically caused by a remote worker crashing. Check the logs of the "
    "remote worker before reporting an error. GLHF!"
)


def orphan_first_warning(rank: int, port: int) -> str:
    """Seen: §6.3 (SIGTERM to the root only), a GPU rank's first line once its root is gone (frames left out)."""
    return (
        f"[rank{rank}]:[W{_stamp()} TCPStore.cpp:125] [c10d] recvValue failed on SocketImpl(fd=7, "
        f"addr=[localhost]:55150, remote=[localhost]:{port}): Failed to recv, got 0 bytes. Connection was likely "
        "closed. Did the remote server shutdown or crash?"
    )


def orphan_warnings(rank: int, port: int) -> str:
    """Seen: §6.1 / §6.3, printed every second by a GPU rank whose root is gone (frames left out)."""
    return (
        f"[rank{rank}]:[W{_stamp()} TCPStore.cpp:106] [c10d] sendBytes failed on SocketImpl(fd=7, "
        f"addr=[localhost]:36738, remote=[localhost]:{port}): Broken pipe\n"
        f"[rank{rank}]:[W{_stamp()} ProcessGroupNCCL.cpp:1826] [PG ID 0 PG GUID 0(default_pg) Rank {rank}] "
        'Failed to check the "should dump" flag on TCPStore, (maybe TCPStore server has shut down too early), '
        "with error: Broken pipe"
    )


def destroy_warning() -> str:
    """Seen: §3.2, after the last table of a successful NCCL run."""
    return (
        f"[rank0]:[W{_stamp()} ProcessGroupNCCL.cpp:1575] Warning: WARNING: destroy_process_group() was not "
        "called before program exit, which can leak resources. For more info, please see "
        "https://pytorch.org/docs/stable/distributed.html#shutdown (function operator())"
    )


# Synthesized: Mesa's message inside pyglet's shader error (runbook Stage 3 quotes only its core).
GLSL_ERROR = (
    "Shader compilation failed.\n"
    "0:1(10): error: GLSL 1.50 is not supported. Supported versions are: 1.10, 1.20, 1.30, 1.00 ES, "
    "3.00 ES, 3.10 ES, and 3.20 ES"
)

# Seen: §6 (headless machine).
NO_DISPLAY = 'Cannot connect to "None"'


def _stamp() -> str:
    now = time.time()
    return time.strftime("%m%d %H:%M:%S", time.localtime(now)) + f".{int(now % 1 * 1e9):09d}"
