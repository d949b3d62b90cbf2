"""Nanochat-Lite: a one-process chat server for small language models on a CPU."""

import time as _time

# When this interpreter started running our code, as a wall-clock instant: the start-up
# banner counts from here (a shell that `exec`s the server keeps its own older process
# start, so /proc's start time can be minutes earlier).
IMPORTED_AT = _time.time()

__version__ = "0.1.0"
