"""A child that ignores SIGINT and SIGHUP (only SIGKILL ends it)."""

import signal
import time

signal.signal(signal.SIGINT, signal.SIG_IGN)
signal.signal(signal.SIGHUP, signal.SIG_IGN)
print("ignoring SIGINT", flush=True)
while True:
    time.sleep(1)
