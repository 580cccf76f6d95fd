"""A child that blocks SIGINT, SIGTERM and SIGHUP: a signal sent to it stays
pending (tests.helpers.pending_signals), so a test can check at once, with
no waiting, that nothing signalled it. Only SIGKILL ends it."""

import signal
import time

signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM, signal.SIGHUP})
print("blocking SIGINT SIGTERM SIGHUP", flush=True)
while True:
    time.sleep(1)
