"""Issue 15: one attempt can never wedge its job. A `command` stage killed on a live MimicKit
signature raised in the classifier at every tick (the attempt stayed `stopping`, cancel did
nothing, a restart hit the same error); now its end is judged like any other."""

from __future__ import annotations

from tests.harness import Home

PORT_LINE = (
    "torch.distributed.DistNetworkError: The server socket has failed to listen on any local network address. "
    "port: 29610, useIpv6: false, code: -98, name: EADDRINUSE, message: address already in use"
)
JOB = f"""[workload]
kind = "command"
argv = ["sh", "-c", "echo '{PORT_LINE}'; exec sleep 600"]

[retry]
max_attempts = 2
backoff = "0.1s"

[watch]
stop_grace = "1s"
"""


def test_a_command_stopped_on_a_live_signature_ends_and_is_retried(home: Home) -> None:
    home.start()
    home.drop("clash.toml", JOB)
    assert home.wait_state("clash", "failed", timeout=40) == "failed"
    attempts = home.attempts("clash")
    assert [a["failure_class"] for a in attempts] == ["port_in_use", "port_in_use"]
    assert all(a["state"] == "ended" for a in attempts)
    assert "retries exhausted" in home.job("clash")["reason"]  # type: ignore[index]
    assert home.proc is not None and home.proc.poll() is None, "the daemon kept running"
    home.stop()
