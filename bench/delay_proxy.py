#!/usr/bin/env python3
"""A TCP proxy that adds a round-trip time to every exchange.

    delay_proxy.py [--starttls CERT KEY] LISTEN_PORT TARGET_PORT RTT_MS

Listens on 127.0.0.1:LISTEN_PORT and forwards each connection to
127.0.0.1:TARGET_PORT. Every chunk of bytes is held for RTT_MS / 2 in each
direction before it is passed on, in order, as a link of that latency would
(no bandwidth limit, no loss): a command and its reply take RTT_MS more
than without the proxy. Used by bench/run.sh (BENCH_RTT_MS) in front of
smtp-sink, for gazette and for smtp-source alike. Prints "listening" once
ready. Standard library only; runs until killed.

With --starttls, the proxy offers STARTTLS (RFC 3207) to its clients on
behalf of the SMTP server behind it (smtp-sink has no TLS), with the
certificate chain CERT and its private key KEY (PEM files). It stands at
the server's end of the delayed link: the server's greeting is passed on,
and its reply to the first EHLO gets a `250-STARTTLS` line before its last
line (the rest, PIPELINING included, unchanged). If the client's next
command is STARTTLS, the proxy answers `220` itself (the command is not
passed on), takes the client's side of the connection into TLS as the
server (Python's ssl, TLS 1.2 or 1.3 as the client offers) and from then
on passes the decrypted commands to the server and the server's encrypted
replies back; the client's EHLO over TLS goes to the server, whose reply no
longer offers STARTTLS. If the client sends anything else after EHLO, the
session goes on in plain text, passed through unchanged.

The delay applies to every byte between the client and the proxy, before
and after STARTTLS: the client's bytes are held RTT_MS / 2 before the proxy
reads them (the TLS records before they are decrypted), and the proxy's
bytes are held RTT_MS / 2 before the client gets them (the TLS records
after they are encrypted). So STARTTLS and its 220 take one round trip,
the TLS handshake what it takes on a link of that latency (one round trip
for TLS 1.3 before the client may send its EHLO, two for TLS 1.2), and
every later command and reply one round trip, as in plain text. Between
the proxy and the server there is no delay. With RTT_MS 0 the proxy only
terminates TLS. TLS 1.3 session tickets are issued (OpenSSL's default), so
a client may resume sessions on its later connections. Each handshake
prints a line "TLS: VERSION CIPHER [resumed]" on stderr, and a failed one
"TLS failed: " and the error.
"""

import asyncio
import socket
import ssl
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


class Link:
    """One direction of a link of latency `delay`: each chunk given to
    send() is handed to `deliver` (a coroutine function) `delay` seconds
    later, in order; b"" is the end of the stream, handed on last."""

    def __init__(self, delay, deliver):
        self.loop = asyncio.get_running_loop()
        self.delay = delay
        self.deliver = deliver
        self.queue = asyncio.Queue()
        self.task = asyncio.create_task(self._run())

    def send(self, data):
        self.queue.put_nowait((self.loop.time() + self.delay, data))

    async def _run(self):
        while True:
            due, data = await self.queue.get()
            wait = due - self.loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            await self.deliver(data)
            if not data:
                return


