"""Tools that misbehave on purpose (a fake only to force the fault)."""

import time


def slow_lookup(profile_dir):
    time.sleep(1.5)
    return {"say": "The slow system says everything is fine."}


def hanging_lookup(profile_dir):
    time.sleep(8)  # far past its 1.5 s timeout
    return {"say": "never heard"}


def broken_lookup(profile_dir):
    raise ConnectionError("order database refused the connection")
