"""MimicKit's config loading and its builders' checks, as its source has them (snapshot f8d0d70).

Each failure raises what the real code raises, with the same text, so the fake's tracebacks end
in the same exception line (real outputs: tests/fixtures/mimickit/cpu_fail_*):
* envs/env_builder.py: an empty or absent config file reads as None, and `"engine" in None`
  raises `TypeError: argument of type 'NoneType' is not iterable` (an empty arg_file does this);
  `Unsupported env: X` (line 51).
* engines/engine_builder.py:19: `assert False, print("Unsupported engine: X")` prints the text,
  then raises a bare `AssertionError: None`; newton_engine.py:317: the sim/control frequency check.
* learning/agent_builder.py:39 `Unsupported agent: X`; nets/net_builder.py:10 `Unsupported net: X`;
  mp_optimizer.py:58 `Unsupported optimizer type: X`; an empty agent config: `'NoneType' object
  is not subscriptable`.
"""

from __future__ import annotations

Config = dict[str, str]

ENVS = ("char", "deepmimic", "amp", "ase", "add", "smp", "char_dof_test", "view_motion")
ENVS += ("task_location", "task_steering", "task_dodgeball", "static_objects")
ENGINES = ("isaac_gym", "isaac_lab", "newton")
AGENTS = ("Dummy", "PPO", "AWR", "AMP", "SMP", "ASE", "ADD", "LCP")
# the modules of mimickit/learning/nets/
NETS = ("cnn_3conv_1fc_0", "fc_2layers_1024units", "fc_2layers_128units", "fc_2layers_256units")
NETS += ("fc_2layers_512units", "fc_3layers_1024units")
OPTIMIZERS = ("SGD", "Adam")


def load_config(path: str) -> Config | None:
    """env_builder.load_config: None for no file name, and (yaml.safe_load) for an empty file.

    Keys of one nested level come back dotted (`model.actor_net`); enough for what the fake reads.
    A missing file raises FileNotFoundError, as the real open() does.
    """
    if not path:
        return None
    with open(path) as handle:
        text = handle.read()
    pairs: Config = {}
    section = ""
    for line in text.splitlines():
        body = line.split("#", 1)[0].rstrip()
        if not body.strip() or ":" not in body:
            continue
        key, _, value = body.partition(":")
        value = value.strip().strip('"')
        if not line[0].isspace():
            section = key.strip() if not value else ""
            if value:
                pairs[key.strip()] = value
        elif section:
            pairs[f"{section}.{key.strip()}"] = value
    return pairs or None


def check_env(env_config: Config | None) -> str:
    """The env's name, after env_builder's checks (load_configs line 67, build_env line 51)."""
    _ = "engine" in env_config  # type: ignore[operator]  # None raises the real TypeError
    assert env_config is not None
    name = env_config.get("env_name", "")
    if name not in ENVS:
        raise AssertionError(f"Unsupported env: {name}")
    return name


def check_engine(engine_config: Config | None) -> None:
    """engine_builder.build_engine and NewtonEngine.__init__'s checks."""
    name = engine_config["engine_name"]  # type: ignore[index]  # None raises the real TypeError
    assert engine_config is not None
    if name not in ENGINES:
        print(f"Unsupported engine: {name}", flush=True)
        raise AssertionError(None)
    sim_freq = int(engine_config.get("sim_freq", 60))
    control_freq = int(engine_config.get("control_freq", 10))
    if not (sim_freq >= control_freq and sim_freq % control_freq == 0):
        raise AssertionError("Simulation frequency must be a multiple of the control frequency")


def agent_name(agent_config: Config | None, path: str) -> str:
    if not path:
        return "Dummy"
    name = agent_config["agent_name"]  # type: ignore[index]  # None raises the real TypeError
    if name not in AGENTS:
        raise AssertionError(f"Unsupported agent: {name}")
    return name


def check_agent_model(agent_config: Config) -> None:
    """The PPO model's nets, then its optimizers (ppo_model._build_actor/_build_critic, MPOptimizer)."""
    for key in ("model.actor_net", "model.critic_net"):
        net = agent_config.get(key)
        if net is not None and net not in NETS:
            raise AssertionError(f"Unsupported net: {net}")
    for key in ("optimizer.type", "actor_optimizer.type", "critic_optimizer.type"):
        kind = agent_config.get(key)
        if kind is not None and kind not in OPTIMIZERS:
            raise AssertionError("Unsupported optimizer type: " + kind)


def check_mp_device(device: str) -> None:
    """util/mp_util.py:29, for a multi-process run only."""
    if device != "cpu" and "cuda" not in device:
        raise AssertionError(f"Unsupported multiprocessing device {device}")
