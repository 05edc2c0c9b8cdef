"""Start to first reset of a sandbox whose image exists: image://NAME against the source itself.

Both paths are warm (the source's image is cached, the named image was built once with
``SandboxEnv.build_image``); they alternate, so machine load hits both alike. The source path
still generates its recipe, looks the image up and (on an unreleased checkout) builds the rlmesh
wheel it compares; image:// only inspects the named image.
Run: ``python bench/bench_image_start.py [--runtime docker] [--rounds 5]``.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time

PACKAGES = ["gymnasium[classic-control]==1.3.0"]
NAME = "rlmesh-bench-prebuilt:cartpole"


def first_reset(source: str, runtime: str, **options: object) -> float:
    from rlmesh.numpy import SandboxEnv

    started = time.perf_counter()
    with SandboxEnv(source, runtime=runtime, **options) as env:
        env.reset(seed=0)
        return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runtime", default="docker")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    from rlmesh.numpy import SandboxEnv

    SandboxEnv.build_image("CartPole-v1", NAME, packages=PACKAGES, runtime=args.runtime)
    first_reset("CartPole-v1", args.runtime, packages=PACKAGES)  # warm the source's cache
    times: dict[str, list[float]] = {"source": [], "image://": []}
    for _ in range(args.rounds):
        times["source"].append(first_reset("CartPole-v1", args.runtime, packages=PACKAGES))
        times["image://"].append(first_reset(f"image://{NAME}", args.runtime))
    source, image = statistics.median(times["source"]), statistics.median(times["image://"])
    print(f"{args.runtime}, {args.rounds} rounds, median start to first reset:")
    print(f"  source (cached build): {source:.2f} s")
    print(f"  image://NAME:          {image:.2f} s   ({source / image:.2f}x faster)")


if __name__ == "__main__":
    main()
