"""One rank of the fake run: start-up, env and agent build, then training or testing on rank 0.

Ranks 1..N-1 (spawn children) print what every rank prints (master port, seed, Warp banner),
build their env quietly, meet rank 0 at the first collective, then wait for the root to finish.
A child that dies before that collective leaves rank 0 waiting forever (§6.3 class A).
"""

from __future__ import annotations

import math
import multiprocessing
import os
import shutil
import signal
import sys
import time
import traceback
from dataclasses import dataclass
from typing import Any

import fake_configs as configs
import fake_texts as texts
from fake_args import ArgTable
from fake_faults import Faults
from fake_output import LogTxt, Metrics, format_table
from fake_sync import Store, StoreClient

FOREVER = 3600.0


@dataclass(frozen=True)
class Rank:
    rank: int
    devices: list[str]
    master_port: int
    args: ArgTable
    faults: Faults

    @property
    def device(self) -> str:
        return self.devices[self.rank]

    @property
    def procs(self) -> int:
        return len(self.devices)

    @property
    def failing_rank(self) -> int:
        """The rank that a one-rank fault hits: rank 1 in a multi-device run, as in §6.3 class A."""
        return 1 if self.procs > 1 else 0


def seconds(name: str, default: float) -> float:
    return float(os.environ.get(name, default))


def sleep_forever() -> None:
    """Alive and silent (the real root in class A spins a CPU; sleeping is kinder to test machines)."""
    while True:
        time.sleep(FOREVER)


def run_rank(ctx: Rank) -> None:
    args = ctx.args
    if ctx.procs > 1:
        print(f"Using master port: {ctx.master_port}")
    num_envs = args.parse_int("num_envs", 1)
    visualize = args.parse_bool("visualize", True)
    _init_process_group(ctx)
    seed = args.parse_int("rand_seed", int(time.time() * 256)) + 41 * ctx.rank
    print(f"Setting seed: {seed}")
    time.sleep(seconds("FAKE_MK_STARTUP_SECONDS", 0.1) / 2)
    _build_env(ctx, num_envs, visualize)
    agent = _build_agent(ctx)
    time.sleep(seconds("FAKE_MK_STARTUP_SECONDS", 0.1) / 2)
    _first_collective(ctx)
    if ctx.rank != 0:
        _wait_for_root(ctx)
        return
    out_dir = args.parse_str("out_dir", "output/")
    os.makedirs(out_dir, exist_ok=True)
    mode = args.parse_str("mode", "train")
    if mode not in ("train", "test"):
        raise AssertionError(f"Unsupported mode: {mode}")
    model_file = args.parse_str("model_file", "")
    if model_file:
        with open(model_file, "rb"):
            pass
        print(f"Loaded model parameters from {model_file}")
    if mode == "train":
        _train(ctx, agent, num_envs, out_dir, seed)
    else:
        _test(ctx, num_envs, seed)
    _release_ranks()


def _init_process_group(ctx: Rank) -> None:
    """Rank 0 hosts the store on master_port; the rank a fault picks may fail NCCL's init."""
    if ctx.procs == 1:
        return
    configs.check_mp_device(ctx.device)
    if ctx.rank == 0:
        if ctx.faults.has("port_in_use"):
            raise texts.DistNetworkError(texts.port_in_use(ctx.master_port))
        try:
            _STORE.append(Store(ctx.master_port))
        except OSError as exc:
            raise texts.DistNetworkError(texts.port_in_use(ctx.master_port)) from exc
        sys.excepthook = _rank0_excepthook  # torch prefixes rank 0's lines once the group exists (§2)
    elif ctx.rank == ctx.failing_rank and ctx.faults.has("nccl_init"):
        raise texts.DistBackendError(texts.NCCL_INIT_FAILED)


_STORE: list[Store] = []  # rank 0's store, alive for the whole run


def _rank0_excepthook(exc_type: type[BaseException], exc: BaseException, tb: Any) -> None:
    text = "".join(traceback.format_exception(exc_type, exc, tb))
    sys.stderr.write("".join(f"[rank0]: {line}\n" for line in text.splitlines()))
    sys.stderr.flush()


