"""The NumPy backend: owned, writable observations and explicit conversions.

Serves an 84x84x3 uint8 image env (large enough to travel as its own zero-copy frame).

    python examples/numpy_backend.py
"""

from __future__ import annotations

import multiprocessing as mp

import gymnasium
import numpy as np

from rlmesh import EnvServer, Tensor
from rlmesh.numpy import RemoteEnv, asarray, from_array


class ImageEnv(gymnasium.Env):
    """Observations are random 84x84 RGB images."""

    observation_space = gymnasium.spaces.Box(0, 255, (84, 84, 3), np.uint8)
    action_space = gymnasium.spaces.Discrete(4)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return self.observation_space.sample(), {}

    def step(self, action):
        return self.np_random.integers(0, 256, (84, 84, 3), dtype=np.uint8), 0.0, False, False, {}


def serve(addresses: mp.Queue) -> None:
    server = EnvServer(ImageEnv(), "tcp://127.0.0.1:0")
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
            print("observation:", type(obs).__name__, obs.dtype, obs.shape, "writable:", obs.flags.writeable)
            scaled = obs.astype(np.float32)
            scaled /= 255.0  # in-place arithmetic is safe: the array belongs to us alone
            print(f"scaled to [0, 1]: mean {scaled.mean():.3f}")
    finally:
        server.terminate()
        server.join(10)

    # Conversions by hand, e.g. for values stored or sent elsewhere.
    tensor = from_array(np.arange(6, dtype=np.float32).reshape(2, 3))  # always a copy
    assert isinstance(tensor, Tensor)
    print("rlmesh.Tensor:", tensor.dtype, tensor.shape)
    back = asarray(tensor)  # writable copy
    back[0, 0] = 100.0
    view = np.from_dlpack(tensor)  # zero-copy and read-only
    print("asarray copy:", back.tolist(), "| dlpack view writable:", view.flags.writeable)
    print("0-d arrays become Python scalars:", repr(from_array(np.float64(2.5))))


if __name__ == "__main__":
    main()
