"""A child that writes given lines to stdout, then sleeps until signalled.

``writer.py LENGTH COUNT``: COUNT lines of LENGTH bytes each ('x' * LENGTH,
prefixed with the line number), then one line "done".
"""

import sys
import time

length, count = int(sys.argv[1]), int(sys.argv[2])
out = sys.stdout
for i in range(count):
    prefix = f"{i}:"
    out.write(prefix + "x" * (length - len(prefix)) + "\n")
out.write("done\n")
out.flush()
while True:
    time.sleep(1)
