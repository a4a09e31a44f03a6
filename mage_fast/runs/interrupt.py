"""Stopping a run by SIGINT (Ctrl-C) or SIGTERM (a scheduler's preemption; torchrun passes its
own on): the signal only raises a flag, and the step loop saves a checkpoint at the next step
boundary, then raises KeyboardInterrupt. Nothing since the last save is lost, and the run
resumes exactly. Repeated signals wait for that save (a terminal's Ctrl-C reaches torchrun's
workers and torchrun, which then sends them SIGTERM); the third stops at once, unsaved."""
import signal
import threading

SIGNALS = (signal.SIGINT, signal.SIGTERM)
FORCE = 3


class StopSignals:
    """A context in which SIGINT and SIGTERM set `requested` (the main thread's handlers, put
    back on exit; elsewhere signals cannot be caught and nothing changes)."""

    def __init__(self):
        self.received, self.previous = [], {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for s in SIGNALS:
                self.previous[s] = signal.getsignal(s)
                signal.signal(s, self._handle)
        return self

    def _handle(self, signum, frame):
        self.received.append(signal.Signals(signum).name)
        if len(self.received) >= FORCE:
            raise KeyboardInterrupt(f"{len(self.received)} signals ({', '.join(self.received)}): stopped unsaved")

    def __exit__(self, *exc):
        for s, handler in self.previous.items():
            signal.signal(s, handler if handler is not None else signal.SIG_DFL)

    @property
    def requested(self) -> bool:
        return bool(self.received)

    @property
    def cause(self) -> str:
        """The first signal, for messages (under DDP another rank may have had it)."""
        return self.received[0] if self.received else "a signal to another process"


def ignore_interrupts(worker_id: int):
    """A DataLoader worker's init: Ctrl-C reaches every process of the terminal's group, and a
    worker it ended would fail the step that the run finishes before it saves."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
