"""Sandboxes: an env or a policy in a container of its own, started, connected and always stopped.

- :mod:`~rlmesh.sandbox.sources` parses what a sandbox serves (``CartPole-v1``, ``gym://``,
  pinned ``hf://``, a local directory) and builds it inside the container;
- :mod:`~rlmesh.sandbox.package` picks the rlmesh the image installs, so both sides match;
- :mod:`~rlmesh.sandbox.session` builds the image, starts the container through a runtime
  driver and connects a client (``SandboxEnv`` / ``SandboxVectorEnv``);
- :mod:`~rlmesh.sandbox.model` does the same for a policy (``SandboxModel``);
- :mod:`~rlmesh.sandbox.entry` is what the container runs.

The flavoured classes users import live in :mod:`rlmesh.numpy` and :mod:`rlmesh.torch`.
"""
