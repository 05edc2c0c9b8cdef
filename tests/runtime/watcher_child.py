"""A process that owns FileDriver containers, for the watcher tests.

Usage: watcher_child.py MODE ROOT [ROOT...]. Starts two owned containers on a FileDriver for
each ROOT (one driver configuration each), prints ``READY <watcher pid>``, then: ``wait``
sleeps until killed; ``fork`` also forks a child that sleeps on with a copy of every file
descriptor, prints ``FORKED <pid>`` and sleeps; ``leak`` does the same with a program that
holds the write end of the watcher's pipe (as a child forked outside Python would); ``exit``
returns without closing anything (exit handlers clean up).
"""

import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from rlmesh.runtime import (
    RunSpec,  # noqa: E402
    watcher,  # noqa: E402
)
from rlmesh.runtime.cleanup import own_container  # noqa: E402
from runtime.file_driver import FileDriver  # noqa: E402


class Session:
    pass


mode, roots = sys.argv[1], sys.argv[2:]
sessions = []
watchers = set()
for root in roots:
    driver = FileDriver(root)
    for _ in range(2):
        session = Session()
        own_container(session, driver, driver.run(RunSpec(image="none")).id)
        sessions.append(session)
        watchers.add(watcher.watcher_pid())
print("READY", *sorted(watchers), flush=True)
if mode == "fork":
    forked = os.fork()
    if forked == 0:
        time.sleep(120)
        os._exit(0)
    print("FORKED", forked, flush=True)
if mode == "leak":
    pipe = watcher._watcher.pipe
    assert pipe is not None
    holder = subprocess.Popen(["sleep", "120"], pass_fds=(pipe,))
    print("FORKED", holder.pid, flush=True)
if mode in ("wait", "fork", "leak"):
    while True:
        time.sleep(0.2)
