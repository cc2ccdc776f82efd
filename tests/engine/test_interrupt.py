"""SIGINT and SIGTERM acted on where it is safe: at once in training, later inside a library's callback."""

from __future__ import annotations

import os
import signal
import sys

import pytest

from hpsearch.engine.interrupt import Interrupted, Interruption


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
