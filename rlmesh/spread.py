"""Spread the lanes of one vector env over many sandboxed endpoints (e.g. a Ray cluster's nodes).

:func:`spread_vector_env` starts one sandbox session per group of ``per_endpoint`` lanes through
one runtime driver (``"ray"`` places them round-robin over the cluster's nodes), detaches their
clients and returns a single multi-endpoint vector env over all of them that owns the sessions:
closing it stops every endpoint.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from rlmesh.client.multi import MultiEndpointVectorEnvBase
from rlmesh.errors import SandboxError
from rlmesh.sandbox.session import SandboxSessionBase

__all__ = ["spread_vector_env", "lane_groups"]

log = logging.getLogger(__name__)


def lane_groups(num_envs: int, per_endpoint: int) -> list[int]:
    """Lanes per endpoint: as many full groups of ``per_endpoint`` as fit, then the rest."""
    if num_envs < 1 or per_endpoint < 1:
        raise SandboxError(f"num_envs and per_endpoint must be at least 1, got {num_envs} and {per_endpoint}")
    full, rest = divmod(num_envs, per_endpoint)
    return [per_endpoint] * full + ([rest] if rest else [])


def spread_vector_env(source: str, num_envs: int, *, per_endpoint: int = 8, runtime: Any = "ray",
                      session_class: type[SandboxSessionBase[Any]],
                      env_class: type[MultiEndpointVectorEnvBase[Any, Any]],
                      autoreset_mode: Any = None,
                      runtime_options: dict[str, Any] | None = None,
                      **sandbox_kwargs: Any) -> MultiEndpointVectorEnvBase[Any, Any]:
    """One vector env of ``num_envs`` lanes, served by sandboxes of ``per_endpoint`` lanes each.

    Args:
        source: What every sandbox serves (as for ``SandboxVectorEnv``).
        num_envs: Total lanes; lane ``i`` is seeded ``seed + i`` by ``reset(seed=...)``.
        per_endpoint: Lanes per sandbox (the last one gets the remainder).
        runtime: Driver name or instance; ``"ray"`` places the sandboxes on a Ray cluster.
        session_class: The flavour's ``SandboxVectorEnv`` that runs each group of lanes.
        env_class: The flavour's ``MultiEndpointVectorEnv`` that joins them.
        autoreset_mode: Passed to the sandboxes' vector envs and checked by the client.
        runtime_options: Constructor options of the driver, e.g. ``{"address": "10.0.0.1:6379"}``.
        **sandbox_kwargs: Other ``SandboxVectorEnv`` arguments (``packages``, ``imports``, ...).

    The flavoured faces (:func:`rlmesh.numpy.spread_vector_env`, :func:`rlmesh.torch.spread_vector_env`)
    pass both classes.

    Example:
        >>> from rlmesh.numpy import spread_vector_env
        >>> env = spread_vector_env("CartPole-v1", 64, per_endpoint=8, runtime="ray",  # doctest: +SKIP
        ...                         runtime_options={"address": "10.0.0.1:6379"})
    """
    from rlmesh.runtime import get_driver

    groups = lane_groups(num_envs, per_endpoint)
    driver = get_driver(runtime, **(runtime_options or {}))
    if autoreset_mode is not None:
        mode = str(getattr(autoreset_mode, "value", autoreset_mode))
        sandbox_kwargs["vector_kwargs"] = {**sandbox_kwargs.get("vector_kwargs", {}), "autoreset_mode": mode}

    def start(lanes: int) -> Any:
        return session_class(source, num_envs=lanes, runtime=driver, **sandbox_kwargs)

    sessions: list[Any] = []
    try:
        # Sandboxes start in parallel: each one mostly waits for its endpoint to come up.
        with ThreadPoolExecutor(max_workers=min(8, len(groups))) as pool:
            futures = [pool.submit(start, lanes) for lanes in groups]
            errors: list[BaseException] = []
            for future in futures:
                try:
                    sessions.append(future.result())
                except BaseException as exc:  # keep collecting, so every started session is closed
                    errors.append(exc)
            if errors:
                raise errors[0]
        addresses = [session.address for session in sessions]
        for session in sessions:
            session.client.close()  # detach: the multi-endpoint env attaches its own connections
        # Each endpoint has keys of its own: attach with those its session made.
        env = env_class(addresses, autoreset_mode=autoreset_mode, owned=sessions,
                        server_key=[session.client_keys for session in sessions])
        for endpoint, session in zip(env._endpoints, sessions):  # a dead container: SandboxCrashed
            endpoint.connection.explain_loss = session.loss_explainer
    except BaseException:
        for session in sessions:
            session.close()
        raise
    log.info("spread %d lanes over %d endpoints: %s", num_envs, len(addresses), ", ".join(addresses))
    return env
