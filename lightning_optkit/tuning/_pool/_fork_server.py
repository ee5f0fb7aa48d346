"""A pre-imported fork server for trial processes: fresh processes without paying the imports each time.

Importing torch, Lightning and Optuna takes seconds; a trial process that starts from nothing pays
that every trial. The launcher starts this server once (``python -m lightning_optkit.tuning._pool._fork_server``):
it imports them, then reads one JSON request per line on stdin ``{"argv": [...], "env": {...},
"log": PATH}``, forks a child for each -- a new process that has never run a trial, in its own
session, with the request's environment (``CUDA_VISIBLE_DEVICES`` is read when CUDA starts, which
the server never does), its output in ``log`` -- and answers ``{"pid": N}``; when a child exits it
writes ``{"exit": N, "code": C}`` (``C < 0``: killed by signal ``-C``). The server is single-threaded
(a ``select`` loop), so nothing is locked when it forks. Trials with several devices (DDP re-runs the
process's command line) are started with a plain ``python -m`` instead.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

from ._protocol import FORK_SERVER_MODULE

__all__ = ["ForkServer", "ForkedChild"]


def _child(request: dict[str, Any]) -> None:  # pragma: no cover - runs in the forked process
    code = 1
    try:
        os.setsid()
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        fd = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        sys.stdout = open(1, "w", buffering=1, closefd=False)  # noqa: SIM115
        sys.stderr = open(2, "w", buffering=1, closefd=False)  # noqa: SIM115
        os.environ.clear()
        os.environ.update(request["env"])
        for p in reversed(request["env"].get("PYTHONPATH", "").split(os.pathsep)):
            if p and p not in sys.path:
                sys.path.insert(0, p)
        os.chdir(request.get("cwd") or os.getcwd())
        from ._worker import main

        code = main(request["argv"])
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:
        import traceback

        traceback.print_exc()
        code = 1
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def serve() -> None:  # pragma: no cover - the server process
    import lightning  # noqa: F401 - the point: import once, fork many
    import optuna  # noqa: F401
    import torch  # noqa: F401

    from .._runner import TrialRunner  # noqa: F401
    from ._worker import main  # noqa: F401

    out = sys.stdout
    out.write(json.dumps({"ready": os.getpid()}) + "\n")
    out.flush()
    stdin = sys.stdin.fileno()
    buf = b""
    children: set[int] = set()
    while True:
        readable, _, _ = select.select([stdin], [], [], 0.1)
        if readable:
            chunk = os.read(stdin, 65536)
            if not chunk:  # the launcher is gone
                return
            buf += chunk
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                request = json.loads(line)
                pid = os.fork()
                if pid == 0:
                    _child(request)
                children.add(pid)
                out.write(json.dumps({"pid": pid, "id": request["id"]}) + "\n")
                out.flush()
        for pid in list(children):
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                children.discard(pid)
                code = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
                out.write(json.dumps({"exit": pid, "code": code}) + "\n")
                out.flush()


class ForkedChild:
    """A Popen-like handle (``pid``, ``poll``, ``wait``) on a process forked by the :class:`ForkServer`."""

    def __init__(self, server: ForkServer, pid: int) -> None:
        self._server, self.pid = server, pid

    def poll(self) -> int | None:
        return self._server.exits.get(self.pid)

    def wait(self, timeout: float | None = None) -> int:
        if not self._server.exited(self.pid).wait(timeout):
            raise subprocess.TimeoutExpired(f"trial process {self.pid}", timeout or 0)
        return self._server.exits[self.pid]


class ForkServer:
    """The launcher's side of the fork server (see the module docstring).

    Example:
        (Lines marked ``+SKIP`` are not run as doctests: forks processes; tests/test_tuning_scale*.py run it for real.)
        >>> z = ForkServer()                                    # doctest: +SKIP
        >>> child = z.start(["--study", "s", "--out", "o"], dict(os.environ), Path("o/w.log"))  # doctest: +SKIP
        >>> child.wait()                                    # doctest: +SKIP
    """

    def __init__(self) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", FORK_SERVER_MODULE], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, start_new_session=True)
        self.exits: dict[int, int] = {}
        self._events: dict[int, threading.Event] = {}
        self._pids: dict[int, int] = {}
        self._started: dict[int, threading.Event] = {}
        self._lock = threading.Lock()
        self._next = 0
        self._ready = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            msg = json.loads(raw)
            with self._lock:
                if "ready" in msg:
                    self._ready.set()
                elif "pid" in msg:
                    self._pids[msg["id"]] = msg["pid"]
                    self._started.setdefault(msg["id"], threading.Event()).set()
                elif "exit" in msg:
                    self.exits[msg["exit"]] = msg["code"]
                    self._events.setdefault(msg["exit"], threading.Event()).set()
        self._ready.set()
        with self._lock:
            for ev in self._started.values():
                ev.set()

    def exited(self, pid: int) -> threading.Event:
        with self._lock:
            return self._events.setdefault(pid, threading.Event())

    def alive(self) -> bool:
        return self.proc.poll() is None

    def start(self, argv: list[str], env: dict[str, str], log: Path, timeout: float = 120.0) -> ForkedChild | None:
        """Fork a trial process; ``None`` when the server is not available (then start it another way)."""
        if not self._ready.wait(timeout) or not self.alive():
            return None
        with self._lock:
            self._next += 1
            rid = self._next
            started = self._started.setdefault(rid, threading.Event())
        request = {"id": rid, "argv": argv, "env": env, "log": str(log), "cwd": os.getcwd()}
        try:
            assert self.proc.stdin is not None
            self.proc.stdin.write((json.dumps(request) + "\n").encode())
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            return None
        if not started.wait(timeout) or rid not in self._pids:
            return None
        return ForkedChild(self, self._pids[rid])

    def close(self) -> None:
        """Stop the server (its running children are not touched: they belong to the launcher's pool)."""
        if self.proc.poll() is None:
            try:
                assert self.proc.stdin is not None
                self.proc.stdin.close()
                self.proc.wait(timeout=10)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()


if __name__ == "__main__":
    serve()
