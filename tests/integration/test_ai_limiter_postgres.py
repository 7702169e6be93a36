"""The Postgres-backed Gemini quota holds across processes: no window ever sees more than the quota."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path

import pytest

from tradeengine.ai.limiter import MemoryQuota, PostgresQuota, build_rate_limiter
from tradeengine.store.engine import create_engine

pytestmark = pytest.mark.postgres

WORKER = """
import asyncio, json, sys, time
from tradeengine.ai.limiter import PostgresQuota, PriorityRateLimiter
from tradeengine.store.engine import create_engine

async def main(url, limit, window, count):
    engine = create_engine(url)
    quota = PostgresQuota(engine, "test", limit=limit, window_s=window)
    await quota._ensure_row()  # connected and ready
    limiter = PriorityRateLimiter(quota)
    print("ready", flush=True)
    await asyncio.to_thread(sys.stdin.readline)  # everyone starts together
    grants = await asyncio.gather(*(limiter.acquire() for _ in range(count)))
    await engine.dispose()
    print(json.dumps(grants))

asyncio.run(main(sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])))
"""

LIMIT, WINDOW, PROCESSES, PER_PROCESS = 5, 2.0, 3, 5


async def test_quota_holds_across_processes(postgres_url: str) -> None:
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            WORKER,
            postgres_url,
            str(LIMIT),
            str(WINDOW),
            str(PER_PROCESS),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            cwd=Path(__file__).parents[2],
        )
        for _ in range(PROCESSES)
    ]
    for proc in procs:  # wait until every worker has imported and connected
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 120)
        assert line.strip() == b"ready", line
    for proc in procs:
        assert proc.stdin is not None
        proc.stdin.write(b"go\n")
        await proc.stdin.drain()
    outputs = await asyncio.wait_for(asyncio.gather(*(p.communicate() for p in procs)), 90)
    grants: list[float] = []
    for proc, (out, err) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, err.decode()[-2000:]
        grants.extend(json.loads(out.decode().strip().splitlines()[-1]))
    grants.sort()
    total = PROCESSES * PER_PROCESS
    assert len(grants) == total  # nobody was dropped
    # In any window of WINDOW seconds (grant times are the database's clock) at most LIMIT grants.
    for i in range(len(grants) - LIMIT):
        assert grants[i + LIMIT] - grants[i] >= WINDOW, (i, grants)
    # And the quota was used, not just respected: 15 grants at 5 per 2 s take about 4 s.
    span = grants[-1] - grants[0]
    assert 2 * WINDOW <= span < 2 * WINDOW + 3.0


async def test_build_rate_limiter_picks_the_backend(postgres_url: str, sqlite_url: str) -> None:
    pg = create_engine(postgres_url)
    lite = create_engine(sqlite_url)
    try:
        assert isinstance(build_rate_limiter(limit=3, engine=pg).backend, PostgresQuota)
        assert isinstance(build_rate_limiter(limit=3, engine=lite).backend, MemoryQuota)
        limiter = build_rate_limiter(limit=2, window_s=30, engine=pg, name="unit")
        await limiter.acquire()
        await limiter.acquire()
        attempt = await limiter.backend.try_acquire()
        assert not attempt.granted
        assert 29 < attempt.retry_after_s <= 30
    finally:
        await pg.dispose()
        await lite.dispose()


async def test_postgres_permit_holds_and_releases(postgres_url: str) -> None:
    engine = create_engine(postgres_url)
    try:
        limiter = build_rate_limiter(limit=1, window_s=0.5, engine=engine, name="permit")
        async with limiter.permit(hold_s=60):
            await asyncio.sleep(0.6)  # past the window: still held, because the request is in flight
            assert not (await limiter.backend.try_acquire()).granted
        released = time.time()
        granted = await limiter.acquire()
        assert granted >= released + 0.5 - 0.05  # a full window after the request ended
    finally:
        await engine.dispose()
