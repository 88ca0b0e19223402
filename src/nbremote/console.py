"""What the user sees: steps with timings, progress on slow steps, --json.

Everything goes through a Console so tests can pass their own streams, TTY
flag and browser opener: no test ever opens a browser or waits on a spinner.
Progress and steps go to stderr; results (the URL, tables, JSON) to stdout.
"""

from __future__ import annotations

import contextlib
import json
import sys
import threading
import time
from dataclasses import dataclass, field

from nbremote.errors import ExitCode

TYPE_CHECKING = False  # typing's own, without importing typing at run time (mypy knows the name)
if TYPE_CHECKING:
    from typing import Callable, Iterator, TextIO

SPINNER = "⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏"


def _open_in_browser(url: str) -> bool:
    import webbrowser  # only `up` opens a browser: keep it out of every command's start-up

    return webbrowser.open(url)


def interrupted() -> None:
    """Ctrl-C: said in one line, no traceback."""
    print("✗ interrupted", file=sys.stderr, flush=True)
    sys.exit(ExitCode.INTERRUPTED)


@dataclass
class Console:
    out: TextIO = field(default_factory=lambda: sys.stdout)
    err: TextIO = field(default_factory=lambda: sys.stderr)
    json_mode: bool = False
    tty: bool = False
    open_browser: Callable[[str], bool] = _open_in_browser
    clock: Callable[[], float] = time.monotonic

    @classmethod
    def for_terminal(cls, *, json_mode: bool = False) -> "Console":
        return cls(json_mode=json_mode, tty=sys.stderr.isatty() and not json_mode)

    def _line(self, text: str) -> None:
        if not self.json_mode:
            print(text, file=self.err, flush=True)

    def done(self, text: str, seconds: float | None = None) -> None:
        timing = f"  {seconds:.2f} s" if seconds is not None else ""
        self._line(f"✓ {text}{timing}")

    def note(self, text: str) -> None:
        self._line(f"  {text}")

    def warn(self, text: str) -> None:
        # Even with --json: stdout stays one JSON document, and a warning must not be lost.
        print(f"! {text}", file=self.err, flush=True)

    def result(self, text: str) -> None:
        if not self.json_mode:
            print(text, file=self.out, flush=True)

    def emit_json(self, doc: object) -> None:
        print(json.dumps(doc, indent=2, sort_keys=True), file=self.out, flush=True)

    @contextlib.contextmanager
    def progress(self, text: str) -> Iterator[None]:
        """A spinner with elapsed time while a slow step runs (TTY only)."""
        if not self.tty:
            yield
            return
        stop = threading.Event()
        start = self.clock()

        def spin() -> None:
            frame = 0
            while not stop.wait(0.1):
                self.err.write(f"\r{SPINNER[frame % len(SPINNER)]} {text} ({self.clock() - start:.1f} s)\x1b[K")
                self.err.flush()
                frame += 1

        thread = threading.Thread(target=spin, daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()
            self.err.write("\r\x1b[K")
            self.err.flush()

    def status(self, text: str) -> None:
        """The one-line status of a foreground session, redrawn in place on a TTY."""
        if self.json_mode:
            return
        if self.tty:
            self.err.write(f"\r{text}\x1b[K")
            self.err.flush()

    def end_status(self) -> None:
        if self.tty and not self.json_mode:
            self.err.write("\r\x1b[K")
            self.err.flush()
