"""A webhook receiver and an SMTP server on 127.0.0.1 (port 0), for the alert tests: each keeps what
it received. The webhook can answer 500 or hang (never answer) on demand."""

from __future__ import annotations

import base64
import json
import socketserver
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from toolkit.emulator.server import POLL_SECONDS  # a short poll: a quick stop


class WebhookReceiver:
    def __init__(self, path: str = "/services/T000/B000/hook"):
        self.path, self.mode, self.received = path, "ok", []       # mode: ok | 500 | hang
        self.released = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if receiver.mode == "hang":
                    receiver.released.wait(30)
                    return
                if receiver.mode == "500":
                    self.send_response(500)
                    self.end_headers()
                    return
                receiver.received.append({"path": self.path, "body": json.loads(body)})
                self.send_response(200)
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, args=(POLL_SECONDS,), daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}{self.path}"

    @property
    def texts(self) -> list[str]:
        return [r["body"]["text"] for r in self.received]

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.released.set()
        self.server.shutdown()
        self.server.server_close()


class SmtpServer:
    """Enough of SMTP for smtplib: EHLO (advertising AUTH PLAIN), AUTH, MAIL, RCPT, DATA, QUIT."""

    def __init__(self):
        self.messages: list[dict] = []
        self.logins: list[tuple[str, str]] = []
        server = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self):
                self.say("220 localhost test SMTP")
                envelope: dict = {"to": []}
                while line := self.rfile.readline():
                    command = line.decode().rstrip("\r\n")
                    verb = command.split(" ", 1)[0].upper()
                    if verb == "EHLO":
                        self.say("250-localhost", "250-AUTH PLAIN", "250 OK")
                    elif verb == "HELO" or verb in ("RSET", "NOOP"):
                        self.say("250 OK")
                    elif verb == "AUTH":
                        _, user, password = base64.b64decode(command.split()[2]).decode().split("\0")
                        server.logins.append((user, password))
                        self.say("235 authenticated")
                    elif verb == "MAIL":
                        envelope = {"from": command[10:].strip("<>"), "to": []}
                        self.say("250 OK")
                    elif verb == "RCPT":
                        envelope["to"].append(command[8:].strip("<>"))
                        self.say("250 OK")
                    elif verb == "DATA":
                        self.say("354 go on")
                        data = []
                        while (part := self.rfile.readline()) not in (b".\r\n", b""):
                            data.append(part.decode())
                        server.messages.append({**envelope, "data": "".join(data)})
                        self.say("250 queued")
                    elif verb == "QUIT":
                        self.say("221 bye")
                        return
                    else:
                        self.say("502 not implemented")

            def say(self, *lines):
                self.wfile.write("".join(f"{line}\r\n" for line in lines).encode())

        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, args=(POLL_SECONDS,), daemon=True)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()
