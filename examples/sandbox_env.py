"""Run CartPole in a sandbox container with its own packages, then a 2-lane vector sandbox.

Needs a container engine and the base image (`rlmesh images bootstrap`); see docs/sandboxes.md.

    python examples/sandbox_env.py
"""

# rlmesh-example: needs-engine

from __future__ import annotations

from rlmesh.numpy import SandboxEnv, SandboxVectorEnv

PACKAGES = ["gymnasium[classic-control]==1.3.0"]  # pygame is needed for rgb_array rendering


def main() -> None:
    with SandboxEnv("CartPole-v1", packages=PACKAGES, imports=["gymnasium", "pygame"],
                    render_mode="rgb_array") as env:
        print(f"sandbox at {env.address} (container {env.container_id[:12]}, runtime {env.driver.name})")
        obs, info = env.reset(seed=42)
        obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
        frame = env.render()
        print("stepped: reward", reward, "| frame", frame.shape, frame.dtype)

    with SandboxVectorEnv("gym://CartPole-v1", num_envs=2, packages=PACKAGES,
                          imports=["gymnasium"]) as vec:
        obs, info = vec.reset(seed=0)
        obs, rewards, terminations, truncations, info = vec.step(vec.action_space.sample())
        print(f"vector sandbox: {vec.num_envs} lanes, observations {obs.shape}, rewards {rewards}")
    print("both containers are gone again")


if __name__ == "__main__":
    main()
