"""An OpenAI-compatible test server on 127.0.0.1 whose answers are scripted (tests and bench/ use it).

Real HTTP, real sockets: the openai backend is tested against it exactly as against vLLM. It can be stopped
and started again on the same port, which is what a server restart looks like to a client.
"""
from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable

from stepdpo_cli.steps import STEP_PREFIX


class ScriptedServer:
    """An OpenAI-shaped server whose next answers are scripted: ("ok",), ("status", code, body),
    ("garbage",), ("hang", seconds). When the script is empty it answers "ok". Records every request."""

    def __init__(self, *, honour_n: bool = True, keep_stop: bool = False, accept_prefill: bool = True,
                 delay: float = 0.0, text_for: Callable[[dict, int], str] | None = None, port: int = 0):
        self.script: list[tuple] = []
        self.requests: list[dict] = []
        self.headers: list[dict] = []
        self.honour_n, self.keep_stop, self.accept_prefill, self.delay = honour_n, keep_stop, accept_prefill, delay
        self.text_for = text_for  # (request body, choice index) -> text; default: echoes the seed and index
        self.after_request: Callable[[ScriptedServer], None] | None = None  # called after each answer
        self.in_flight = self.max_in_flight = 0
        self.lock = threading.Lock()
        self.stop_event = threading.Event()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output clean
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers.get("content-length", 0))))
                with outer.lock:
                    outer.requests.append(body)
                    outer.headers.append({k.lower(): v for k, v in self.headers.items()})
                    action = outer.script.pop(0) if outer.script else ("ok",)
                    outer.in_flight += 1
                    outer.max_in_flight = max(outer.max_in_flight, outer.in_flight)
                try:
                    outer.respond(self, action, body)
                finally:
                    with outer.lock:
                        outer.in_flight -= 1
                if outer.after_request is not None:
                    outer.after_request(outer)

        self.handler = Handler
        self.server: ThreadingHTTPServer | None = None
        self.port = port
        self.start()
        self.url = f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> None:
        """Listen (again) on the same port: a server restarted after `stop`."""
        self.stop_event.clear()
        server = ThreadingHTTPServer(("127.0.0.1", self.port), self.handler)
        server.daemon_threads = True
        server.block_on_close = False  # closing must not wait for the handlers in flight
        server.timeout = 0.05  # how often the accept loop looks at `listening`
        self.port = server.server_address[1]
        self.server = server
        self.listening = threading.Event()
        self.listening.set()
        self.thread = threading.Thread(target=self._accept, args=(server, self.listening), daemon=True)
        self.thread.start()

    @staticmethod
    def _accept(server: ThreadingHTTPServer, listening: threading.Event) -> None:
        # Our own loop rather than serve_forever: socketserver.shutdown() was seen to hang when called while
        # requests were being served; a flag checked every 50 ms cannot.
        while listening.is_set():
            server.handle_request()

    def stop(self) -> None:
        """Stop listening, as a killed server does: new connections are refused and requests in flight get no
        answer (the connection just closes). Safe from any thread, a handler's included."""
        server, self.server = self.server, None
        if server is not None:
            self.stop_event.set()
            self.listening.clear()
            if threading.current_thread() is not self.thread:
                self.thread.join(5)
            server.server_close()

    def respond(self, handler: BaseHTTPRequestHandler, action: tuple, body: dict) -> None:
        kind = action[0]
        if kind == "hang":  # bounded: wakes when the test ends at the latest
            self.stop_event.wait(action[1])
            return
        if kind == "garbage":
            content_type, payload = action[1] if len(action) > 1 else ("application/json", b"{'choices': [oops")
            return self._send(handler, 200, payload, {"content-type": content_type})
        if kind == "status":
            payload = json.dumps({"error": {"message": action[2]}}).encode()
            return self._send(handler, action[1], payload, {"content-type": "application/json", "retry-after": "0"})
        if self.delay:
            time.sleep(self.delay)
        if self.server is None:
            return  # killed while this request was in flight: the connection closes without an answer
        if not self.accept_prefill and "continue_final_message" in body:
            payload = json.dumps({"detail": "Unexpected fields in the request: {'continue_final_message'}"})
            return self._send(handler, 422, payload.encode(), {"content-type": "application/json"})
        n = body.get("n", 1) if self.honour_n else 1
        chat = "messages" in body
        choices = []
        for index in reversed(range(n)):  # out of order on purpose: clients must sort by index
            text = (self.text_for(body, index) if self.text_for
                    else f" sample seed={body.get('seed')} k={index}. Step 2: more")
            stop = (body.get("stop") or [None])[0]
            if stop and not self.keep_stop and stop in text:
                text = text[: text.find(stop)]
            if chat and not self.accept_prefill:
                text = STEP_PREFIX + text  # a model answering a user message restates the prefix
            choice = {"index": index, "finish_reason": "stop" if stop else "length"}
            if chat:
                choice["message"] = {"role": "assistant", "content": text}
            else:
                choice["text"] = text
            choices.append(choice)
        payload = {"id": "x", "object": "chat.completion" if chat else "text_completion", "created": 0,
                   "model": body.get("model"), "choices": choices,
                   "usage": {"prompt_tokens": 3, "completion_tokens": 7 * n, "total_tokens": 3 + 7 * n}}
        self._send(handler, 200, json.dumps(payload).encode(), {"content-type": "application/json"})

    @staticmethod
    def _send(handler: BaseHTTPRequestHandler, code: int, payload: bytes, headers: dict) -> None:
        handler.send_response(code)
        for key, value in headers.items():
            handler.send_header(key, value)
        handler.send_header("content-length", str(len(payload)))
        handler.end_headers()
        handler.wfile.write(payload)

    def close(self) -> None:
        self.stop()