def _build_env(ctx: Rank, num_envs: int, visualize: bool) -> None:
    args, faults, root = ctx.args, ctx.faults, ctx.rank == 0
    env_config = configs.load_config(args.parse_str("env_config", ""))
    engine_config = configs.load_config(args.parse_str("engine_config", ""))
    env_name = configs.check_env(env_config)
    assert env_config is not None
    if root:
        print(f"Building {env_name} env")
    configs.check_engine(engine_config)
    print(texts.warp_banner(ctx.devices))
    if root:
        _progress("envs", num_envs)
        print()
    motion = env_config.get("motion_file", "")
    if root:
        print(f"Loading 1/1 motion files: {motion}")
    if faults.has("missing_motion"):
        raise FileNotFoundError(2, "No such file or directory", motion)
    with open(motion, "rb"):
        pass
    if root:
        print(f"Loaded motion file: {motion}")
        print("Loaded 1 motions with a total length of 4.000s.")
        _progress("objs", num_envs)
        print("Initializing simulation...")
    if visualize:
        _open_viewer(faults)
    if faults.has("env_mismatch"):
        raise AttributeError(texts.NEWTON_MISMATCH)
    limit = faults.value("oom_above")
    if limit is not None and num_envs > limit and ctx.rank == ctx.failing_rank:
        print(texts.WARP_ALLOC_OOM, file=sys.stderr, flush=True)
        raise RuntimeError(texts.alloc_failed(num_envs, ctx.device))
    if root:
        print(texts.module_lines(ctx.device))
        print("Char 0 properties\n\tDoFs: 28\n\tMass: 50.050 kg\n")


def _progress(what: str, count: int) -> None:
    """`Building 1/N envs\\r...Building N/N envs\\r\\n`: one console line per step, as seen."""
    sys.stdout.write("".join(f"Building {i}/{count} {what}\r" for i in range(1, count + 1)) + "\n")


def _open_viewer(faults: Faults) -> None:
    if faults.has("no_display"):
        raise texts.NoSuchDisplayException(texts.NO_DISPLAY)
    if faults.has("glsl") and os.environ.get("MESA_GLSL_VERSION_OVERRIDE") != "330":
        raise texts.ShaderException(texts.GLSL_ERROR)


def _build_agent(ctx: Rank) -> dict[str, str]:
    path = ctx.args.parse_str("agent_config", "")
    config = configs.load_config(path)
    name = configs.agent_name(config, path)
    agent = config or {"agent_name": "Dummy"}
    if ctx.rank == 0:
        print(f"Building {name} agent")
    if name == "PPO" and "discount" not in agent:
        raise KeyError("discount")
    configs.check_agent_model(agent)
    if ctx.rank == 0:
        print("Total parameter count: 2016797")
    return agent


def _first_collective(ctx: Rank) -> None:
    """The parameter broadcast: rank 0 gets past it only when every rank has reached it."""
    if ctx.rank == 0 and _STORE:
        _STORE[0].wait_ready(ctx.procs - 1)


def _release_ranks() -> None:
    if _STORE:
        _STORE.pop().release()


def _wait_for_root(ctx: Rank) -> None:
    """Until the root says done. If the root dies first: exit like gloo, or linger like NCCL (§6.1)."""
    client = StoreClient(ctx.master_port, ctx.rank)
    if client.join() and client.wait_done():
        return
    if not ctx.faults.has("linger"):
        raise RuntimeError(texts.GLOO_PEER_CLOSED)
    print(texts.orphan_first_warning(ctx.rank, ctx.master_port), file=sys.stderr, flush=True)
    while True:
        print(texts.orphan_warnings(ctx.rank, ctx.master_port), file=sys.stderr, flush=True)
        time.sleep(1.0)


