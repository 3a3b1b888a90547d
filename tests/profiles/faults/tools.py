"""Tools that misbehave on purpose (a fake only to force the fault)."""

import os
import time


def slow_lookup(profile_dir):
    time.sleep(1.5)
    return {"say": "The slow system says everything is fine."}


def hanging_lookup(profile_dir):
    time.sleep(8)  # far past its 1.5 s timeout
    return {"say": "never heard"}


def broken_lookup(profile_dir):
    raise ConnectionError("order database refused the connection")


def counted_lookup(profile_dir):
    """A side effect that must happen once per request: one line per run."""
    with open(os.environ["VOXLINE_TEST_COUNT_FILE"], "a") as f:
        f.write("ran\n")
    time.sleep(1.0)
    return {"say": "The refund is placed."}
