"""Classify a MimicKit attempt from its exit status and console log into one failure class.

Every log signature lives in `SIGNATURES`, each with its class and where its text came from:
a section of the team's MimicKit notes (mimickit.md, real runs), a real output under
tests/fixtures/mimickit/, the file and line in MimicKit's source (its own config checks,
`MIMICKIT_CHECKS`), or "synthesized" for the runbook's class D texts and NCCL init errors, which
were never provoked for real. The classes follow the runbook's Fallback Ladder (A-D) plus the
failures the real runs showed. A signature may carry its own remedy: what to fix for that text.

`classify` decides for an attempt that ended (or is still running); `scan_live` answers a
narrower question for a running one: do these new lines mean "kill it now", because the real
thing would otherwise hang forever (class A's dead child, class D's abort, a port in use)?
"""

from __future__ import annotations

import math
import re
import signal as signals
from collections.abc import Sequence
from dataclasses import dataclass

from mkd.failures import FailureClass
from mkd.mimickit.console import ConsoleParser, IterationRow
from mkd.mimickit.results import parse_test_result


@dataclass(frozen=True)
class Classification:
    failure: FailureClass
    evidence: tuple[str, ...]  # the log lines that decided it, verbatim
    remedy: str  # one sentence: what the runbook / policy does about it
    permanent: bool  # retrying cannot fix it


@dataclass(frozen=True)
class ExitInfo:
    """How the root process ended: returncode None with a signal = killed; both None = running."""

    returncode: int | None
    signal: int | None


@dataclass(frozen=True)
class Signature:
    failure: FailureClass
    pattern: re.Pattern[str]
    source: str  # where the text was seen, or "synthesized: ..." with what it was written from
    live: bool = False  # in a running attempt it means "kill now": the real thing would hang
    permanent: bool | None = None  # overrides the class's default
    # Lower-case texts every match contains (one of them): a cheap `in` test on a whole chunk
    # of console output before any regex; tests check them against generated matches.
    needles: tuple[str, ...] = ()
    remedy: str | None = None  # overrides the class's remedy: what to fix for this very text
    # A limit of one process (its address space): seen only in a spawned rank's start-up, it is
    # that rank's start-up failure (class A), whatever the signature's own class (see _rank_limit).
    per_process: bool = False


# What to change when a process ran out of address space (the class stays env_mismatch: the same
# limit fails the same way at every attempt, unless it hit only a spawned rank, see _rank_limit).
ADDRESS_SPACE_REMEDY = (
    "Not retried: a process ran out of address space while loading a shared library (ulimit -v, systemd's "
    "LimitAS= or MemoryMax=, a Slurm --mem or cgroup limit): raise or lift that limit, then submit the job again."
)


def _sig(
    failure: FailureClass,
    pattern: str,
    source: str,
    *,
    live: bool = False,
    permanent: bool | None = None,
    needles: tuple[str, ...],
    remedy: str | None = None,
    per_process: bool = False,
) -> Signature:
    # ASCII: console texts are ASCII, and a needle must hold for every match (Unicode case folding
    # would let "ſhader" match "shader").
    compiled = re.compile(pattern, re.ASCII)
    return Signature(
        failure,
        compiled,
        source,
        live=live,
        permanent=permanent,
        needles=needles,
        remedy=remedy,
        per_process=per_process,
    )


_F = FailureClass
_EXC = r"^(?:\[rank\d+\]:\s*)?"  # an exception line, perhaps with torch's rank prefix (mimickit.md §2)


@dataclass(frozen=True)
class MimicKitCheck:
    """One of MimicKit's own checks on its configuration: an `assert ..., "<text>"` or a raise."""

    texts: tuple[str, ...]  # the message's fixed start, as MimicKit writes it (typos included)
    where: str  # file:line in MimicKit (f8d0d70, "cleaning up char_vis_util"), paths under mimickit/
    fix: str  # what the job must change
    exception: str = "AssertionError"
    printed: bool = False  # `assert False, print(text)`: the text is a line of its own, the error bare
    anywhere: bool = False  # the text follows a variable start (`Env 3 Obj 0 DoF 5: <text>`)
    seen: str = ""  # the real run it was seen in (tests/fixtures/mimickit/), if any