def _train(ctx: Rank, agent: dict[str, str], num_envs: int, out_dir: str, seed: int) -> None:
    args, faults = ctx.args, ctx.faults
    logger = args.parse_str("logger", "txt")
    if logger not in ("txt", "tb", "wandb"):
        raise AssertionError(f"Unsupported logger: {logger}")
    for key, name in (("engine_config", "engine"), ("env_config", "env"), ("agent_config", "agent")):
        if args.parse_str(key, ""):
            shutil.copy(args.parse_str(key, ""), os.path.join(out_dir, f"{name}_config.yaml"))
    log_path = os.path.join(out_dir, "log.txt")
    print(f"Logging data to {log_path}")
    log = LogTxt(log_path)
    steps = int(agent.get("steps_per_iter", 32))
    per_output = int(agent.get("iters_per_output", 100))
    max_samples = args.parse_int("max_samples", 2**63 - 1)
    save_int = args.parse_bool("save_int_models", False)
    per_iter = num_envs * steps * ctx.procs
    metrics = Metrics(seed, _eval_episodes(int(agent.get("test_episodes", 32)), num_envs, ctx.procs), per_iter)
    pause = seconds("FAKE_MK_ITER_SECONDS", 0.05)
    start, samples, iteration = time.monotonic(), 0, 0
    while True:
        _iteration_faults(ctx, iteration)
        time.sleep(pause)
        samples += per_iter
        last = samples >= max_samples and not faults.has("hang")
        output = iteration % per_output == 0 or last
        row = metrics.row(
            iteration, (time.monotonic() - start) / 3600, samples, output, faults.reached("nan_at", iteration)
        )
        if output:
            log.write(row)
            _save_model(out_dir, iteration, save_int)
        print(format_table(row))
        if last:
            break
        iteration += 1
    if ctx.procs > 1 and any(device.startswith("cuda") for device in ctx.devices):
        print(texts.destroy_warning(), file=sys.stderr)


def _iteration_faults(ctx: Rank, iteration: int) -> None:
    faults = ctx.faults
    if iteration == 0 and faults.has("cublas_oom"):
        raise RuntimeError(texts.CUBLAS_ALLOC_FAILED)
    if faults.at("graph_oom_at", iteration):
        print(texts.WARP_GRAPH_OOM, file=sys.stderr, flush=True)
        raise RuntimeError(f"Graph launch error: {texts.WARP_GRAPH_OOM}")
    if faults.at("crash_at", iteration):
        raise RuntimeError(f"fake MimicKit: injected crash at iteration {iteration}")  # synthesized
    if faults.at("nccl_abort_at", iteration):
        print(texts.nccl_abort_lines(ctx.procs), file=sys.stderr, flush=True)
        sleep_forever()
    if faults.at("stall_at", iteration):
        sleep_forever()
    if faults.at("peer_dies_at", iteration) and ctx.procs > 1:
        _peer_dies()


def _peer_dies() -> None:
    """Seen (cpu_2proc_fail_rank1_sigkill): rank 1 SIGKILLed mid-run; the root's next all-reduce raises
    gloo's error with torch's `[rank0]: ` prefix and the root exits 1 (23 s later there)."""
    for child in multiprocessing.active_children():
        if child.name.startswith("Process-"):
            os.kill(child.pid or 0, signal.SIGKILL)
            child.join()
    raise RuntimeError(texts.GLOO_PEER_CLOSED)


def _save_model(out_dir: str, iteration: int, save_int: bool) -> None:
    data = f"fake MimicKit model, iteration {iteration}\n".encode()
    with open(os.path.join(out_dir, "model.pt"), "wb") as handle:  # in place, not atomic, like torch.save
        handle.write(data)
    if save_int:
        os.makedirs(os.path.join(out_dir, "int_models"), exist_ok=True)
        with open(os.path.join(out_dir, "int_models", f"model_{iteration:010d}.pt"), "wb") as handle:
            handle.write(data)


def _eval_episodes(test_episodes: int, num_envs: int, procs: int) -> int:
    """Every env finishes at least ceil(per-process episodes / num_envs) episodes (§1 `test_episodes`)."""
    per_env = math.ceil(math.ceil(test_episodes / procs) / num_envs)
    return num_envs * per_env * procs


def _test(ctx: Rank, num_envs: int, seed: int) -> None:
    if not ctx.args.has("test_episodes"):
        sleep_forever()  # seen: test mode without --test_episodes never ends
    test_episodes = ctx.args.parse_int("test_episodes", 0)
    if ctx.faults.has("cublas_oom"):
        raise RuntimeError(texts.CUBLAS_ALLOC_FAILED)
    time.sleep(2 * seconds("FAKE_MK_ITER_SECONDS", 0.05))
    metrics = Metrics(seed, 0, 0)
    row = metrics.row(0, 0.0, 0, True, ctx.faults.has("nan_at"))
    # Rank 0's own numbers, not aggregated over ranks (§2).
    print(f"Mean Return: {row['Test_Return']}")
    print(f"Mean Episode Length: {row['Test_Episode_Length']}")
    print(f"Episodes: {_eval_episodes(test_episodes, num_envs, ctx.procs) // ctx.procs}")
