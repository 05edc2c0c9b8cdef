"""A policy file for SandboxModel: ``predict(observation) -> action``."""


def predict(observation):
    return int(observation[2] > 0)
