"""What a client sees when things go wrong on the server side, and how the server survives.

- an exception inside the env arrives as EnvironmentException with the remote traceback;
- an action outside the action space is refused with a ValueError naming the space;
- a second client gets ServerBusyError while the first is attached.

    python examples/serving_errors.py
"""

from __future__ import annotations

import gymnasium

from rlmesh import EnvironmentException, EnvServer, ServerBusyError
from rlmesh.numpy import RemoteEnv


class FragileEnv(gymnasium.Env):
    """CartPole that raises on action 1 after the fifth step."""

    def __init__(self) -> None:
        self.inner = gymnasium.make("CartPole-v1")
        self.observation_space = self.inner.observation_space
        self.action_space = self.inner.action_space
        self.steps = 0

    def reset(self, *, seed=None, options=None):
        self.steps = 0
        return self.inner.reset(seed=seed, options=options)

    def step(self, action):
        self.steps += 1
        if self.steps > 5 and action == 1:
            raise RuntimeError("the env broke on purpose")
        return self.inner.step(action)


def main() -> None:
    # A background thread is enough here; every other example uses a separate process.
    with EnvServer(FragileEnv(), "tcp://127.0.0.1:0") as server:
        env = RemoteEnv(server.address)
        env.reset(seed=0)

        try:
            env.step(7)  # Discrete(2) holds 0 and 1 only
        except ValueError as exc:
            print("invalid action refused:", exc)

        try:
            RemoteEnv(server.address, connect_timeout=5)
        except ServerBusyError as exc:
            print("second client refused:", exc)

        for _ in range(5):
            env.step(0)
        try:
            env.step(1)
        except EnvironmentException as exc:
            print("remote exception type:", exc.remote_type)
            assert "the env broke on purpose" in exc.remote_traceback

        # The server kept serving: reset and go on.
        obs, _ = env.reset(seed=1)
        print("after the error the env still works; first observation:", obs)
        env.close()

        # Once the first client closed, another may attach.
        with RemoteEnv(server.address) as second:
            second.reset(seed=2)
            print("a new client attached after the first closed")


if __name__ == "__main__":
    main()
