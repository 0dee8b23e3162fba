"""Exercise the SDP broker with the nats-py client.

Usage: python3 nats_py_client.py nats://127.0.0.1:PORT

Prints one result line per check; broker/tests/nats_py.rs asserts on them.
The Rust side serves `rust.echo` and listens on `py.data.>`.
"""

import asyncio
import sys
import time

try:
    import nats
    from nats.errors import NoRespondersError
except ImportError as exc:  # reported by the Rust test as a failure
    print(f"IMPORT-ERROR {exc}", flush=True)
    sys.exit(3)


async def main(url: str) -> None:
    nc = await nats.connect(url, connect_timeout=5, allow_reconnect=False)
    v = nc.connected_server_version
    print(f"CONNECTED {v.major}.{v.minor}.{v.patch}", flush=True)

    # Wildcard subscription, publish, receive.
    sub = await nc.subscribe("py.data.*")
    await nc.publish("py.data.one", b"first")
    await nc.publish("py.data.deep.not", b"ignored by *")
    await nc.publish("py.data.two", b"second")
    for _ in range(2):
        msg = await sub.next_msg(timeout=5)
        print(f"MSG {msg.subject} {msg.data.decode()}", flush=True)

    # Headers.
    await nc.publish("py.data.hdr", b"with-headers", headers={"X-Sdp": "yes"})
    msg = await sub.next_msg(timeout=5)
    print(f"HDR {msg.subject} {msg.headers.get('X-Sdp')} {msg.data.decode()}", flush=True)

    # Request-reply served by this client.
    async def responder(msg):
        await msg.respond(b"py:" + msg.data)

    await nc.subscribe("py.svc", cb=responder)
    resp = await nc.request("py.svc", b"ping", timeout=5)
    print(f"REPLY {resp.data.decode()}", flush=True)

    # Request-reply served by the Rust (async-nats) client.
    resp = await nc.request("rust.echo", b"hello", timeout=5)
    print(f"RUST-REPLY {resp.data.decode()}", flush=True)

    # No responders: an immediate error, not a timeout.
    started = time.monotonic()
    try:
        await nc.request("nobody.home", b"anyone?", timeout=10)
        print("NO-RESPONDERS missing", flush=True)
    except NoRespondersError:
        elapsed = time.monotonic() - started
        print(f"NO-RESPONDERS ok {'fast' if elapsed < 2 else 'slow'}", flush=True)

    # Queue group: each message to exactly one member.
    counts = {"a": 0, "b": 0}

    def member(name):
        async def cb(_msg):
            counts[name] += 1

        return cb

    await nc.subscribe("py.work", queue="workers", cb=member("a"))
    await nc.subscribe("py.work", queue="workers", cb=member("b"))
    for i in range(20):
        await nc.publish("py.work", str(i).encode())
    await nc.flush(timeout=5)
    for _ in range(50):
        if counts["a"] + counts["b"] >= 20:
            break
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.1)
    print(f"QUEUE total={counts['a'] + counts['b']}", flush=True)

    await nc.drain()
    print("DONE", flush=True)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