class StarttlsSession:
    """One client connection under --starttls: the server's end of the
    delayed link, which offers and terminates STARTTLS."""

    def __init__(self, context, delay, client_reader, client_writer, relay_reader, relay_writer):
        self.context = context
        self.client_reader = client_reader
        self.client_writer = client_writer
        self.relay_reader = relay_reader
        self.relay_writer = relay_writer
        # client -> proxy, and proxy -> client: the delayed link.
        self.up = Link(delay, self.from_client)
        self.down = Link(delay, self.to_client)
        # Plain text, line by line, until STARTTLS or another command after
        # the EHLO reply (then "passthrough").
        self.passthrough = False
        self.client_lines = b""
        self.relay_lines = b""
        self.reply = []  # the lines of the server's reply being read
        self.ehlo_sent = False  # an EHLO was passed on: rewrite its reply
        self.offered = False  # STARTTLS was offered: the next command counts
        # After STARTTLS.
        self.tls = None
        self.incoming = None
        self.outgoing = None
        self.handshaken = False
        self.pending = b""  # the server's bytes before the handshake ended
        self.failed = False  # TLS failed: the session is ending

    async def run(self):
        async def read(reader, handle):
            try:
                while True:
                    data = await reader.read(65536)
                    if not data:
                        break
                    handle(data)
            except (ConnectionError, OSError):
                pass
            finally:
                handle(b"")

        try:
            await asyncio.gather(
                read(self.client_reader, self.up.send),
                read(self.relay_reader, self.from_relay),
                self.up.task,
                self.down.task,
            )
        except (ConnectionError, OSError, ssl.SSLError):
            pass
        finally:
            self.client_writer.close()
            self.relay_writer.close()
            for task in (self.up.task, self.down.task):
                task.cancel()

    # -- client -> server (after the delay) --

    async def from_client(self, data):
        if not data:
            self.relay_writer.close()
            return
        if self.failed:
            return
        if self.tls is not None:
            self.incoming.write(data)
            self.pump()
        elif self.passthrough:
            self.relay_writer.write(data)
        else:
            self.client_lines += data
            while not self.passthrough and self.tls is None and b"\n" in self.client_lines:
                line, self.client_lines = self.client_lines.split(b"\n", 1)
                line += b"\n"
                command = line.strip().upper()
                if self.offered and command == b"STARTTLS":
                    self.start_tls()
                    # Anything the client sent after STARTTLS in the same
                    # chunk was sent before our 220: not TLS, dropped.
                    self.client_lines = b""
                    break
                if self.offered:
                    # Not taken up: plain text from here on.
                    self.passthrough = True
                    self.relay_writer.write(line + self.client_lines)
                    self.client_lines = b""
                    self.flush_lines()
                    break
                if command.startswith(b"EHLO"):
                    self.ehlo_sent = True
                self.relay_writer.write(line)
        await self.relay_writer.drain()

    def start_tls(self):
        self.down.send(b"220 2.0.0 Ready to start TLS\r\n")
        self.incoming = ssl.MemoryBIO()
        self.outgoing = ssl.MemoryBIO()
        self.tls = self.context.wrap_bio(self.incoming, self.outgoing, server_side=True)

    def pump(self):
        """Runs TLS on what came from the client: the handshake, then the
        decrypted bytes to the server; the TLS records it makes go back.
        A TLS error (say, the client refused the certificate) is printed
        and ends the session, after the alert has gone to the client."""
        try:
            self.run_tls()
        except ssl.SSLError as e:
            print(f"TLS failed: {e}", file=sys.stderr, flush=True)
            self.failed = True
            self.flush_tls()
            self.down.send(b"")
            self.relay_writer.close()

    def run_tls(self):
        if not self.handshaken:
            try:
                self.tls.do_handshake()
                self.handshaken = True
            except ssl.SSLWantReadError:
                pass
            finally:
                self.flush_tls()
            if not self.handshaken:
                return
            # One line per session, for the bench's report.
            print(
                f"TLS: {self.tls.version()} {self.tls.cipher()[0]}"
                + (" resumed" if self.tls.session_reused else ""),
                file=sys.stderr,
                flush=True,
            )
            if self.pending:
                data, self.pending = self.pending, b""
                self.encrypt(data)
        while True:
            try:
                data = self.tls.read(65536)
            except ssl.SSLWantReadError:
                break
            except ssl.SSLZeroReturnError:  # the client's close_notify
                self.relay_writer.close()
                break
            if not data:
                break
            self.relay_writer.write(data)
        self.flush_tls()

    def flush_tls(self):
        data = self.outgoing.read()
        if data:
            self.down.send(data)

    def encrypt(self, data):
        view = memoryview(data)
        while view:
            n = self.tls.write(view)
            view = view[n:]
        self.flush_tls()

    # -- server -> client (before the delay) --

    def from_relay(self, data):
        if self.failed:
            return
        if not data:
            if self.tls is not None and self.handshaken:
                try:
                    self.tls.unwrap()
                except ssl.SSLError:
                    pass
                self.flush_tls()
            else:
                self.flush_lines()
            self.down.send(b"")
        elif self.tls is not None:
            if self.handshaken:
                self.encrypt(data)
            else:
                self.pending += data
        elif self.passthrough:
            self.down.send(data)
        else:
            self.relay_lines += data
            while b"\n" in self.relay_lines:
                line, self.relay_lines = self.relay_lines.split(b"\n", 1)
                self.reply.append(line + b"\n")
                if line[3:4] != b"-":  # the last line of a reply
                    self.down.send(self.rewrite(self.reply))
                    self.reply = []

    def flush_lines(self):
        """Passes on what was read of a reply so far, as it came."""
        data = b"".join(self.reply) + self.relay_lines
        self.reply, self.relay_lines = [], b""
        if data:
            self.down.send(data)

    def rewrite(self, reply):
        """The reply with STARTTLS offered, if it is the first EHLO's."""
        if not self.ehlo_sent or self.offered:
            return b"".join(reply)
        self.ehlo_sent = False
        if not reply[0].startswith(b"250"):
            return b"".join(reply)
        self.offered = True
        if len(reply) == 1:
            return b"250-" + reply[0][4:] + b"250 STARTTLS\r\n"
        return b"".join(reply[:-1]) + b"250-STARTTLS\r\n" + reply[-1]

    async def to_client(self, data):
        if not data:
            try:
                self.client_writer.write_eof()
            except OSError:
                pass
            self.client_writer.close()
            return
        self.client_writer.write(data)
        await self.client_writer.drain()


async def main(listen_port, target_port, rtt_ms, starttls):
    delay = rtt_ms / 2000.0
    context = None
    if starttls:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(*starttls)

    async def serve(client_reader, client_writer):
        try:
            relay_reader, relay_writer = await asyncio.open_connection("127.0.0.1", target_port)
        except OSError:
            client_writer.close()
            return
        for w in (client_writer, relay_writer):
            w.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if context is not None:
            session = StarttlsSession(
                context, delay, client_reader, client_writer, relay_reader, relay_writer
            )
            await session.run()
            return
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
    args = sys.argv[1:]
    starttls = None
    if args[:1] == ["--starttls"]:
        starttls, args = args[1:3], args[3:]
        if len(starttls) != 2:
            sys.exit(__doc__)
    if len(args) != 3:
        sys.exit(__doc__)
    asyncio.run(main(int(args[0]), int(args[1]), float(args[2]), starttls))
