"""Where the sandbox session bases were first published; they live in :mod:`rlmesh.sandbox.session`.

Kept because the API reference names ``rlmesh._sandbox.SandboxSessionBase``,
``SandboxEnvBase`` and ``SandboxVectorEnvBase``.
"""

from rlmesh.sandbox.session import CAPABILITIES, SandboxEnvBase, SandboxSessionBase, SandboxVectorEnvBase

__all__ = ["SandboxSessionBase", "SandboxEnvBase", "SandboxVectorEnvBase", "CAPABILITIES"]
