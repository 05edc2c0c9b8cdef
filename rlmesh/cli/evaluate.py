"""``rlmesh eval``: run a policy on a server or any ``serve`` target and print the results."""

from __future__ import annotations

import statistics
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click
from rich.table import Table

from rlmesh.cli.loading import load_callable
from rlmesh.cli.output import echo_json, make_console
from rlmesh.cli.targets import (
    SandboxArgs,
    is_address,
    is_sandbox_source,
    local_env,
    open_sandbox,
    parse_make_kwargs,
    sandbox_options,
)

__all__ = ["evaluate"]


@click.command(name="eval")
@click.argument("target", metavar="ADDRESS_OR_SOURCE")
@click.argument("make_kwargs", nargs=-1, metavar="[-- KEY=VALUE...]")
@click.option("--episodes", "-e", type=click.IntRange(min=1), default=10, show_default=True)
@click.option("--seed", "-s", type=int, default=0, show_default=True,
              help="Episode i resets with seed+i; the random policy is seeded with it too.")
@click.option("--policy", metavar="MODULE:CALLABLE",
              help="policy(observation) -> action, or an object/class with predict(). Default: random.")
@click.option("--max-steps", type=click.IntRange(min=1), help="Cut episodes after this many steps.")
@click.option("--max-seconds", type=click.FloatRange(min=0, min_open=True),
              help="Stop the whole run after this much wall time.")
@click.option("--connect-timeout", type=click.FloatRange(min=0.1), default=10.0, show_default=True,
              help="Seconds to wait for a server.")
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON.")
@click.option("--server-key", type=click.Path(dir_okay=False), envvar="RLMESH_SERVER_KEY",
              help="The keyed server's public certificate.")
@click.option("--client-key", type=click.Path(dir_okay=False), envvar="RLMESH_CLIENT_KEY",
              help="This client's secret certificate (listed in the server's authorized keys).")
@sandbox_options
def evaluate(target: str, make_kwargs: tuple[str, ...], episodes: int, seed: int,
             policy: str | None, max_steps: int | None, max_seconds: float | None,
             connect_timeout: float, as_json: bool, server_key: str | None, client_key: str | None,
             **params: Any) -> None:
    """Evaluate a policy (random by default) with Model.run and print a results table.

    ADDRESS_OR_SOURCE is a server address (tcp://127.0.0.1:5555, 127.0.0.1:5555, 5555,
    unix:///path; single or vector endpoint) or anything `rlmesh serve` accepts, which is
    then run for the evaluation. The policy receives NumPy observations.
    """
    from rlmesh.numpy import Model

    sandbox = SandboxArgs.pop(params)
    kwargs = parse_make_kwargs(make_kwargs)
    keys: dict[str, Any] = {"server_key": server_key, "client_key": client_key}
    with _eval_env(target, sandbox, kwargs, connect_timeout, keys) as env:
        space = getattr(env, "single_action_space", None) or env.action_space
        model = Model(_policy_from(policy, space, seed))
        result = model.run(env, seeds=seed, episodes=episodes, max_steps=max_steps,
                           max_seconds=max_seconds, close_env=False)
    if as_json:
        echo_json({"target": target, **result.to_dict()})
        return
    _print_results(result, target)


def _policy_from(path: str | None, action_space: Any, seed: int | None) -> Callable[[Any], Any]:
    """The loaded policy, or a random one sampling ``action_space`` seeded with ``seed``."""
    if path is None:
        action_space.seed(seed)
        return lambda observation: action_space.sample()
    loaded: Any = load_callable(path, "policy")
    if isinstance(loaded, type):  # a class: instantiate it; Model then uses its predict
        instance: Callable[[Any], Any] = loaded()
        return instance
    policy: Callable[[Any], Any] = loaded
    return policy


@contextmanager
def _eval_env(target: str, sandbox: SandboxArgs, kwargs: dict[str, Any],
              connect_timeout: float, keys: dict[str, Any]) -> Iterator[Any]:
    if is_address(target) and not Path(target).is_dir():
        if kwargs:
            raise click.BadParameter("env keyword arguments cannot be sent to a running server",
                                     param_hint="MAKE_KWARGS")
        from rlmesh.numpy import RemoteEnv, RemoteVectorEnv

        try:
            env: Any = RemoteEnv(target, connect_timeout=connect_timeout, **keys)
        except TypeError:  # the endpoint serves a vector env: its lanes run episodes in parallel
            env = RemoteVectorEnv(target, connect_timeout=connect_timeout, **keys)
    elif is_sandbox_source(target, sandbox.force):
        env = open_sandbox(target, sandbox, 1, None, kwargs, vector=False)
    else:
        env = local_env(target, 1, None, kwargs)
    try:
        yield env
    finally:
        env.close()


def _print_results(result: Any, target: str) -> None:
    table = Table(title=f"Evaluation of {target}")
    for column in ("episode", "seed", "steps", "return", "terminated", "truncated", "success", "seconds"):
        table.add_column(column, justify="right")
    for e in result.episodes:
        success = "" if e.success is None else ("yes" if e.success else "no")
        table.add_row(str(e.index), str(e.seed), str(e.steps), f"{e.episode_return:.3f}",
                      "yes" if e.terminated else "no", "yes" if e.truncated else "no", success,
                      f"{e.duration:.3f}")
    console = make_console()
    console.print(table)
    returns = result.returns
    spread = statistics.pstdev(returns) if returns else 0.0
    success = "" if result.success_rate is None else f", success rate {result.success_rate:.1%}"
    console.print(f"mean return {result.mean_reward:.3f} ± {spread:.3f} over {result.num_episodes} "
                  f"episodes, {result.total_steps} steps ({result.steps_per_second:.0f} steps/s){success}")
    console.print(f"latency: predict {result.predict_latency}, step {result.step_latency}")
