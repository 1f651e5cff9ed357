"""Ctrl-C held until the training step under way is whole, with a way out of a hung step."""

from __future__ import annotations

import signal

import pytest

from export.interrupts import WholeSteps


def test_an_interrupt_waits_for_the_step_and_a_second_one_does_not():
    guard = WholeSteps().install()
    done: list[str] = []
    try:
        with pytest.raises(KeyboardInterrupt), guard.step():
            signal.raise_signal(signal.SIGINT)
            done.append("rest of the step")  # held: the step finishes first
        assert done == ["rest of the step"]
        with pytest.raises(KeyboardInterrupt), guard.step():
            signal.raise_signal(signal.SIGINT)
            signal.raise_signal(signal.SIGINT)  # impatient: a hung step must be stoppable
            done.append("never")
        assert done == ["rest of the step"]
    finally:
        guard.restore()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
