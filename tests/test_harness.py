"""The test harness's own promises: listener ports away from the ephemeral
range, and a daemon whose port was taken after the pick moved to a new block
rather than failing the test that started it."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from tests.helpers import _ephemeral_low, free_port_block, make_daemon


def test_picked_ports_are_below_the_ephemeral_range() -> None:
    low = _ephemeral_low()
    for count in (1, 5, 64):
        base = free_port_block(count)
        assert base + count <= low, (base, count, low)


@pytest.mark.asyncio
async def test_a_daemon_whose_port_was_taken_after_the_pick_moves_to_free_ones(tmp_path: Path) -> None:
    daemon = make_daemon(tmp_path / "d")
    picked = daemon.base_port
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", picked + 2))  # another program, between pick and bind
        squatter.listen()
        await daemon.start()
        try:
            assert daemon.base_port != picked
            assert "address already in use" in daemon.stderr()  # the first try did fail
            assert f'listen = "127.0.0.1:{daemon.base_port}"' in daemon.config_path.read_text()
            with socket.create_connection(("127.0.0.1", daemon.base_port + 2), timeout=5):
                pass  # the daemon's disk service, on the new block
        finally:
            await daemon.stop()
