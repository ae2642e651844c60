"""The output files: written from buffered lines, gzip compressed in a thread, renamed into place only
when complete; profiles as Engage query result pages."""

from __future__ import annotations

import gzip
import os
import queue
import threading
from pathlib import Path
from typing import BinaryIO

EVENTS_FILE = "events.jsonl"
EVENTS_FILE_GZ = "events.jsonl.gz"
PROFILES_FILE = "profiles.json"
UPDATES_FILE = "profile_updates.jsonl"

ENGAGE_PAGE_SIZE = 1000  # profiles per Engage page, as the Engage API pages its results
GZIP_LEVEL = 6


class _Compressor:
    """Gzip (no name, mtime 0: the same lines give the same bytes) in a thread, fed through a bounded queue;
    zlib releases the GIL, so compression runs beside the generator."""

    def __init__(self, raw: BinaryIO, name: str):
        self.gz = gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=GZIP_LEVEL, mtime=0)
        self.queue: queue.Queue[bytes | None] = queue.Queue(maxsize=4)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._pump, name=f"gzip {name}", daemon=True)
        self.thread.start()

    def _pump(self) -> None:
        while (chunk := self.queue.get()) is not None:
            if self.error is None:
                try:
                    self.gz.write(chunk)
                except BaseException as exc:  # reported by flush/close on the caller's thread
                    self.error = exc

    def stop(self) -> None:
        if self.thread.is_alive():
            self.queue.put(None)
            self.thread.join()


class OutputFile:
    """A file written from buffered str lines, gzip or not, under a ``.part`` name until ``close``."""

    def __init__(self, path: Path, compress: bool = False):
        self.path = path
        self.tmp = path.with_name(path.name + ".part")
        self.raw = open(self.tmp, "wb")  # closed by close() or abort()
        self.buf: list[str] = []
        self.lines = 0
        self.compressor = _Compressor(self.raw, path.name) if compress else None

    def write(self, text: str) -> None:
        self.buf.append(text)

    def extend(self, lines: list[str]) -> None:
        self.buf.extend(lines)
        self.lines += len(lines)

    def flush(self) -> None:
        self._raise_compressor_error()
        if self.buf:
            # line by line: one joined str holding an emoji would take 4 bytes per character
            data = b"".join([line.encode("utf-8") for line in self.buf])
            self.buf.clear()
            if self.compressor is not None:
                self.compressor.queue.put(data)
            else:
                self.raw.write(data)

    def close(self) -> int:
        """Finish the file, rename it into place; its size in bytes."""
        self.flush()
        if self.compressor is not None:
            self.compressor.stop()
            self._raise_compressor_error()
            self.compressor.gz.close()
        self.raw.close()
        os.replace(self.tmp, self.path)
        return self.path.stat().st_size

    def abort(self) -> None:
        try:
            if self.compressor is not None:
                self.compressor.stop()
            self.raw.close()
        finally:
            self.tmp.unlink(missing_ok=True)

    def _raise_compressor_error(self) -> None:
        if self.compressor is not None and self.compressor.error is not None:
            raise self.compressor.error


class EngagePages:
    """Profiles written as Engage query results: a page of up to ENGAGE_PAGE_SIZE, then the next, so that no
    record grows with the data set."""

    def __init__(self, out: OutputFile, session_id: str, total: int):
        self.out, self.session_id, self.total = out, session_id, total
        self.count = self.pages = 0

    def add(self, profile: str) -> None:
        if self.count % ENGAGE_PAGE_SIZE == 0:
            if self.count:
                self._end_page()
            self.out.write('{"results": [\n')
        else:
            self.out.write(",\n")
        self.out.write(profile)
        self.count += 1

    def close(self) -> None:
        if not self.count:  # no profiles: still one (empty) page, as the API answers
            self.out.write('{"results": [')
        self._end_page()

    def _end_page(self) -> None:
        self.out.write(f'\n], "page": {self.pages}, "page_size": {ENGAGE_PAGE_SIZE}, "session_id": '
                       f'"{self.session_id}", "status": "ok", "total": {self.total}}}\n')
        self.pages += 1
