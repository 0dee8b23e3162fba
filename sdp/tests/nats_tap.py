"""Taps subjects on a NATS server with nats-py, an independent client, and
prints every message as one JSON line: {"sub", "subject", "data"}.

usage: nats_tap.py URL SUBJECT [SUBJECT ...]
Prints READY once subscribed and flushed."""

import asyncio
import json
import sys

import nats


async def main() -> None:
    url, subjects = sys.argv[1], sys.argv[2:]
    nc = await nats.connect(url, name="nats-py-tap", allow_reconnect=False)

    def printer(pattern):
        async def on_msg(msg):
            print(
                json.dumps(
                    {
                        "sub": pattern,
                        "subject": msg.subject,
                        "data": msg.data.decode("utf-8", "replace"),
                    }
                ),
                flush=True,
            )

        return on_msg

    for pattern in subjects:
        await nc.subscribe(pattern, cb=printer(pattern))
    await nc.flush()
    print("READY", flush=True)
    await asyncio.Event().wait()


asyncio.run(main())