# Every check of MimicKit's builders and loaders that a job's arguments or config files can fail,
# found by reading its source ("Unsupported", assert, raise ValueError, NotImplementedError).
# Left out on purpose: "Network parameters desynchronized" (learning/mp_optimizer.py:33, a fault of a
# multi-process run, not of its config), the logger's "Trying to introduce a new key" (util/logger.py:86)
# the recorders' "Unable to create video camera" / "Failed to render image" and Isaac Gym's "Failed to
# create simulator." (run-time failures), torch_util's "letter must be either X, Y or Z." (an internal
# argument), tinymdm's bare NotImplementedError (abstract methods), and asserts without a message.
MIMICKIT_CHECKS: tuple[MimicKitCheck, ...] = (
    MimicKitCheck(
        ("Unsupported net: ",),
        "learning/nets/net_builder.py:10",
        "the agent config's model.actor_net / model.critic_net (or agent_overrides): MimicKit's nets are "
        "the modules of mimickit/learning/nets/",
        seen="cpu_fail_agent_net_unsupported",
    ),
    MimicKitCheck(
        ("Unsupported optimizer type: ",),
        "learning/mp_optimizer.py:58",
        "the agent config's actor_optimizer.type / critic_optimizer.type: SGD or Adam",
        seen="cpu_fail_agent_optimizer_unsupported",
    ),
    MimicKitCheck(
        ("Unsupported agent: ",),
        "learning/agent_builder.py:39",
        "the agent config's agent_name: PPO, AWR, AMP, ASE, ADD, SMP or LCP",
        seen="mimickit.md §6 agent_name PPOX",
    ),
    MimicKitCheck(
        ("Unsupported env: ",),
        "envs/env_builder.py:51",
        "the env config's env_name",
        seen="cpu_fail_env_name_unsupported",
    ),
    MimicKitCheck(
        ("Unsupported engine: ",),
        "engines/engine_builder.py:19",
        "the engine config's engine_name: newton, isaac_gym or isaac_lab",
        printed=True,
        seen="cpu_fail_engine_name_unsupported",
    ),
    MimicKitCheck(("Unsupported mode: ",), "run.py:130", "--mode: train or test", seen="mimickit.md §6 --mode"),
    MimicKitCheck(
        ("Unsupported logger: ",),
        "learning/base_agent.py:207",
        "the job's logger: txt, tb or wandb",
        seen="mimickit.md §6 --logger foo",
    ),
    MimicKitCheck(
        ("Unsupported multiprocessing device ",),
        "util/mp_util.py:29",
        "the job's devices: cpu or cuda:N",
        seen="cpu_2proc_fail_devices_unsupported",
    ),
    MimicKitCheck(("Unsupported simulation device: ",), "engines/isaac_gym_engine.py:724", "the job's devices"),
    MimicKitCheck(
        ("Simulation frequency must be a multiple of the control frequency",),
        "engines/newton_engine.py:317, isaac_gym_engine.py:59, isaac_lab_engine.py:69",
        "the engine config's sim_freq and control_freq",
        seen="cpu_fail_sim_freq_not_multiple",
    ),
    MimicKitCheck(
        ("Unsupported control mode: ",),
        "engines/newton_engine.py:446,870,944, isaac_gym_engine.py:592,686,752, isaac_lab_engine.py:197,757, "
        "envs/char_env.py:143",
        "the engine config's control_mode (one that engine supports)",
    ),
    MimicKitCheck(
        ("pd_explicit only supports 1D joints",),
        "envs/char_env.py:150",
        "the engine config's control_mode or the character",
    ),
    MimicKitCheck(
        ("Unsupported asset format: ", "Unsupported asset format for Isaac Gym: "),
        "engines/newton_engine.py:976, isaac_gym_engine.py:142",
        "the asset files the env config names (.xml, .urdf or .usd)",
    ),
    MimicKitCheck(
        ("Unsupported character file format: ",),
        "envs/char_env.py:105",
        "the env config's char_file (.xml, .urdf or .usd)",
        printed=True,
    ),
    MimicKitCheck(
        (
            "Unsupported joint type",
            "Unsuported hinge joint axis: ",
            "Series joints are not supported",
            "Joint offsets are not supported",
            "Invalid format for a spherical joint",
            "Failed to load USD file: ",
            "Failed to find articulation root",
        ),
        "anim/kin_char_model.py:33,66,87,248, mjcf_char_model.py:127,129,140,165,178,288,348, "
        "urdf_char_model.py:122, usd_char_model.py:19,22,138,154",
        "the character asset the env config's char_file names",
    ),
    MimicKitCheck(
        ("init_std must be > 0 for action normalizer",),
        "learning/base_agent.py:173",
        "the character asset's joint limits (limited=true, non-zero bounds)",
    ),
    MimicKitCheck(
        ("both lower and upper limits are 0.0", "invalid bound detected"),
        "engines/isaac_gym_engine.py:433,437,441",
        "the character asset's joint limits (limited=true, non-zero bounds)",
        exception="ValueError",
        anywhere=True,
    ),
    MimicKitCheck(
        ("Unsupported action space: ", "Unsuppoted action space: "),
        "learning/base_agent.py:113,183, base_model.py:32, dummy_agent.py:38",
        "the agent config or the env config: the agent does not handle this env's action space",
    ),
    MimicKitCheck(
        ("All envs must have the same number of objects", "Cloning requires all objects that share"),
        "engines/newton_engine.py:798, isaac_lab_engine.py:800,841",
        "the env config's objects",
    ),
    MimicKitCheck(
        ("Unsupported obj type: ", "No physics scene found"),
        "engines/isaac_lab_engine.py:872,961,1209",
        "the env config's objects and assets",
    ),
    MimicKitCheck(
        ("URDF export is not yet supported", "USD export is not yet supported"),
        "anim/urdf_char_model.py:79, usd_char_model.py:94",
        "the character file format (only MJCF .xml can be exported)",
    ),
    MimicKitCheck(
        (
            "Missing SMP prior config: ",
            "Missing SMP prior model: ",
            "SMP prior env mismatch for ",
            "SMP prior config mismatch for ",
            "GSI init-state buffer only supports SMP envs",
            "SMP GSI init-state buffer requires ",
        ),
        "learning/smp_agent.py:53,54,99,104,109,140,142,144",
        "the SMP agent config's prior files, or the env config to match the prior",
    ),
    MimicKitCheck(
        ("Unsupported activation function: ", "Unsupported sampler: ", "Unknown architecture: "),
        "learning/tinymdm/activations.py:43, tinymdm_model.py:64,193,228",
        "the SMP prior model's config",
        exception="ValueError",
    ),
    MimicKitCheck(
        ("Failed to load args from: ",),
        "run.py:29, util/arg_parser.py:61",
        "the job's arg_file",
        printed=True,
    ),
    # values MimicKit's own code picks, not a config text (reached only through a config none of its
    # YAMLs uses); still deterministic, so retrying cannot help either
    MimicKitCheck(
        (
            "Unsupported StdType: ",
            "Unsupported agent mode: ",
            "Unsupported camera mode ",
            "Unsupported Tensorboard value type: ",
            "Unsupported WandB value type: ",
            "Unsupported type ",
        ),
        "learning/distribution_gaussian_diag.py:38,49, base_agent.py:123, ppo_agent.py:89, awr_agent.py:88, "
        "ase_agent.py:84, util/camera.py:48, tb_logger.py:64, wandb_logger.py:66, torch_util.py:453,464",
        "the configs against MimicKit's shipped ones (data/): the evidence names the value it cannot handle",
    ),
)


