"""The C core's jobs (core/copy.c: copy and hash) and a mirror's quiesce and
compare rebuild, against a real nvmf_tgt (the mirror tests' replicas).

Each test writes known data through attached controllers, runs the job in
the poller, and checks the outcome byte for byte against what Python
computes from direct reads: the copy made the destination equal to the
source and wrote only what it had to, the SHA-256 is hashlib's over the
same bytes, a cancel stopped within one chunk.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
from typing import Any

import pytest

from spdk_ffi.mirror import LegMode, RebuildState
from tests.spdk import test_mirror
from tests.spdk.test_mirror import BLOCK, BLOCKS, Env

pytestmark = pytest.mark.asyncio

# The mirror tests' replicas and environment, under this module's own fixtures.
replicas = test_mirror.replicas
env = test_mirror.env

CHUNK = 256 << 10
CHUNK_BLOCKS = CHUNK // BLOCK


async def fill(env: Env, name: str, data: bytes) -> None:
    """Write ``data`` from LBA 0 through controller ``name``."""
    from spdk_ffi.native import Io, IoKind

    buf = env.buf(CHUNK)
    for offset in range(0, len(data), CHUNK):
        piece = data[offset : offset + CHUNK]
        buf.view[: len(piece)] = piece
        await env.ini.io(name, [Io(IoKind.WRITE, 1, lba=offset // BLOCK, nblocks=len(piece) // BLOCK, buf=buf)])


async def content(env: Env, name: str, blocks: int = BLOCKS) -> bytes:
    from spdk_ffi.native import Io, IoKind

    buf = env.buf(CHUNK)
    out = bytearray()
    for lba in range(0, blocks, CHUNK_BLOCKS):
        await env.ini.io(name, [Io(IoKind.READ, 1, lba=lba, nblocks=CHUNK_BLOCKS, buf=buf)])
        out += bytes(buf.view)
    return bytes(out)


def volume(seed: int, zero_chunks: set[int] = frozenset()) -> bytearray:  # type: ignore[assignment]
    rng = random.Random(seed)
    data = bytearray(rng.randbytes(BLOCKS * BLOCK))
    for chunk in zero_chunks:
        data[chunk * CHUNK : (chunk + 1) * CHUNK] = bytes(CHUNK)
    return data


def jobs(env: Env) -> Any:
    from spdk_ffi.jobs import NativeJobs

    return NativeJobs(env.backend)


async def test_a_compare_copy_writes_only_the_chunks_that_differ(env: Env) -> None:
    src, dst = await env.attach("src", "r1"), await env.attach("dst", "r2")
    base = volume(1)
    await fill(env, "dst", bytes(base))
    changed = {3, 17, 40, 41}
    new = bytearray(base)
    for chunk in changed:
        new[chunk * CHUNK : chunk * CHUNK + 100] = random.Random(chunk).randbytes(100)
    new[50 * CHUNK : 51 * CHUNK] = bytes(CHUNK)  # a chunk that became zeroes is written too
    await fill(env, "src", bytes(new))
    result = await jobs(env).copy(src, dst, BLOCKS, compare=True, chunk_bytes=CHUNK).done
    assert result.state == RebuildState.COMPLETE and result.error == ""
    assert result.chunks_written == len(changed) + 1
    assert result.chunks_written + result.chunks_skipped == BLOCKS // CHUNK_BLOCKS
    assert result.bytes_done == result.bytes_total == BLOCKS * BLOCK
    assert await content(env, "dst") == bytes(new)


async def test_a_copy_onto_zeroes_skips_zero_chunks(env: Env) -> None:
    src, dst = await env.attach("src", "r1"), await env.attach("dst", "r3")
    await fill(env, "dst", bytes(BLOCKS * BLOCK))
    zero = {0, 5, 6, 7, 100}
    data = volume(2, zero)
    await fill(env, "src", bytes(data))
    result = await jobs(env).copy(src, dst, BLOCKS, skip_zero=True, chunk_bytes=CHUNK).done
    assert result.state == RebuildState.COMPLETE
    assert (result.chunks_written, result.chunks_skipped) == (BLOCKS // CHUNK_BLOCKS - len(zero), len(zero))
    assert await content(env, "dst") == bytes(data)


async def test_the_hash_is_sha256_of_the_content_and_counts_what_differs_from_a_base(env: Env) -> None:
    a, b = await env.attach("a", "r1"), await env.attach("b", "r2")
    data = volume(3, {9})
    await fill(env, "a", bytes(data))
    other = bytearray(data)
    other[12 * CHUNK] ^= 0xFF  # one byte in one chunk
    await fill(env, "b", bytes(other))
    j = jobs(env)
    plain, against = await asyncio.gather(
        j.hash(a, BLOCKS, chunk_bytes=CHUNK).done, j.hash(b, BLOCKS, base=a, chunk_bytes=CHUNK).done
    )
    assert plain.state == against.state == RebuildState.COMPLETE
    assert plain.digest == hashlib.sha256(bytes(data)).hexdigest()
    assert against.digest == hashlib.sha256(bytes(other)).hexdigest() != plain.digest
    assert plain.chunks_differ == BLOCKS // CHUNK_BLOCKS - 1  # no base: the chunks that are not all zero
    assert against.chunks_differ == 1


async def test_a_sha512_hash_is_hashlibs_over_the_same_bytes(env: Env) -> None:
    from spdk_ffi.errors import InvalidOptions

    a = await env.attach("a", "r1")
    data = volume(4, {2, 3})
    await fill(env, "a", bytes(data))
    j = jobs(env)
    long, short = await asyncio.gather(
        j.hash(a, BLOCKS, chunk_bytes=CHUNK, algorithm="sha512").done, j.hash(a, BLOCKS, chunk_bytes=CHUNK).done
    )
    assert long.state == short.state == RebuildState.COMPLETE
    assert long.digest == hashlib.sha512(bytes(data)).hexdigest()  # 64 bytes, all of them
    assert short.digest == hashlib.sha256(bytes(data)).hexdigest()  # 32 bytes, as before
    # A prefix: what an image smaller than its lvol holds.
    half = await j.hash(a, BLOCKS // 2, chunk_bytes=CHUNK, algorithm="sha512").done
    assert half.digest == hashlib.sha512(bytes(data[: len(data) // 2])).hexdigest()
    with pytest.raises(InvalidOptions, match="algorithm"):
        j.hash(a, BLOCKS, algorithm="md5")


async def test_a_hash_reads_ahead_in_order_and_a_cancel_stops_it_within_the_chunks_in_flight(env: Env) -> None:
    a = await env.attach("a", "r1")
    data = volume(5, {0, 7})
    await fill(env, "a", bytes(data))
    j = jobs(env)
    # Chunks of every size the read-ahead can meet, a last one shorter than the others included.
    for chunk in (CHUNK, 3 * BLOCK, BLOCK):
        result = await j.hash(a, BLOCKS - 5, chunk_bytes=chunk, algorithm="sha512").done
        assert result.digest == hashlib.sha512(bytes(data[: (BLOCKS - 5) * BLOCK])).hexdigest(), chunk
        assert result.bytes_done == result.bytes_total == (BLOCKS - 5) * BLOCK
    job = j.hash(a, BLOCKS, chunk_bytes=CHUNK, rate_bytes_per_s=4 * CHUNK)  # ~8 s for 32 MiB
    while job.status().bytes_done < 2 * CHUNK:
        await asyncio.sleep(0.05)
    seen = job.status().bytes_done
    await job.cancel()
    result = await job.done
    assert result.state == RebuildState.CANCELLED and not result.digest
    assert result.bytes_done <= seen + 2 * CHUNK  # the two chunks in flight, no more


async def test_a_cancelled_job_stops_within_one_chunk(env: Env) -> None:
    src, dst = await env.attach("src", "r1"), await env.attach("dst", "r3")
    job = jobs(env).copy(src, dst, BLOCKS, chunk_bytes=CHUNK, rate_bytes_per_s=4 * CHUNK)  # ~8 s for 32 MiB
    while job.status().bytes_done < 2 * CHUNK:
        await asyncio.sleep(0.05)
    seen = job.status().bytes_done
    await job.cancel()
    result = await job.done
    assert result.state == RebuildState.CANCELLED and result.bytes_done < result.bytes_total
    assert result.bytes_done <= seen + CHUNK  # the chunk in flight, no more


async def test_a_job_on_a_detached_controller_is_refused_by_name(env: Env) -> None:
    from spdk_ffi.errors import InvalidOptions, NvmeError

    src = await env.attach("src", "r1")
    with pytest.raises(InvalidOptions, match="blocks > 0"):
        jobs(env).hash(src, 0)
    job = jobs(env).hash(src, BLOCKS * 4, chunk_bytes=CHUNK)  # more blocks than the namespace has
    with pytest.raises(NvmeError, match="fewer than the"):
        await job.done


async def test_quiesce_holds_new_writes_until_resume(env: Env) -> None:
    from spdk_ffi.native import Io, IoKind

    m = await env.mirror("m-quiesce", [("a", "r1"), ("b", "r2")])
    buf = env.buf(BLOCK)
    buf.view[:] = b"\x11" * BLOCK
    await m.io([Io(IoKind.WRITE, 0, lba=9, nblocks=1, buf=buf)])
    held_before = m.counters()["held_writes"]
    await m.quiesce()
    write = asyncio.ensure_future(m.io([Io(IoKind.WRITE, 0, lba=9, nblocks=1, buf=env.buf(BLOCK))]))
    while m.counters()["held_writes"] == held_before:  # the write reached the mirror and was held
        await asyncio.sleep(0.01)
    reader = env.buf(BLOCK)
    await m.io([Io(IoKind.READ, 0, lba=9, nblocks=1, buf=reader)])  # reads go on
    assert bytes(reader.view) == b"\x11" * BLOCK and not write.done()
    await m.resume()
    await write
    await m.io([Io(IoKind.READ, 0, lba=9, nblocks=1, buf=reader)])
    assert bytes(reader.view) == bytes(BLOCK)  # the held write (zeroes) went through after resume


async def test_a_compare_rebuild_writes_only_what_the_destination_lacks(env: Env) -> None:
    m = await env.mirror("m-cmp", [("a", "r1")])
    data = volume(4)
    await fill(env, "a", bytes(data))
    c = await env.attach("c", "r3")
    older = bytearray(data)
    older[7 * CHUNK : 8 * CHUNK] = bytes(CHUNK)  # what c lacks: one chunk
    await fill(env, "c", bytes(older))
    await m.add_leg("c", c, LegMode.WO)
    rebuild = m.start_rebuild("c", chunk_bytes=CHUNK, compare=True)
    status = await asyncio.wait_for(rebuild.done, 60)
    assert status.state == RebuildState.COMPLETE
    counters = m.counters()
    assert counters["rebuild_chunks_same"] == BLOCKS // CHUNK_BLOCKS - 1
    assert await env.read_replica("r3") == bytes(data)
