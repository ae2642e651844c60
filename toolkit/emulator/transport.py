"""The emulator as an httpx transport: each request goes straight to its handler, no socket, no server.

    emu = Emulator()                              # need not be started
    client = OneSignalClient(credentials, "https://onesignal.test", transport=transport(emu))

Everything happens as over HTTP: auth, rate limits, state, the request log and the injected faults
(503, 500, 429 without Retry-After, a dropped connection, a reset after applying), which raise the
errors httpx raises over a socket. Except: a hung request is an ``httpx.ReadTimeout`` at once (no
client timeout runs here), and added latency or a held request blocks the caller. Timeouts, hangs
and refused connections are tested against the real server.
"""

from __future__ import annotations

import httpx

from toolkit.emulator.api import Request
from toolkit.emulator.server import HUNG, NO_ANSWER, RESET, Emulator, wire


def transport(emulator: Emulator) -> httpx.MockTransport:
    """An httpx transport (sync and async clients alike) answered by ``emulator``'s handler."""

    def answer(request: httpx.Request) -> httpx.Response:
        # The path as sent on the wire, still percent-encoded: the API splits it before decoding.
        path, _, query = request.url.raw_path.decode("ascii").partition("?")
        response = emulator.dispatch(Request(request.method, path, query, request.headers, request.read()),
                                     wait_out_hangs=False)
        if response is NO_ANSWER:
            raise httpx.RemoteProtocolError("Server disconnected without sending a response.", request=request)
        if response == HUNG:
            raise httpx.ReadTimeout("the emulator hung this request", request=request)
        if response == RESET:
            raise httpx.ReadError("[Errno 104] Connection reset by peer", request=request)
        assert not isinstance(response, str)
        payload, headers = wire(response)
        return httpx.Response(response.status, headers=headers, content=payload, request=request)

    return httpx.MockTransport(answer)
