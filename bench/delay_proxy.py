#!/usr/bin/env python3
"""A TCP proxy that adds a round-trip time to every exchange.

    delay_proxy.py LISTEN_PORT TARGET_PORT RTT_MS

Listens on 127.0.0.1:LISTEN_PORT and forwards each connection to
127.0.0.1:TARGET_PORT. Every chunk of bytes is held for RTT_MS / 2 in each
direction before it is passed on, in order, as a link of that latency would
(no bandwidth limit, no loss): a command and its reply take RTT_MS more
than without the proxy. Used by bench/run.sh (BENCH_RTT_MS) in front of
smtp-sink, for gazette and for smtp-source alike. Prints "listening" once
ready. Standard library only; runs until killed.
"""

import asyncio
import socket
import sys


async def pipe(reader, writer, delay):
    """Copies reader to writer, each chunk `delay` seconds after it came."""
    loop = asyncio.get_running_loop()
    queue = asyncio.Queue()

    async def forward():
        while True:
            due, data = await queue.get()
            wait = due - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            if not data:
                break
            writer.write(data)
            await writer.drain()
        try:
            writer.write_eof()
        except OSError:
            pass

    forwarding = asyncio.create_task(forward())
    try:
        while True:
            data = await reader.read(65536)
            queue.put_nowait((loop.time() + delay, data))
            if not data:
                break
        await forwarding
    except (ConnectionError, OSError):
        forwarding.cancel()
    finally:
        writer.close()


async def main(listen_port, target_port, rtt_ms):
    delay = rtt_ms / 2000.0

    async def serve(client_reader, client_writer):
        try:
            relay_reader, relay_writer = await asyncio.open_connection("127.0.0.1", target_port)
        except OSError:
            client_writer.close()
            return
        for w in (client_writer, relay_writer):
            w.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        await asyncio.gather(
            pipe(client_reader, relay_writer, delay),
            pipe(relay_reader, client_writer, delay),
            return_exceptions=True,
        )

    server = await asyncio.start_server(serve, "127.0.0.1", listen_port, backlog=1000)
    print("listening", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    asyncio.run(main(int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])))
