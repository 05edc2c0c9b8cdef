"""A local source whose factory fails, as a broken environment package would."""


def make_env(**kwargs):
    raise RuntimeError("this environment is broken on purpose")
