"""The command-line flow: `rlmesh serve` in one process, `rlmesh eval` against it, Ctrl-C to stop.

The same as typing, in two shells:

    rlmesh serve CartPole-v1 --address 127.0.0.1:5555 -- max_episode_steps=100
    rlmesh eval 127.0.0.1:5555 --episodes 3 --policy examples/agents/lean_policy.py:predict

    python examples/cli_serve_eval.py
"""

from __future__ import annotations

import shutil
import signal
import subprocess
from pathlib import Path

HERE = Path(__file__).parent


def main() -> None:
    rlmesh = shutil.which("rlmesh")
    assert rlmesh, "the rlmesh command is not installed (pip install rlmesh)"
    server = subprocess.Popen(
        [rlmesh, "serve", "CartPole-v1", "--address", "tcp://127.0.0.1:0", "--", "max_episode_steps=100"],
        stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        banner = server.stdout.readline().strip()  # "Serving CartPole-v1 at tcp://127.0.0.1:PORT"
        print(banner)
        address = banner.rsplit(" at ", 1)[1]
        subprocess.run([rlmesh, "eval", address, "--episodes", "3", "--seed", "0",
                        "--policy", f"{HERE / 'agents' / 'lean_policy.py'}:predict"], check=True)
    finally:
        server.send_signal(signal.SIGINT)  # what Ctrl-C does
        code = server.wait(20)
    print("rlmesh serve exited with", code)
    assert code == 0


if __name__ == "__main__":
    main()
