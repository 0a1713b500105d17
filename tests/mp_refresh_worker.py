"""One worker process of tests/test_multiprocess_refresh.py: sweep an app once, as a replica would."""

from __future__ import annotations

import asyncio
import sys

from refresher import platforms
from refresher.config import load_config
from refresher.daemon import build_platforms
from refresher.domain import SystemClock
from refresher.logging import configure_logging
from refresher.platforms.base import make_http_client
from refresher.refresh import Refresher
from refresher.store import open_store


async def main(config: str, app: str, owner: str) -> None:
    settings = load_config(config, credential_models=platforms.credential_models())
    configure_logging(settings.logging)
    clock = SystemClock()
    store = open_store(settings.store, clock)
    await store.open()
    http = make_http_client()
    try:
        refresher = Refresher(settings, store, build_platforms(settings, http, clock), clock, owner)
        result = await refresher.sweep(app)
        print(f"{owner} claimed={result.claimed} succeeded={result.succeeded} failed={result.failed}", flush=True)
    finally:
        await http.aclose()
        await store.close()


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:4]))
