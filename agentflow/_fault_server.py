"""A fault-injection server: a real OpenAI-compatible HTTP server on 127.0.0.1, scriptable per request.

Unlike `FakeOpenAIServer` (an `httpx.MockTransport`, no socket), it listens on a free loopback port in a
background thread with its own event loop, so real connections, pools, timeouts and resets happen:

    with FaultServer([Fault.status(503), Fault.rate_limited(retry_after="1"), "Paris"]) as server:
        client = ModelClient(server.url, "m")          # server.url ends in /v1
        ...
        server.hits                                    # completion requests that reached the server

Each POST to `.../chat/completions` or `.../completions` takes the next `Fault` of the script (then `then`,
or an HTTP 599 saying the script ran out), or `handler(seen)` decides. The `Fault` class methods name every
misbehaviour (slow, hang, HTTP errors, a reset mid-body, garbage bodies, endless or nested output, missing
logprobs, the server killed and restarted). What it saw is recorded: `seen`, `hits`, `delivered` (the usage
of every completion written out in full) and `body_bytes_sent`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import socket
import struct
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

__all__ = ["Fault", "FaultServer", "SeenRequest"]

HOST = "127.0.0.1"
_CHUNK = 64 * 1024


@dataclass(frozen=True, slots=True)
class Fault:
    """One scripted answer of a `FaultServer`; build it with the class methods (`Fault.ok("x")`, ...).

    `usage` is (prompt_tokens, completion_tokens) with -1 meaning one per word of `text`, or None for
    no usage at all. `logprobs=False` leaves them out even when the request asked for them.
    """

    text: str = "ok"
    status_code: int = 200
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes | None = None
    delay_s: float = 0.0
    no_answer: bool = False
    close_silently: bool = False
    reset_after_bytes: int | None = None
    logprobs: bool = True
    prob: float = 0.9
    finish_reason: str = "stop"
    usage: tuple[int, int] | None = (10, -1)
    stream_bytes: int | None = None
    kill_server: bool = False
    restart_after_s: float | None = None
    error_message: str = "injected fault"

    @staticmethod
    def ok(text: str = "ok", **fields: Any) -> Fault:
        """A completion of `text` (logprobs when asked; `fields` override any other field)."""
        return Fault(text=text, **fields)

    @staticmethod
    def slow(delay_s: float, text: str = "ok") -> Fault:
        """A completion of `text` after `delay_s` seconds."""
        return Fault(text=text, delay_s=delay_s)

    @staticmethod
    def hang() -> Fault:
        """No answer at all until the client gives up (its timeout) or the server stops."""
        return Fault(no_answer=True)

    @staticmethod
    def status(code: int, message: str = "injected fault", *, headers: Iterable[tuple[str, str]] = ()) -> Fault:
        """HTTP `code` with an OpenAI-style error body carrying `message`."""
        return Fault(status_code=code, error_message=message, headers=tuple(headers))

    @staticmethod
    def rate_limited(retry_after: str | None = None, message: str = "too many requests") -> Fault:
        """HTTP 429, with a Retry-After header when `retry_after` is given (seconds or an HTTP date)."""
        headers = (("Retry-After", retry_after),) if retry_after is not None else ()
        return Fault(status_code=429, error_message=message, headers=headers)

    @staticmethod
    def reset_mid_body(text: str = "ok") -> Fault:
        """The status line, the headers and half of a completion's body, then a TCP reset."""
        return Fault(text=text, reset_after_bytes=-1)

    @staticmethod
    def drop() -> Fault:
        """The connection is closed after the request is read, without any answer."""
        return Fault(close_silently=True)

    @staticmethod
    def html(status: int = 200) -> Fault:
        """An HTML page instead of a completion (a proxy's or a web server's)."""
        page = b"<!DOCTYPE html><html><body><h1>It works!</h1></body></html>"
        return Fault(status_code=status, body=page, headers=(("Content-Type", "text/html"),))

    @staticmethod
    def empty(status: int = 200) -> Fault:
        """An empty body."""
        return Fault(status_code=status, body=b"")

    @staticmethod
    def truncated_json() -> Fault:
        """A completion's JSON cut in the middle (with a Content-Length that matches the cut body)."""
        return Fault(body=b'{"id": "x", "object": "chat.completion", "choices": [{"index": 0, "message": {"rol')

    @staticmethod
    def endless(text: str = '{"answer": "') -> Fault:
        """Output that never ends: `text` then the same letter until max_tokens, finish_reason "length"."""
        return Fault(text=text + "a" * 400, finish_reason="length", usage=(10, -2))

    @staticmethod
    def no_logprobs(text: str = "ok") -> Fault:
        """A completion without logprobs, even when the request asked for them."""
        return Fault(text=text, logprobs=False)

    @staticmethod
    def huge_body(n_bytes: int) -> Fault:
        """A chunked body of `n_bytes`: the start of a completion whose text never closes (a bad actor)."""
        return Fault(stream_bytes=n_bytes)

    @staticmethod
    def deep_json(depth: int, *, in_text: bool = False) -> Fault:
        """JSON nested `depth` levels deep: the whole body, or (`in_text`) the completion's text."""
        nested = "[" * depth + "]" * depth
        if in_text:
            return Fault(text=nested, usage=(10, 1))
        return Fault(body=('{"choices": [{"index": 0, "message": ' + nested + "}]}").encode())

    @staticmethod
    def kill(restart_after_s: float | None = 0.0) -> Fault:
        """Kill the server on this request: every connection reset, the port closed. It listens again on
        the same port after `restart_after_s` seconds (None: it stays down until `restart()`)."""
        return Fault(kill_server=True, restart_after_s=restart_after_s)


