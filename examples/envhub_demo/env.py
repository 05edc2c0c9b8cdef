"""An EnvHub-layout source: ``make_env`` returns ``{suite: {task: env}}``.

Used by ``examples/sandbox_local_source.py`` as ``examples/envhub_demo:control/balance``.
"""

import gymnasium


def make_env(n_envs: int = 1, use_async_envs: bool = False, **kwargs):
    return {
        "control": {
            "balance": gymnasium.make("CartPole-v1", **kwargs),
            "swing": gymnasium.make("Pendulum-v1", **kwargs),
        }
    }