def _check_signature(check: MimicKitCheck) -> Signature:
    texts = "|".join(re.escape(text) for text in check.texts)
    # a printed text is a line of its own, perhaps with torch's rank prefix (the traceback's source line
    # that holds the same text is indented); otherwise the exception line
    start = ".*" if check.anywhere else ""
    pattern = rf"{_EXC}(?:{texts})" if check.printed else rf"{re.escape(check.exception)}: {start}(?:{texts})"
    seen = f"; seen: {check.seen}" if check.seen else ""
    return _sig(
        _F.CONFIG_ERROR,
        pattern,
        f"MimicKit source: mimickit/{check.where}{seen}",
        needles=tuple(text.lower() for text in check.texts),
        remedy=f"Not retried: MimicKit rejected the configuration; fix {check.fix}, then submit the job again.",
    )


_PEER_LOST_SOURCE = "seen: §6.1 / §6.3 a rank outliving its root"

SIGNATURES: tuple[Signature, ...] = (
    # -- runbook class D: stuck after an NCCL abort. Never provoked for real; the texts are the
    #    runbook's ("Abort COMPLETE", "Cuda failure 2 'out of memory'") in NCCL's WARN/INFO format.
    _sig(_F.NCCL_ABORT_HANG, r"Abort COMPLETE", "synthesized: runbook class D", live=True, needles=("abort complete",)),
    _sig(
        _F.NCCL_ABORT_HANG,
        r"NCCL WARN Cuda failure \d+ 'out of memory'",
        "synthesized: runbook class D",
        live=True,
        needles=("nccl warn cuda failure ",),
    ),
    # -- CUDA out of memory: three texts seen on H100 (mimickit.md §6.3), plus torch's own allocator.
    _sig(
        _F.CUDA_OOM,
        r"Failed to allocate \d+ bytes on device",
        "seen: §6.3 row 1, Warp alloc at env build",
        needles=("failed to allocate ",),
    ),
    _sig(
        _F.CUDA_OOM,
        r"Warp CUDA error 2: out of memory",
        "seen: §6.3 rows 1 and 3, Warp's native stderr line",
        needles=("warp cuda error 2: out of memory",),
    ),
    _sig(
        _F.CUDA_OOM,
        r"CUBLAS_STATUS_ALLOC_FAILED",
        "seen: §6.3 row 2, first actor forward",
        needles=("cublas_status_alloc_failed",),
    ),
    _sig(
        _F.CUDA_OOM,
        r"Graph launch error: .*out of memory",
        "seen: §6.3 row 3, mid-run CUDA graph launch",
        needles=("graph launch error: ",),
    ),
    _sig(
        _F.CUDA_OOM,
        r"CUDA out of memory|OutOfMemoryError",
        "not seen: torch's allocator text (§6.3 note)",
        needles=("cuda out of memory", "outofmemoryerror"),
    ),
    _sig(
        _F.CUDA_OOM,
        r"Cuda failure (?:\d+ )?'out of memory'",
        "synthesized: NCCL's last-error line in torch reports",
        needles=("cuda failure ",),
    ),
    # -- runbook class A: a start-up failure of a multi-device run. A spawn child's traceback
    #    starts with "Process Process-N:" and the root then waits for it forever (§6.2, §6.3 class A).
    _sig(
        _F.STARTUP_MULTI_DEVICE,
        r"^Process (?:\w+)?Process-\d+:",
        "seen: §6.2 and §6.3 class A, rank 1",
        live=True,
        needles=("process-",),
    ),
    _sig(
        _F.STARTUP_MULTI_DEVICE,
        r"DistBackendError",
        "synthesized: torch DistBackendError on NCCL init",
        needles=("distbackenderror",),
    ),
    _sig(
        _F.STARTUP_MULTI_DEVICE,
        r"nccl(?:UnhandledCuda|System|Internal|Remote)Error",
        "synthesized: NCCL",
        needles=("ncclunhandledcudaerror", "ncclsystemerror", "ncclinternalerror", "ncclremoteerror"),
    ),
    # -- master_port taken: rank 0 fails, rank 1 joins the other run's store, never exits (§6.2).
    _sig(
        _F.PORT_IN_USE,
        r"EADDRINUSE|address already in use",
        "seen: §6.2 master_port already in use",
        live=True,
        needles=("eaddrinuse", "address already in use"),
    ),
    # -- the GL viewer: headless machine (seen, §1 `visualize`), WSL/Mesa shaders (runbook Stage 3).
    _sig(
        _F.VISUALIZE_GL,
        r"NoSuchDisplayException",
        "seen: §6 no --visualize false",
        permanent=True,
        needles=("nosuchdisplayexception",),
    ),
    # seen on the H100 machine (no libGL there): pyglet's ImportError, re-raised by Newton's viewer
    _sig(
        _F.VISUALIZE_GL,
        r'Library "GL" not found',
        "seen: H100, tests/fixtures/gpu_h100",
        permanent=True,
        needles=('library "gl" not found',),
    ),
    _sig(
        _F.VISUALIZE_GL,
        r"OpenGLRenderer requires pyglet",
        "seen: H100, tests/fixtures/gpu_h100",
        permanent=True,
        needles=("openglrenderer requires pyglet",),
    ),
    # seen on this CPU-only host under Xvfb + Mesa: the GL window opened, then Newton's viewer asked
    # Warp for pinned host memory, which needs a CUDA driver; retrying with Mesa overrides cannot help
    _sig(
        _F.VISUALIZE_GL,
        r"in function wp_alloc_pinned|'CpuPinnedAllocator' object has no attribute 'device'",
        "seen: visualize under xvfb-run + Mesa on a CPU-only host (tests/fixtures/mimickit)",
        permanent=True,
        needles=("wp_alloc_pinned", "'cpupinnedallocator' object has no attribute 'device'"),
        remedy="Not retried: Newton's viewer pins host memory through Warp's CUDA runtime, so the visualize "
        "stage needs a host with an NVIDIA driver: run it on a GPU host, or leave the visualize stage out.",
    ),
    _sig(
        _F.VISUALIZE_GL,
        r"GLSL 1\.50 is not supported",
        "runbook Stage 3 (not run here)",
        needles=("glsl 1.50 is not supported",),
    ),
    _sig(
        _F.VISUALIZE_GL,
        r"(?i:shader ?(?:compil\w*|link\w*) (?:fail|error))|ShaderException",
        "synthesized",
        needles=("shader",),
    ),
    # -- NaN divergence: a loss or return printed as nan in a console table (§6 NaN row).
    _sig(
        _F.NAN_DIVERGENCE,
        r"^\|\s*\w*(?i:loss|return)\w*\s*\|\s*nan\s*\|",
        "seen: §6 NaN divergence",
        live=True,
        needles=("nan",),
    ),
    # -- wrong package versions or builds (§5.1 version failures, §6.2, §6).
    _sig(
        _F.ENV_MISMATCH,
        r"'AttributeNamespace' object has no attribute",
        "seen: §5.1 newton 1.8.0",
        needles=("'attributenamespace' object has no attribute",),
    ),
    _sig(
        _F.ENV_MISMATCH,
        r"module 'warp\.config' has no attribute",
        "seen: §5.1 newton 1.0.0 + warp 1.19.0",
        needles=("module 'warp.config' has no attribute",),
    ),
    _sig(
        _F.ENV_MISMATCH,
        r"doesn't have NCCL built in",
        "seen: §6.2 rank 1 on a CPU-only torch",
        needles=("doesn't have nccl built in",),
    ),
    _sig(
        _F.ENV_MISMATCH,
        r"Torch not compiled with CUDA enabled",
        "seen: §6 default --devices cuda:0 on CPU",
        needles=("torch not compiled with cuda enabled",),
    ),
    _sig(
        _F.ENV_MISMATCH,
        r"Failed to load the shared library .*warp",
        "seen: §6 ulimit -v 1 GB at Warp init",
        needles=("failed to load the shared library ",),
    ),
    # the OSError under that RuntimeError when the cause is memory, not the install: the process's
    # address space (ulimit -v, LimitAS=, a Slurm or cgroup cap) ran out while mapping Warp's library
    _sig(
        _F.ENV_MISMATCH,
        r"failed to map segment from shared object",
        "seen: §6 ulimit -v 1 GB; rank 1 of a 2-process CPU run (tests/fixtures/mimickit)",
        needles=("failed to map segment from shared object",),
        remedy=ADDRESS_SPACE_REMEDY,
        per_process=True,
    ),
    # -- permanent configuration errors: plain tracebacks with rc 1 (§1, §6).
    _sig(
        _F.CONFIG_ERROR,
        _EXC + r"FileNotFoundError: \[Errno 2\]",
        "seen: §6 arg file / env config / motion / model",
        needles=("filenotfounderror: [errno 2]",),
    ),
    _sig(_F.CONFIG_ERROR, _EXC + r"KeyError: ", "seen: §6 agent yaml without a key", needles=("keyerror: ",)),
    *(_check_signature(check) for check in MIMICKIT_CHECKS),
    # an empty arg_file, or an empty env/agent/engine YAML: MimicKit reads None for the config and
    # fails on it (env_builder.py:67 `"engine" in env_config`, agent_builder.py:10, engine_builder.py:7)
    _sig(
        _F.CONFIG_ERROR,
        _EXC + r"TypeError: .*'NoneType'",
        "seen: cpu_fail_empty_arg_file, cpu_fail_empty_env_config, cpu_fail_empty_agent_config",
        needles=("nonetype",),
        remedy="Not retried: MimicKit read an empty configuration: the arg_file is empty, or an env, engine or "
        "agent config is empty or not given; fill it in, then submit the job again.",
    ),
    # python's own message when there is no MimicKit checkout where the job runs
    _sig(
        _F.CONFIG_ERROR,
        r"can't open file '[^']*run\.py': \[Errno \d+\]",
        "seen: cpu_fail_no_checkout_run_py (python itself, before MimicKit)",
        needles=("can't open file ",),
        remedy="Not retried: there is no MimicKit checkout (mimickit/run.py) where the job runs; check "
        "`mimickit_dir` in the job and the daemon config and run `mkd doctor`, then submit the job again.",
    ),
    _sig(
        _F.CONFIG_ERROR,
        r"ValueError: invalid literal for int\(\)",
        "seen: §6 --num_envs four",
        needles=("valueerror: invalid literal for int()",),
    ),
    _sig(
        _F.CONFIG_ERROR,
        _EXC + r"IndexError: list index out of range",
        "seen: §6 bare --visualize",
        needles=("indexerror: list index out of range",),
    ),
    # -- ended by a signal: evidence only, never a cause on its own (§6.1).
    _sig(
        _F.KILLED,
        _EXC + r"KeyboardInterrupt\s*$",
        "seen: §6.1 SIGINT at default disposition",
        needles=("keyboardinterrupt",),
    ),
    # -- a rank whose root (the TCPStore's host) or peer died: NCCL's heartbeat warns every second and
    #    the rank lives on at 100 % GPU (§6.1 GPU SIGKILL, §6.3 SIGTERM to the root); gloo raises (§6.1).
    _sig(
        _F.PEER_LOST,
        r"TCPStore server has shut down too early",
        _PEER_LOST_SOURCE + ", gpu_h100_2gpu_kill9_root",
        needles=("tcpstore server has shut down too early",),
    ),
    _sig(
        _F.PEER_LOST,
        r"(?:sendBytes|recvValue) failed on SocketImpl\(.*(?:Broken pipe|Connection was likely closed)",
        _PEER_LOST_SOURCE + ", gpu_h100_2gpu_kill9_root",
        needles=("failed on socketimpl(",),
    ),
    _sig(
        _F.PEER_LOST,
        r"Connection closed by peer|Connection reset by peer",
        "seen: §6.1 gloo, cpu_2proc_sigTERM_root_only (rank 1), cpu_2proc_fail_rank1_sigkill (the root)",
        needles=("connection closed by peer", "connection reset by peer"),
    ),
    # -- a multi-process root's own traceback: it then hangs joining its children (§6.1 SIGINT to root).
    _sig(
        _F.UNKNOWN,
        r"^\[rank0\]: Traceback \(most recent call last\)",
        "seen: §6.1 root-only SIGINT",
        live=True,
        needles=("[rank0]: traceback (most recent call last)",),
    ),
)

