"""SIGINT and SIGTERM acted on where it is safe: at once in training, later inside a library's callback; kept the
main thread's while threads and processes start."""

from __future__ import annotations

import os
import signal
import sys

import pytest

from hpsearch.engine.interrupt import Interrupted, Interruption, started_without_signals


def test_a_signal_during_training_raises_at_once():
    interruption = Interruption()
    with interruption.installed(), pytest.raises(Interrupted), interruption.immediate():
        os.kill(os.getpid(), signal.SIGTERM)
        for _ in range(10_000_000):  # the handler runs between two bytecodes of this loop
            pass
    assert interruption.signal == "SIGTERM"


def test_a_signal_inside_a_library_callback_waits_for_the_next_check():
    # a garbage-collection callback of SQLAlchemy's, run between two lines of training: Python would swallow an
    # exception raised there and print "Exception ignored in ..." with a traceback
    callback: dict = {"__name__": "sqlalchemy.orm.clsregistry", "sys": sys}
    exec("def frame():\n    return sys._getframe()", callback)
    interruption = Interruption()
    with interruption.immediate():
        interruption._handler(signal.SIGTERM, callback["frame"]())  # recorded, not raised
        with pytest.raises(Interrupted):
            interruption._handler(signal.SIGINT, sys._getframe())  # our own code: raised at once
    with pytest.raises(Interrupted):
        interruption.check()


def test_a_recorded_signal_is_raised_when_the_deferred_stretch_ends():
    interruption = Interruption()
    with pytest.raises(Interrupted), interruption.immediate(), interruption.deferred():
        interruption._handler(signal.SIGINT, sys._getframe())  # storage work: recorded only
    assert interruption.signal == "SIGINT"


def test_what_starts_without_signals_holds_them_back_and_the_caller_never_does():
    import threading

    masks: list[set] = []
    caller: list[int] = []  # the calling thread's mask while the start runs, as the kernel has it

    def start() -> threading.Thread:  # as rich's bars start their refresh thread
        if os.path.exists("/proc/self/task"):
            status = open(f"/proc/self/task/{threading.main_thread().native_id}/status").read()
            caller.append(int(status.split("SigBlk:")[1].split()[0], 16))
        thread = threading.Thread(target=lambda: masks.append(signal.pthread_sigmask(signal.SIG_BLOCK, [])))
        thread.start()
        return thread

    before = signal.pthread_sigmask(signal.SIG_BLOCK, [])
    started_without_signals(start).join()
    assert masks == [{signal.SIGINT, signal.SIGTERM}]
    assert signal.pthread_sigmask(signal.SIG_BLOCK, []) == before
    if os.path.exists("/proc/self/task"):  # the caller never blocked them, not even while the start ran
        assert [mask >> (signal.SIGINT - 1) & 1 or mask >> (signal.SIGTERM - 1) & 1 for mask in caller] == [0]

    def refused() -> None:
        raise OSError("no more processes")

    with pytest.raises(OSError, match="no more processes"):  # raised in the caller, as a direct call would
        started_without_signals(refused)
