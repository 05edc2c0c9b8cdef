"""A process that owns a sandbox, for the cleanup-path tests.

Usage: sandbox_child.py MODE RUNTIME_JSON. Prints ``READY <container id> <watcher pid>`` once
the sandbox answers (pid 0: no container watcher), then: ``exit`` returns without closing anything (interpreter exit must clean up);
``wait`` sleeps until a signal arrives.
"""

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from rlmesh.numpy import SandboxEnv  # noqa: E402
from rlmesh.runtime.watcher import watcher_pid  # noqa: E402
from sandbox.conftest import IMPORTS, PACKAGES, driver_from_argument  # noqa: E402

mode, runtime = sys.argv[1], sys.argv[2]
env = SandboxEnv("CartPole-v1", packages=PACKAGES, imports=IMPORTS,
                 runtime=driver_from_argument(runtime), owner_timeout=3.0)
env.reset(seed=0)
print("READY", env.container_id, watcher_pid() or 0, flush=True)
if mode == "wait":
    while True:
        time.sleep(0.2)