# When several classes match, the first one here names the cause (most specific first). A lost
# peer comes last: it is what the other ranks print after the real cause killed one of them.
CAUSE_ORDER: tuple[FailureClass, ...] = (
    _F.NCCL_ABORT_HANG,
    _F.ENV_MISMATCH,
    _F.CONFIG_ERROR,
    _F.PORT_IN_USE,
    _F.VISUALIZE_GL,
    _F.CUDA_OOM,
    _F.STARTUP_MULTI_DEVICE,
    _F.NAN_DIVERGENCE,
    _F.PEER_LOST,
)

# One sentence per class: what mkd's default policy (mkd.policy.DEFAULT_STEPS, retry.max_attempts 4,
# retry.max_no_progress 3) does about it, then what a person can do. tests/test_classify.py checks
# each text against the policy's row, so a text cannot promise a retry that never comes.
_AGAIN = "up to 4 attempts in all (retry.max_attempts), fewer when 3 in a row make no progress (retry.max_no_progress)"
REMEDIES: dict[FailureClass, str] = {
    _F.STARTUP_MULTI_DEVICE: "mkd kills the process group and retries with one change each time: the NCCL preset, "
    "then a lower num_envs down the ladder, then a single device (runbook class A).",
    _F.WARMUP_OUTPUTS_MISSING: "mkd re-runs the warm-up with a lower num_envs (runbook class B); check the console "
    "tail and that out_dir is writable.",
    _F.LONG_RUN_EXITED: "mkd resumes the long run from its last model.pt with one change: a lower num_envs, then a "
    "single device (runbook class C).",
    _F.NCCL_ABORT_HANG: "mkd kills the process group without waiting for it to exit and retries at the next lower "
    "num_envs of the ladder, then on a single device (runbook class D).",
    _F.CUDA_OOM: "mkd retries with a lower num_envs, then on a single device; when other processes hold memory on "
    "that GPU it retries unchanged when that memory is free.",
    _F.PORT_IN_USE: "mkd kills the process group and runs it again on a new free master_port, " + _AGAIN + ".",
    _F.VISUALIZE_GL: "mkd retries once with MESA_GL_VERSION_OVERRIDE=3.3 and MESA_GLSL_VERSION_OVERRIDE=330; "
    "if that fails too, run headless with --visualize false.",
    _F.NAN_DIVERGENCE: "Not retried: the run diverged to NaN and will not recover; give it more envs or a lower "
    "learning rate, then submit the job again.",
    _F.ENV_MISMATCH: "Not retried: fix the Python environment (newton 1.0.0 with warp-lang 1.12.1, a CUDA build "
    "of torch), then submit the job again.",
    _F.CONFIG_ERROR: "Not retried: fix the job's arguments or config files, then submit the job again.",
    _F.STALL: "mkd killed the process group (no new iteration within the stall or start-up timeout) and runs it "
    "again unchanged, " + _AGAIN + ".",
    _F.TIMEOUT: "mkd killed the process group (the stage ran past its time limit) and runs it again unchanged, "
    + _AGAIN
    + ".",
    _F.CANCELLED: "Not retried: the attempt was cancelled on request.",
    _F.PAUSED: "Not retried: the job was paused on request and is held; `mkd resume` goes on from its last model.pt.",
    _F.KILLED: "Something outside mkd (e.g. the kernel's OOM killer) killed the run, check dmesg; mkd runs it "
    "again unchanged, " + _AGAIN + ".",
    _F.PEER_LOST: "A rank lost its root or a peer (another rank or the TCPStore's host died); a survivor fails or "
    "lingers at 100 % GPU, so mkd kills the whole process group and runs it again unchanged, " + _AGAIN + ".",
    _F.MKD_ERROR: "Not retried: mkd itself failed while judging the attempt; the evidence names the error, report it.",
    _F.LOST: "The shim died without recording how the run ended (mkd killed what was left of its group); mkd "
    "runs it again unchanged, " + _AGAIN + ".",
    _F.SLURM_NODE_FAIL: "Slurm lost the node (NODE_FAIL, BOOT_FAIL): mkd submits a new job and runs it again "
    "unchanged (a long run resumes from its last model.pt), " + _AGAIN + ".",
    _F.SLURM_PREEMPTED: "A job of higher priority preempted it: mkd submits a new job and runs it again unchanged "
    "(a long run resumes from its last model.pt), " + _AGAIN + ".",
    _F.SLURM_TIMEOUT: "The job reached its Slurm time limit: mkd submits a new job and runs it again unchanged (a "
    "long run resumes from its last model.pt), " + _AGAIN + "; or raise [executor] time_limit.",
    _F.SLURM_OOM: "Slurm killed the job at its host memory limit: mkd retries with a lower num_envs; or ask for "
    'more memory (sbatch_args = ["--mem=..."]).',
    _F.SLURM_SUBMIT_REFUSED: "sbatch refused the job (a controller away for a restart, or a bad partition, account "
    "or qos): mkd runs it again unchanged, " + _AGAIN + "; run `mkd doctor` and check [executor].",
    _F.UNKNOWN: "No known signature: read the evidence; mkd runs it again unchanged, " + _AGAIN + ".",
}

