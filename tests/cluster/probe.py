"""A TCP probe run inside a namespace (``ip netns exec NS python -m
tests.cluster.probe ...``), for tests/cluster/test_net.py. Prints one word.

* ``listen IP PORT``: accept connections and hold them; prints ``ready``
  once listening, then runs until killed.
* ``connect IP PORT SECONDS``: one connect; ``connected``, ``refused``
  (a RST came back), ``timeout`` (nothing came back) or ``error:<errno
  name>`` (the local stack said no, or an ICMP error arrived).
* ``silent IP PORT SECONDS``: connect, then after the partition (the
  parent writes a line on stdin) send data and wait for anything: ``silent``
  if neither an answer nor an error came back within SECONDS, else what
  came (``reset``, ``closed``, ``data``, ``error:<errno name>``).
"""

from __future__ import annotations

import errno
import socket
import sys
import time


def connect(ip: str, port: int, seconds: float) -> str:
    with socket.socket() as sock:
        sock.settimeout(seconds)
        try:
            sock.connect((ip, port))
        except TimeoutError:
            return "timeout"
        except ConnectionRefusedError:
            return "refused"
        except OSError as exc:
            return f"error:{errno.errorcode.get(exc.errno or 0, str(exc.errno))}"
        return "connected"


def silent(ip: str, port: int, seconds: float) -> str:
    with socket.create_connection((ip, port), timeout=5) as sock:
        print("connected", flush=True)
        sys.stdin.readline()  # the partition is in place
        sock.settimeout(seconds)
        try:
            sock.sendall(b"ping" * 256)
            data = sock.recv(1)
        except TimeoutError:
            return "silent"
        except ConnectionResetError:
            return "reset"
        except OSError as exc:
            return f"error:{errno.errorcode.get(exc.errno or 0, str(exc.errno))}"
        return "data" if data else "closed"


def listen(ip: str, port: int) -> None:
    server = socket.create_server((ip, port), reuse_port=True)
    print("ready", flush=True)
    held = []
    while True:
        conn, _ = server.accept()
        held.append(conn)  # never answer, never close
        time.sleep(0)


def main() -> None:
    cmd, ip, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
    if cmd == "listen":
        listen(ip, port)
    elif cmd == "connect":
        print(connect(ip, port, float(sys.argv[4])), flush=True)
    elif cmd == "silent":
        print(silent(ip, port, float(sys.argv[4])), flush=True)
    else:
        raise SystemExit(f"unknown probe {cmd!r}")


if __name__ == "__main__":
    main()
