"""Run a policy in its own sandbox and evaluate it against a sandboxed env.

    python examples/sandbox_model.py
"""

# rlmesh-example: needs-engine

from __future__ import annotations

from pathlib import Path

import gymnasium

from rlmesh.numpy import Model, SandboxEnv, SandboxModel

HERE = Path(__file__).parent


def main() -> None:
    seeds = list(range(4))
    with SandboxModel(HERE / "agents" / "lean_policy.py", packages=["numpy"]) as model, \
            SandboxEnv("CartPole-v1", packages=["gymnasium==1.3.0"]) as env:
        result = model.run(env, seeds=seeds)
    print(result)

    def lean(observation):
        return int(observation[2] > 0)

    local = Model(lean).run(gymnasium.make("CartPole-v1"), seeds=seeds, close_env=True)
    assert result.returns == local.returns, (result.returns, local.returns)
    print("the sandboxed policy scored exactly what the same policy scores locally")


if __name__ == "__main__":
    main()