PERMANENT: frozenset[FailureClass] = frozenset(
    {_F.CONFIG_ERROR, _F.ENV_MISMATCH, _F.CANCELLED, _F.PAUSED, _F.NAN_DIVERGENCE, _F.MKD_ERROR}
)
STAGE_KINDS: tuple[str, ...] = ("train", "warmup", "long_run", "test", "visualize", "probe")
_TRAINING_STAGES = frozenset({"train", "warmup", "long_run", "probe"})
_STOP_REASONS = frozenset({_F.STALL, _F.TIMEOUT, _F.CANCELLED})
# Shells and `timeout` report death by signal N as 128 + N (mimickit.md §0: 143 SIGTERM, 137 SIGKILL).
_SHELL_SIGNALS = frozenset(
    {signals.SIGHUP, signals.SIGINT, signals.SIGQUIT, signals.SIGABRT, signals.SIGKILL, signals.SIGTERM}
)
_TIMEOUT_RC = 124  # the runbook wraps probes in `timeout`, which exits 124 when its limit hits
_MAX_EVIDENCE = 8
# Classes whose evidence is the log's tail (where it stopped), not signature matches.
_TAIL_EVIDENCE = frozenset({_F.UNKNOWN, _F.LONG_RUN_EXITED})
_LINE_END = re.compile(r"\r\n|\r|\n")


