"""Run a kopf operator as a real subprocess against a test API server.

Integration tests start the operator exactly as production does (a separate
process reading a kubeconfig), so that crashes, restarts and timing are real:
:func:`operator_process` starts it, captures its log to a file, and stops it
on exit (SIGTERM, then SIGKILL after ``stop_timeout`` seconds).
:meth:`OperatorProcess.kill` simulates a crash and :meth:`OperatorProcess.restart`
starts it again with the same command and the same log file.

Stop the operator before the API server: with its watch streams still open,
the emulator's shutdown would have to cut them (``running_emulator`` does,
but the operator then spins on reconnects until it is stopped). Nesting the
context managers as ``with running_emulator() as kube, operator_process(...)``
gets the order right.

An operator module run this way against the emulator must set
``settings.scanning.disabled = True`` in a ``@kopf.on.startup`` handler:
the emulator serves no CRD or namespace watching of the kind kopf's scanner
expects.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import pathlib
import signal
import subprocess
import sys
import tempfile
import time
import weakref
from collections.abc import Iterator, Mapping, Sequence

# kopf's own runner; `--standalone` skips peering, which needs a CRD the tests do not serve.
KOPF_RUN = (sys.executable, "-m", "kopf", "run", "--standalone")

# Processes still running when the interpreter exits (e.g. after Ctrl-C) are killed, not orphaned.
_live: weakref.WeakSet[OperatorProcess] = weakref.WeakSet()


@atexit.register
def _kill_leftovers() -> None:
    for process in list(_live):
        process.kill()


class OperatorProcess:
    """One operator subprocess: start, stop, kill, restart, and its log."""

    def __init__(
        self,
        kubeconfig: str | os.PathLike[str],
        args: Sequence[str],
        env: Mapping[str, str] | None = None,
        *,
        command: Sequence[str] = KOPF_RUN,
        log_path: str | os.PathLike[str] | None = None,
        stop_timeout: float = 5.0,
    ) -> None:
        self.command = [*command, *args]
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {}), "KUBECONFIG": os.fspath(kubeconfig)}
        self.owns_log = log_path is None  # a log we created is ours to delete
        if log_path is None:
            handle, log_path = tempfile.mkstemp(prefix="sftjob-operator-", suffix=".log")
            os.close(handle)
        self.log_path = pathlib.Path(log_path)
        self.stop_timeout = stop_timeout
        self.starts = 0
        self._popen: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        """The current process id (None before the first start)."""
        return self._popen.pid if self._popen is not None else None

    @property
    def alive(self) -> bool:
        """Whether the process is running now."""
        return self._popen is not None and self._popen.poll() is None

    @property
    def returncode(self) -> int | None:
        """The exit status of the last run (None while running or before the first start)."""
        return self._popen.poll() if self._popen is not None else None

    def start(self) -> None:
        """Start the process, appending its output to the log file."""
        if self.alive:
            raise RuntimeError(f"the operator is already running (pid {self.pid})")
        self.starts += 1
        with open(self.log_path, "ab") as log:
            log.write(f"=== start #{self.starts}: {' '.join(self.command)}\n".encode())
            log.flush()
            self._popen = subprocess.Popen(
                self.command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=self.env
            )
        _live.add(self)

    def stop(self) -> int | None:
        """Stop gracefully (SIGTERM), or kill after ``stop_timeout`` seconds; return the exit status."""
        if self._popen is None:
            return None
        if self._popen.poll() is None:
            self._popen.send_signal(signal.SIGTERM)
            try:
                self._popen.wait(self.stop_timeout)
            except subprocess.TimeoutExpired:
                self._popen.kill()
                self._popen.wait()
        _live.discard(self)
        return self._popen.returncode

    def kill(self) -> None:
        """Kill at once (SIGKILL), as a crash or an OOM kill would."""
        if self._popen is not None and self._popen.poll() is None:
            self._popen.kill()
            self._popen.wait()
        _live.discard(self)

    def restart(self) -> None:
        """Stop the process if it still runs, then start it again."""
        self.stop()
        self.start()

    def log_text(self) -> str:
        """Everything the operator has written so far, across restarts."""
        return self.log_path.read_text(encoding="utf-8", errors="replace") if self.log_path.exists() else ""

    def log_tail(self, lines: int = 60) -> str:
        """The last ``lines`` lines of the log."""
        return "\n".join(self.log_text().splitlines()[-lines:])

    def wait_for_log(self, text: str, timeout: float = 30.0, since: int = 0) -> None:
        """Wait until ``text`` appears in the log after character offset ``since``; fail if the process dies."""
        deadline = time.monotonic() + timeout
        while text not in self.log_text()[since:]:
            if not self.alive:
                exited = f"the operator exited ({self.returncode}) before logging {text!r}"
                raise AssertionError(f"{exited}:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"the operator did not log {text!r} within {timeout}s:\n{self.log_tail()}")
            time.sleep(0.05)


@contextlib.contextmanager
def operator_process(
    kubeconfig: str | os.PathLike[str],
    args: Sequence[str],
    env: Mapping[str, str] | None = None,
    *,
    command: Sequence[str] = KOPF_RUN,
    log_path: str | os.PathLike[str] | None = None,
    stop_timeout: float = 5.0,
) -> Iterator[OperatorProcess]:
    """Run an operator for the duration of the block.

    ``args`` follow ``command`` (by default ``python -m kopf run --standalone``),
    e.g. ``["--all-namespaces", "operator.py"]`` or ``["--namespace=team-a",
    "-m", "sftjob_operator.handlers"]``. ``KUBECONFIG`` is set to
    ``kubeconfig``; ``env`` adds or overrides variables. If the block fails,
    the tail of the operator's log is printed (pytest shows it with the
    failure) and the log is kept; otherwise a log this function created is
    deleted.
    """
    process = OperatorProcess(kubeconfig, args, env, command=command, log_path=log_path, stop_timeout=stop_timeout)
    process.start()
    try:
        yield process
    except BaseException:
        process.stop()
        print(f"--- operator log ({process.log_path}), last lines ---\n{process.log_tail()}", file=sys.stderr)
        raise
    else:
        process.stop()
        if process.owns_log:
            process.log_path.unlink(missing_ok=True)
    finally:
        process.stop()
