"""Sandbox speed: cold build, cached start-to-first-reset, and step time versus a local server.

    python bench/bench_sandbox.py [--runtime docker] [--steps 3000] [--starts 5]

For each runtime it measures, in one run:
- cold build: the sandbox recipe with a fresh nonce right after ``FROM``, so no layer is cached
  (pip installs included);
- cached start: ``SandboxEnv(...)`` with its image present, until the first ``reset`` returns;
- step: median ``step`` time through the sandbox versus the same env behind a local
  ``EnvServer`` in another process, timed in alternating blocks, and their ratio
  (target: <= 1.2).
Targets from issue 4: cached start-to-first-reset < 2 s, sandbox step <= 1.2x local step.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import statistics
import time
import uuid
from typing import Any

import gymnasium

from rlmesh import EnvServer
from rlmesh.numpy import RemoteEnv, SandboxEnv
from rlmesh.runtime import ImageRecipe, get_driver

# The same Gymnasium as the local server, so both sides step the same CartPole code.
PACKAGES = [f"gymnasium=={gymnasium.__version__}"]


def _serve(queue: Any) -> None:
    server = EnvServer(gymnasium.make("CartPole-v1"), "tcp://127.0.0.1:0")
    queue.put(server.address)
    server.serve()


def step_times(envs: list[Any], steps: int, block: int = 100) -> list[float]:
    """Median seconds per step of each env (CartPole, alternating actions, resets on done).

    The envs take turns in blocks of ``block`` steps, so a change in machine load (a build
    finishing, a container starting) hits them all alike.
    """
    actions = []
    for env in envs:
        env.reset(seed=0)
        for _ in range(200):  # warm up
            _, _, terminated, truncated, _ = env.step(0)
            if terminated or truncated:
                env.reset()
        actions.append(0)
    samples: list[list[float]] = [[] for _ in envs]
    for _ in range(max(1, steps // block)):
        for index, env in enumerate(envs):
            for _ in range(block):
                start = time.perf_counter()
                _, _, terminated, truncated, _ = env.step(actions[index])
                samples[index].append(time.perf_counter() - start)
                actions[index] ^= 1
                if terminated or truncated:
                    env.reset()
    return [statistics.median(times) for times in samples]


def cold_build(runtime: str) -> float:
    """Build the CartPole sandbox recipe with every layer after FROM made new."""
    probe = SandboxEnv("CartPole-v1", packages=PACKAGES, runtime=runtime)
    driver, recipe = probe.driver, probe.recipe
    probe.close()
    lines = recipe.dockerfile.splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith("FROM ")) + 1
    lines.insert(at, f'LABEL io.rlmesh.bench.nonce="{uuid.uuid4().hex}"')
    fresh = ImageRecipe("\n".join(lines) + "\n", recipe.context_files, "rlmesh-bench", recipe.labels)
    start = time.perf_counter()
    driver.build(fresh)
    elapsed = time.perf_counter() - start
    driver.remove_image(fresh.tag)
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runtime", action="append", help="driver name (repeatable); default: docker, podman")
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--starts", type=int, default=5)
    parser.add_argument("--skip-cold", action="store_true", help="skip the cold build")
    args = parser.parse_args()
    runtimes = args.runtime or ["docker", "podman"]

    context = mp.get_context("spawn")
    queue = context.Queue()
    server = context.Process(target=_serve, args=(queue,), daemon=True)
    server.start()
    local_address = queue.get(timeout=60)

    rows = []
    for runtime in runtimes:
        get_driver(runtime)  # fail early with the driver's own message
        cold = float("nan") if args.skip_cold else cold_build(runtime)
        SandboxEnv("CartPole-v1", packages=PACKAGES, runtime=runtime).close()  # image cached
        starts = []
        for _ in range(args.starts):
            begin = time.perf_counter()
            env = SandboxEnv("CartPole-v1", packages=PACKAGES, runtime=runtime)
            env.reset(seed=0)
            starts.append(time.perf_counter() - begin)
            env.close()
        with SandboxEnv("CartPole-v1", packages=PACKAGES, runtime=runtime) as env, \
                RemoteEnv(local_address) as local:
            local_step, sandbox_step = step_times([local, env], args.steps)
        rows.append((runtime, cold, statistics.median(starts), max(starts), sandbox_step, local_step))
    server.terminate()

    print(f"{'runtime':<10} {'cold build s':>12} {'start->reset s (med/max)':>26} "
          f"{'sandbox step us':>16} {'local step us':>14} {'ratio':>6}")
    for runtime, cold, start, worst, step, local_step in rows:
        print(f"{runtime:<10} {cold:>12.1f} {start:>15.2f} / {worst:<8.2f} {step * 1e6:>16.1f} "
              f"{local_step * 1e6:>14.1f} {step / local_step:>6.2f}")


if __name__ == "__main__":
    main()