@dataclass(frozen=True)
class _Hit:
    index: int
    line: str
    signature: Signature


def row_has_nan(row: IterationRow) -> bool:
    """Whether a console table shows a loss or a return as NaN (MimicKit keeps running regardless)."""
    for key in row.values:
        value = row.get(key)
        if value is not None and math.isnan(value) and ("loss" in key.lower() or "return" in key.lower()):
            return True
    return False


def split_lines(text: str) -> list[str]:
    """Console text as lines; `\\r` ends a line too (progress lines and log.txt rows use it)."""
    return _LINE_END.split(text)


def scan_live(new_lines: list[str]) -> Classification | None:
    """For an attempt still running: a provisional class if these lines mean "kill it now", else None.

    Classify the whole log again after the kill; that answer is the final one.
    """
    hits = _hits(new_lines)
    if not any(hit.signature.live for hit in hits):
        return None
    cause = _cause(hits, multi_device=True, startup_end=len(new_lines))
    if cause is not None:
        return cause
    return _make(_F.UNKNOWN, [hit.line for hit in hits if hit.signature.live])


def classify(
    log_text: str,
    exit: ExitInfo | None,
    *,
    multi_device: bool = False,
    stage_kind: str = "train",
    outputs_missing: bool = False,
    had_progress: bool = False,
    stop_reason: FailureClass | None = None,
) -> Classification | None:
    """The failure class of an attempt, or None when nothing looks wrong.

    `stop_reason` is STALL, TIMEOUT or CANCELLED when mkd itself stopped the attempt. A failure
    signature in the log (class A or D, a port in use, NaN, a root's config error...) still wins
    over STALL and TIMEOUT, since it says why the run stopped making progress; CANCELLED always
    wins. Exit statuses -N and 128+N (a shell's way) mean death by signal N.
    """
    if stage_kind not in STAGE_KINDS:
        raise ValueError(f"unknown stage kind {stage_kind!r}; expected one of {', '.join(STAGE_KINDS)}")
    if stop_reason is not None and stop_reason not in _STOP_REASONS:
        raise ValueError(f"stop_reason must be stall, timeout or cancelled, not {stop_reason}")
    lines = split_lines(log_text)
    hits = _hits(lines)
    startup_end = 0 if had_progress else _first_table_end(lines)
    cause = _cause(hits, multi_device=multi_device, startup_end=startup_end)
    state, code = _decode(exit)
    if state == "running":
        return cause
    if stop_reason is _F.CANCELLED:
        return _make(_F.CANCELLED, _tail(lines, 5))
    if state == "exit" and code == 0:
        if cause is not None and cause.failure is _F.NAN_DIVERGENCE:
            return cause
        return _clean_exit(lines, stage_kind, outputs_missing)
    if cause is not None and cause.failure is _F.PEER_LOST and not _root_lost_a_peer(cause):
        # only the other ranks lost their peer: the root ended first, and how it ended is the cause
        cause = None
    if cause is not None:
        return cause
    if state == "signal" or code == _TIMEOUT_RC:
        return _ended_by_signal(lines, hits, stop_reason, code if state == "signal" else None)
    if stop_reason is not None:
        return _make(stop_reason, _tail(lines, 5))
    if stage_kind == "long_run" and (had_progress or startup_end < len(lines)):
        return _make(_F.LONG_RUN_EXITED, _tail(lines, 20))
    return _make(_F.UNKNOWN, _tail(lines, 20))


