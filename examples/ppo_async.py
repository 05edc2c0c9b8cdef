"""A CleanRL-style single-file PPO (PyTorch) that steps a sandboxed vector env asynchronously.

Each rollout step sends the actions with ``step_async`` and evaluates the critic while the
server steps the lanes, then collects the step with ``step_wait``: the env and the value
forward pass overlap instead of taking turns. The env is built in one line (``make_envs``): a
``SandboxVectorEnv`` in a container here, or ``RemoteVectorEnv(address)`` for a served one.

Gymnasium 1.x vector envs autoreset in ``NextStep`` mode: the step after a lane finishes is its
reset step, whose transition belongs to no episode, so it is masked out of the loss.

    python examples/ppo_async.py
"""

from __future__ import annotations

import time

import numpy as np
import torch
from torch import nn
from torch.distributions import Categorical

from rlmesh.numpy import SandboxVectorEnv

# rlmesh-example: needs-engine

NUM_ENVS = 4
NUM_STEPS = 128  # per lane and rollout
TOTAL_STEPS = 40_000
SEED = 1
GAMMA, GAE_LAMBDA, CLIP, EPOCHS, MINIBATCHES, LR = 0.99, 0.95, 0.2, 4, 4, 2.5e-3


def make_envs() -> SandboxVectorEnv:
    return SandboxVectorEnv("CartPole-v1", num_envs=NUM_ENVS)  # or: RemoteVectorEnv(address)


def layer(inputs: int, outputs: int, std: float = np.sqrt(2)) -> nn.Linear:
    linear = nn.Linear(inputs, outputs)
    nn.init.orthogonal_(linear.weight, std)
    nn.init.constant_(linear.bias, 0.0)
    return linear


class Agent(nn.Module):
    def __init__(self, observations: int, actions: int) -> None:
        super().__init__()
        self.critic = nn.Sequential(layer(observations, 64), nn.Tanh(), layer(64, 64), nn.Tanh(), layer(64, 1, 1.0))
        self.actor = nn.Sequential(layer(observations, 64), nn.Tanh(), layer(64, 64), nn.Tanh(),
                                   layer(64, actions, 0.01))

    def value(self, obs: torch.Tensor) -> torch.Tensor:
        return self.critic(obs).squeeze(-1)

    def policy(self, obs: torch.Tensor) -> Categorical:
        return Categorical(logits=self.actor(obs))


def train(envs: SandboxVectorEnv) -> list[float]:
    assert str(envs.metadata["autoreset_mode"].value) == "NextStep"
    torch.manual_seed(SEED)
    agent = Agent(int(np.prod(envs.single_observation_space.shape)), int(envs.single_action_space.n))
    optimizer = torch.optim.Adam(agent.parameters(), lr=LR, eps=1e-5)
    shape = (NUM_STEPS, NUM_ENVS)
    obs_buffer = torch.zeros(shape + envs.single_observation_space.shape)
    actions, logprobs, rewards, values = (torch.zeros(shape) for _ in range(4))
    dones, valid = torch.zeros(shape), torch.zeros(shape)  # valid: not a NextStep reset step

    next_obs = torch.as_tensor(envs.reset(seed=SEED)[0])
    next_done = torch.zeros(NUM_ENVS)
    resetting = torch.zeros(NUM_ENVS, dtype=torch.bool)
    returns, finished = np.zeros(NUM_ENVS), []
    updates = TOTAL_STEPS // (NUM_STEPS * NUM_ENVS)
    for update in range(updates):
        optimizer.param_groups[0]["lr"] = LR * (1.0 - update / updates)
        started = time.perf_counter()
        for step in range(NUM_STEPS):
            obs_buffer[step], dones[step], valid[step] = next_obs, next_done, (~resetting).float()
            with torch.no_grad():
                distribution = agent.policy(next_obs)
                action = distribution.sample()
                envs.step_async(action.numpy())  # the lanes step on the server ...
                values[step] = agent.value(next_obs)  # ... while the critic runs here
            actions[step], logprobs[step] = action, distribution.log_prob(action)
            obs, reward, terminated, truncated, _ = envs.step_wait()
            done = np.logical_or(terminated, truncated)
            rewards[step] = torch.as_tensor(reward, dtype=torch.float32)
            returns += np.where(resetting.numpy(), 0.0, reward)
            ended = done & ~resetting.numpy()
            finished += returns[ended].tolist()
            returns[ended] = 0.0
            next_obs, next_done = torch.as_tensor(obs), torch.as_tensor(done, dtype=torch.float32)
            resetting = torch.as_tensor(ended)

        with torch.no_grad():  # generalized advantage estimation, cut at episode ends
            next_value = agent.value(next_obs)
            advantages = torch.zeros(shape)
            running = torch.zeros(NUM_ENVS)
            for t in reversed(range(NUM_STEPS)):
                continues = 1.0 - (next_done if t == NUM_STEPS - 1 else dones[t + 1])
                following = next_value if t == NUM_STEPS - 1 else values[t + 1]
                delta = rewards[t] + GAMMA * following * continues - values[t]
                running = delta + GAMMA * GAE_LAMBDA * continues * running
                advantages[t] = running
            targets = advantages + values

        flat = valid.reshape(-1).bool()
        b_obs = obs_buffer.reshape(-1, *envs.single_observation_space.shape)[flat]
        b_actions, b_logprobs = actions.reshape(-1)[flat], logprobs.reshape(-1)[flat]
        b_advantages, b_targets = advantages.reshape(-1)[flat], targets.reshape(-1)[flat]
        size = len(b_obs)
        for _ in range(EPOCHS):
            order = torch.randperm(size)
            for batch in order.chunk(MINIBATCHES):
                distribution = agent.policy(b_obs[batch])
                ratio = (distribution.log_prob(b_actions[batch]) - b_logprobs[batch]).exp()
                advantage = b_advantages[batch]
                advantage = (advantage - advantage.mean()) / (advantage.std() + 1e-8)
                policy_loss = torch.max(-advantage * ratio,
                                        -advantage * ratio.clamp(1 - CLIP, 1 + CLIP)).mean()
                value_loss = 0.5 * ((agent.value(b_obs[batch]) - b_targets[batch]) ** 2).mean()
                loss = policy_loss + 0.5 * value_loss - 0.01 * distribution.entropy().mean()
                optimizer.zero_grad()
                loss.backward()
                nn.utils.clip_grad_norm_(agent.parameters(), 0.5)
                optimizer.step()
        if (update + 1) % 10 and update + 1 != updates:
            continue
        rate = NUM_STEPS * NUM_ENVS / (time.perf_counter() - started)
        recent = np.mean(finished[-20:]) if finished else 0.0
        print(f"update {update + 1}/{updates}: mean return of the last 20 episodes {recent:6.1f}, "
              f"{rate:,.0f} env steps/s")
    return finished


def main() -> None:
    torch.set_num_threads(1)  # a small MLP: more threads only contend with the env's container
    with make_envs() as envs:
        finished = train(envs)
    print(f"{len(finished)} episodes; first 20 averaged {np.mean(finished[:20]):.1f}, "
          f"last 20 {np.mean(finished[-20:]):.1f}")


if __name__ == "__main__":
    main()
