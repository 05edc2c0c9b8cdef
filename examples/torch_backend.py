"""The Torch backend: observations as torch tensors, zero-copy views on request.

    python examples/torch_backend.py
"""

from __future__ import annotations

import multiprocessing as mp

import gymnasium
import torch

from rlmesh import EnvServer, Tensor
from rlmesh.torch import RemoteEnv, as_tensor, from_tensor


def serve(addresses: mp.Queue) -> None:
    server = EnvServer(gymnasium.make("CartPole-v1"), "tcp://127.0.0.1:0")
    addresses.put(server.address)
    server.serve()


def main() -> None:
    context = mp.get_context("spawn")
    addresses = context.Queue()
    server = context.Process(target=serve, args=(addresses,))
    server.start()
    try:
        with RemoteEnv(addresses.get(timeout=60)) as env:
            obs, _ = env.reset(seed=0)
            print("observation:", type(obs).__name__, obs.dtype, tuple(obs.shape))
            obs.mul_(2.0)  # owned and writable: in-place ops are safe
            policy = torch.nn.Linear(4, 2)
            with torch.no_grad():
                action = int(policy(obs).argmax())
            obs, reward, terminated, truncated, _ = env.step(action)
            print(f"stepped with action {action}: reward {reward}")
    finally:
        server.terminate()
        server.join(10)

    wire = from_tensor(torch.arange(4, dtype=torch.float32))  # detached, on the CPU, copied
    assert isinstance(wire, Tensor)
    shared = as_tensor(wire)            # a DLPack view: shares memory, treat as read-only
    private = as_tensor(wire, copy=True)
    private += 1
    print("shared view:", shared.tolist(), "| private copy:", private.tolist())


if __name__ == "__main__":
    main()