def _root_lost_a_peer(found: Classification) -> bool:
    """Whether the root itself printed a lost-peer error (torch prefixes rank 0's lines once the
    group exists, §2); the other ranks' lines ("[rank1]:", or a spawn child's bare traceback) only
    say that the root was gone first."""
    return any(line.startswith("[rank0]:") for line in found.evidence)


def _ended_by_signal(
    lines: list[str], hits: list[_Hit], stop_reason: FailureClass | None, signum: int | None
) -> Classification:
    if stop_reason is not None:
        return _make(stop_reason, _tail(lines, 5))
    if signum is None:  # exit status 124: the `timeout` wrapper of a runbook command
        return _make(_F.TIMEOUT, _tail(lines, 5))
    killed = [hit.line for hit in hits if hit.signature.failure in (_F.KILLED, _F.PEER_LOST)]
    return _make(_F.KILLED, killed or _tail(lines, 5))


def _clean_exit(lines: list[str], stage_kind: str, outputs_missing: bool) -> Classification | None:
    if outputs_missing and stage_kind in _TRAINING_STAGES:
        return _make(_F.WARMUP_OUTPUTS_MISSING, _tail(lines, 5))
    if stage_kind in ("test", "visualize") and parse_test_result("\n".join(lines[-200:])) is None:
        return _make(_F.UNKNOWN, _tail(lines, 5))  # exit 0, but the pass condition's line never came
    return None


