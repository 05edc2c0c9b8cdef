"""A local directory in the Hugging Face EnvHub layout, run in a sandbox.

The directory holds ``env.py`` defining ``make_env``; ``:suite/task`` selects one env. The same
layout on the Hugging Face Hub is used as ``hf://owner/repo@<sha>:suite/task`` and then needs
``trust_remote_code=True``: the check below shows that refusal without building anything.

    python examples/sandbox_local_source.py
"""

# rlmesh-example: needs-engine

from __future__ import annotations

from pathlib import Path

from rlmesh.errors import SourceError
from rlmesh.numpy import SandboxEnv

HERE = Path(__file__).parent


def main() -> None:
    try:
        SandboxEnv("hf://example-owner/example-envs@" + "0" * 40 + ":control/swing")
    except SourceError as exc:
        print("refused before anything was built:", exc)

    source = f"{HERE / 'envhub_demo'}:control/swing"
    with SandboxEnv(source, packages=["gymnasium==1.3.0"],
                    max_episode_steps=50) as env:
        obs, info = env.reset(seed=0)
        print("Pendulum from the local source: action space", env.action_space)
        total, done = 0.0, False
        while not done:
            obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
            total += float(reward)
            done = terminated or truncated
        print(f"episode return {total:.1f} (cut at 50 steps by the make kwarg)")


if __name__ == "__main__":
    main()