@dataclass(frozen=True, slots=True)
class SeenRequest:
    """A completion request as the server received it: `n` counts from 0 in order of arrival."""

    n: int
    method: str
    path: str
    headers: dict[str, str]
    body: Any


FaultLike = Fault | str
Handler = Callable[[SeenRequest], FaultLike]


class FaultServer:
    """A scriptable OpenAI-compatible server on 127.0.0.1 (a free port), in a background thread.

    Use it as a context manager (`with` or `async with`), or call `start()` and `stop()`. Thread-safe:
    the test may read `seen`, `hits`... and call `kill()` / `restart()` while clients run.
    """

    def __init__(
        self,
        script: Iterable[FaultLike] = (),
        *,
        handler: Handler | None = None,
        then: FaultLike | None = None,
        model: str = "fault-model",
        port: int = 0,
    ) -> None:
        self._script = [_as_fault(f) for f in script]
        self._handler = handler
        self._then = None if then is None else _as_fault(then)
        self.model = model
        self.port = port
        self._lock = threading.Lock()
        self._seen: list[SeenRequest] = []
        self._delivered: list[tuple[int, int]] = []
        self._bytes_sent: list[int] = []
        self._in_flight = 0
        self.max_in_flight_seen = 0
        self.connections = 0
        self.kills = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None
        self._conns: dict[asyncio.StreamWriter, asyncio.Task[Any] | None] = {}
        self._background: set[asyncio.Task[None]] = set()

    # --- what it saw -----------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """The base URL to give a client: http://127.0.0.1:PORT/v1."""
        return f"http://{HOST}:{self.port}/v1"

    @property
    def seen(self) -> list[SeenRequest]:
        with self._lock:
            return list(self._seen)

    @property
    def requests(self) -> list[Any]:
        """The JSON bodies of the completion requests, in order of arrival."""
        return [s.body for s in self.seen]

    @property
    def hits(self) -> int:
        """Completion requests that reached the server (read in full), whatever happened next."""
        with self._lock:
            return len(self._seen)

    @property
    def delivered(self) -> list[tuple[int, int]]:
        """(prompt_tokens, completion_tokens) of every completion written out in full, with its usage."""
        with self._lock:
            return list(self._delivered)

    @property
    def body_bytes_sent(self) -> list[int]:
        """Bytes of body written for each answer, in order (a client that gives up early cuts it short)."""
        with self._lock:
            return list(self._bytes_sent)

    async def wait_for_hits(self, n: int, timeout_s: float = 10.0) -> None:
        """Wait until at least `n` completion requests have reached the server (TimeoutError after `timeout_s`)."""
        for _ in range(max(1, int(timeout_s / 0.005))):
            if self.hits >= n:
                return
            await asyncio.sleep(0.005)
        raise TimeoutError(f"the FaultServer saw {self.hits} request(s) in {timeout_s} s, not {n}")

    def push(self, *faults: FaultLike) -> None:
        """Append answers to the script."""
        with self._lock:
            self._script.extend(_as_fault(f) for f in faults)

    # --- lifecycle -------------------------------------------------------------------------------

    def start(self) -> FaultServer:
        """Start listening (on a free port the first time, on the same port after a `stop()`)."""
        if self._thread is not None:
            return self
        loop = asyncio.new_event_loop()
        ready = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(loop)
            loop.call_soon(ready.set)
            loop.run_forever()
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

        self._loop = loop
        self._thread = threading.Thread(target=run, name=f"FaultServer:{self.model}", daemon=True)
        self._thread.start()
        ready.wait()
        self._call(self._listen())
        return self

    def stop(self) -> None:
        """Reset every connection, stop listening and end the thread. The port number is kept."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        self._call(self._close(reset=True, everything=True))
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        self._loop = self._thread = None

    def kill(self) -> None:
        """Kill it now, as a crash would: every connection reset, the port closed (the thread stays)."""
        self._call(self._close(reset=True))
        with self._lock:
            self.kills += 1

    def restart(self) -> None:
        """Listen again on the same port after a `kill()`."""
        self._call(self._listen())

    def __enter__(self) -> FaultServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def __aenter__(self) -> FaultServer:
        return self.start()

    async def __aexit__(self, *exc: object) -> None:
        await asyncio.to_thread(self.stop)

    def __repr__(self) -> str:
        return f"FaultServer({self.url!r}, hits={self.hits})"

    def _call(self, coro: Any) -> Any:
        if self._loop is None or threading.current_thread() is self._thread:
            coro.close()
            raise RuntimeError(
                "the FaultServer is not running (call start(), or use it as a context manager), or this was "
                "called from its own handler (script Fault.kill() instead)"
            )
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=30)

    # --- inside the server's thread --------------------------------------------------------------

    async def _listen(self) -> None:
        if self._server is not None:
            return
        self._server = await asyncio.start_server(self._serve, HOST, self.port, reuse_address=True, backlog=1024)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _close(self, *, reset: bool, everything: bool = False) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
        for writer, task in list(self._conns.items()):
            _abort(writer, reset=reset)
            if task is not None:
                task.cancel()
        self._conns.clear()
        if everything:  # a restart still waiting too
            for task in list(self._background):
                task.cancel()

    async def _kill_later(self, restart_after_s: float | None) -> None:
        await self._close(reset=True)
        with self._lock:
            self.kills += 1
        if restart_after_s is not None:
            await asyncio.sleep(restart_after_s)
            await self._listen()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._conns[writer] = asyncio.current_task()
        with self._lock:
            self.connections += 1
        try:
            while True:
                head = await _read_request(reader)
                if head is None:
                    return
                method, path, headers, raw = head
                if not await self._answer(reader, writer, method, path, headers, raw):
                    return
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
            return
        except asyncio.CancelledError:
            return
        finally:
            self._conns.pop(writer, None)
            if not writer.is_closing():
                writer.close()

    async def _answer(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        method: str,
        path: str,
        headers: dict[str, str],
        raw: bytes,
    ) -> bool:
        """Answer one request; False when the connection must end."""
        if method == "GET" and path.rstrip("/").endswith("/models"):
            await _write(writer, 200, _json({"object": "list", "data": [{"id": self.model, "object": "model"}]}))
            return True
        if method != "POST" or not path.rstrip("/").endswith("completions"):
            await _write(writer, 404, _json({"error": {"message": f"no route {method} {path}"}}))
            return True
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        with self._lock:
            seen = SeenRequest(len(self._seen), method, path, headers, body)
            self._seen.append(seen)
            self._in_flight += 1
            self.max_in_flight_seen = max(self.max_in_flight_seen, self._in_flight)
        try:
            fault = self._pick(seen)
            return await self._play(fault, seen, reader, writer)
        finally:
            with self._lock:
                self._in_flight -= 1

    def _pick(self, seen: SeenRequest) -> Fault:
        if self._handler is not None:
            try:
                return _as_fault(self._handler(seen))
            except Exception as exc:
                return Fault.status(599, f"FaultServer handler raised {type(exc).__name__}: {exc}")
        with self._lock:
            if self._script:
                return self._script.pop(0)
        if self._then is not None:
            return self._then
        return Fault.status(599, f"FaultServer script ran out at request {seen.n}: add entries or pass then=")

    async def _play(self, f: Fault, seen: SeenRequest, reader: asyncio.StreamReader, w: asyncio.StreamWriter) -> bool:
        if f.delay_s:
            await asyncio.sleep(f.delay_s)
        if f.kill_server:
            task = asyncio.get_running_loop().create_task(self._kill_later(f.restart_after_s))
            self._background.add(task)
            task.add_done_callback(self._background.discard)
            return False
        if f.no_answer:
            while await reader.read(_CHUNK):  # until the client gives up and closes
                pass
            return False
        if f.close_silently:
            _abort(w, reset=False)
            return False
        if f.stream_bytes is not None:
            await self._stream(w, f.stream_bytes)
            return False
        headers = list(f.headers)
        usage: tuple[int, int] | None = None
        if f.body is not None:
            payload = f.body
        elif f.status_code != 200:
            payload = _json({"error": {"message": f.error_message, "type": "injected", "code": f.status_code}})
        else:
            payload, usage = _completion(f, seen, self.model)
        if f.reset_after_bytes is not None:
            cut = len(payload) // 2 if f.reset_after_bytes < 0 else f.reset_after_bytes
            w.write(_head(f.status_code, headers, len(payload)) + payload[:cut])
            await w.drain()
            await asyncio.sleep(0.01)  # let the head reach the client before the reset
            self._record_sent(cut, None)
            _abort(w, reset=True)
            return False
        await _write(w, f.status_code, payload, headers)
        self._record_sent(len(payload), usage)
        return True

    async def _stream(self, w: asyncio.StreamWriter, n_bytes: int) -> None:
        start = b'{"id": "x", "object": "chat.completion", "choices": [{"index": 0, "message": {"content": "'
        w.write(_head(200, [("Transfer-Encoding", "chunked"), ("Content-Type", "application/json")], None))
        sent = 0
        try:
            piece = start
            while sent < n_bytes:
                piece = piece[: n_bytes - sent]
                w.write(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
                await w.drain()
                sent += len(piece)
                piece = b"a" * _CHUNK
            w.write(b"0\r\n\r\n")
            await w.drain()
        except ConnectionError:
            pass
        finally:
            self._record_sent(sent, None)

    def _record_sent(self, n: int, usage: tuple[int, int] | None) -> None:
        with self._lock:
            self._bytes_sent.append(n)
            if usage is not None:
                self._delivered.append(usage)


# --- HTTP/1.1, just enough ----------------------------------------------------------------------


async def _read_request(reader: asyncio.StreamReader) -> tuple[str, str, dict[str, str], bytes] | None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return None
    lines = head.decode("latin-1").split("\r\n")
    method, path, _ = lines[0].split(" ", 2)
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if ":" in line:
            k, v = line.split(":", 1)
            headers[k.strip().lower()] = v.strip()
    # httpx and the openai SDK send a Content-Length; a chunked body is read as empty
    return method, path, headers, await reader.readexactly(int(headers.get("content-length", "0")))


def _head(status: int, headers: list[tuple[str, str]], length: int | None) -> bytes:
    try:
        reason = HTTPStatus(status).phrase
    except ValueError:
        reason = "Injected"
    names = {k.lower() for k, _ in headers}
    lines = [f"HTTP/1.1 {status} {reason}"]
    if "content-type" not in names:
        lines.append("Content-Type: application/json")
    if length is not None:
        lines.append(f"Content-Length: {length}")
    lines.extend(f"{k}: {v}" for k, v in headers)
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


async def _write(
    w: asyncio.StreamWriter, status: int, payload: bytes, headers: list[tuple[str, str]] | None = None
) -> None:
    w.write(_head(status, headers or [], len(payload)) + payload)
    await w.drain()


def _abort(w: asyncio.StreamWriter, *, reset: bool) -> None:
    sock = w.get_extra_info("socket")
    if reset and sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    w.transport.abort()


def _json(value: Any) -> bytes:
    return json.dumps(value).encode()


def _as_fault(f: FaultLike) -> Fault:
    return Fault.ok(f) if isinstance(f, str) else f


def _words(text: str) -> list[str]:
    words = text.split(" ")
    return [w if i == 0 else " " + w for i, w in enumerate(words)] if text else []


def _completion(f: Fault, seen: SeenRequest, model: str) -> tuple[bytes, tuple[int, int] | None]:
    """A chat or text completion of `f.text` shaped for the endpoint, and the usage it reports."""
    body = seen.body if isinstance(seen.body, dict) else {}
    chat = seen.path.rstrip("/").endswith("chat/completions")
    toks = _words(f.text)
    choice: dict[str, Any] = {"index": 0, "finish_reason": f.finish_reason}
    if chat:
        choice["message"] = {"role": "assistant", "content": f.text}
    else:
        choice["text"] = f.text
    wants = body.get("logprobs")
    if f.logprobs and wants not in (None, False, 0):
        top_n = body.get("top_logprobs", 0) if chat else wants
        choice["logprobs"] = _logprobs(toks, math.log(max(f.prob, 1e-12)), top_n if isinstance(top_n, int) else 0, chat)
    out: dict[str, Any] = {
        "id": f"fault-{seen.n}",
        "object": "chat.completion" if chat else "text_completion",
        "model": model,
        "choices": [choice],
    }
    usage: tuple[int, int] | None = None
    if f.usage is not None:
        prompt, completion = f.usage
        if completion == -1:
            completion = len(toks)
        elif completion == -2:  # ran to max_tokens
            asked = body.get("max_tokens")
            completion = asked if isinstance(asked, int) else len(toks)
        usage = (prompt, completion)
        out["usage"] = {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}
    return _json(out), usage


def _logprobs(toks: list[str], lp: float, top_n: int, chat: bool) -> dict[str, Any]:
    alts = [(f"<alt{k}>", lp - k) for k in range(1, max(top_n, 1))]
    if chat:

        def entry(t: str, v: float) -> dict[str, Any]:
            return {"token": t, "logprob": v, "bytes": list(t.encode())}

        tops = [[entry(a, v) for a, v in [(t, lp), *alts][:top_n]] for t in toks]
        return {"content": [entry(t, lp) | {"top_logprobs": top} for t, top in zip(toks, tops, strict=True)]}
    return {
        "tokens": toks,
        "token_logprobs": [lp for _ in toks],
        "top_logprobs": [dict([(t, lp), *alts][:top_n]) for t in toks],
        "text_offset": [0 for _ in toks],
    }