def _decode(exit: ExitInfo | None) -> tuple[str, int | None]:
    """("running", None), ("signal", N) or ("exit", rc); -N and 128+N mean death by signal N."""
    if exit is None or (exit.returncode is None and exit.signal is None):
        return "running", None
    if exit.signal is not None:
        return "signal", exit.signal
    rc = exit.returncode
    assert rc is not None
    if rc < 0:
        return "signal", -rc
    if rc - 128 in _SHELL_SIGNALS:
        return "signal", rc - 128
    return "exit", rc


_NEEDLES = tuple(sorted({needle for signature in SIGNATURES for needle in signature.needles}))


def _hits(lines: Sequence[str]) -> list[_Hit]:
    """Signature matches, line by line; only the signatures whose needle is in the text are tried
    (nearly every chunk of a console is a progress table that holds none)."""
    lowered = "\n".join(lines).lower()
    present = {needle for needle in _NEEDLES if needle in lowered}
    if not present:
        return []
    candidates = [sig for sig in SIGNATURES if not present.isdisjoint(sig.needles)]
    hits = []
    for index, line in enumerate(lines):
        low = line.lower()
        for signature in candidates:
            if any(needle in low for needle in signature.needles) and signature.pattern.search(line):
                hits.append(_Hit(index, line, signature))
    return hits


def _first_table_end(lines: Sequence[str]) -> int:
    """Index of the line that completes the first console table; len(lines) if there is none."""
    parser = ConsoleParser()
    for index, line in enumerate(lines):
        if parser.feed(line + "\n"):
            return index
    return len(lines)


def _cause(hits: list[_Hit], *, multi_device: bool, startup_end: int) -> Classification | None:
    """The most specific class among the hits, with class A decided by position and device count."""
    by_class: dict[FailureClass, list[_Hit]] = {}
    for hit in hits:
        by_class.setdefault(hit.signature.failure, []).append(hit)
    children = [hit for hit in by_class.get(_F.STARTUP_MULTI_DEVICE, []) if hit.index < startup_end]
    rank_limit = _rank_limit(by_class.get(_F.ENV_MISMATCH, []), children, multi_device=multi_device)
    if rank_limit:
        return _make(_F.STARTUP_MULTI_DEVICE, [hit.line for hit in sorted(children + rank_limit, key=_index)])
    for failure in CAUSE_ORDER:
        found = by_class.get(failure, [])
        if failure is _F.STARTUP_MULTI_DEVICE:
            found = children
        if not found:
            continue
        if failure is _F.CUDA_OOM and (multi_device or children) and found[0].index < startup_end:
            return _make(_F.STARTUP_MULTI_DEVICE, [hit.line for hit in sorted(children + found, key=_index)])
        permanent = any(hit.signature.permanent for hit in found) or None
        remedy = next((hit.signature.remedy for hit in found if hit.signature.remedy), None)
        return _make(failure, [hit.line for hit in found], permanent, remedy)
    return None


def _rank_limit(env_hits: list[_Hit], children: list[_Hit], *, multi_device: bool) -> list[_Hit]:
    """A memory limit hit inside a spawned rank's start-up traceback: every environment hit comes
    after a child's `Process Process-N:` and one of them is a per-process limit. The install is
    fine (the root loaded the same library); class A's ladder (fewer envs, then one device) is the way
    on, not a permanent failure."""
    if not (multi_device and children and env_hits):
        return []
    first_child = min(hit.index for hit in children)
    if any(hit.index < first_child for hit in env_hits):
        return []
    if not any(hit.signature.per_process for hit in env_hits):
        return []
    return env_hits


def _index(hit: _Hit) -> int:
    return hit.index


def _make(
    failure: FailureClass, lines: Sequence[str], permanent: bool | None = None, remedy: str | None = None
) -> Classification:
    """Evidence keeps each distinct line once, in log order: at most 8 matched lines, or a whole tail."""
    distinct = tuple(dict.fromkeys(line for line in lines if line.strip()))
    evidence = distinct if failure in _TAIL_EVIDENCE else distinct[:_MAX_EVIDENCE]
    return Classification(
        failure=failure,
        evidence=evidence,
        remedy=remedy or REMEDIES[failure],
        permanent=failure in PERMANENT if permanent is None else permanent,
    )


def _tail(lines: Sequence[str], count: int) -> list[str]:
    return [line for line in lines if line.strip()][-count:]
