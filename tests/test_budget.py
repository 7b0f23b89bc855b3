"""The time budget's arithmetic on a fake clock: durations, the platform defaults, when a run saves and stops."""
from __future__ import annotations


import pytest

from kernel.errors import ConfigError
from kernel.run import budget


@pytest.mark.parametrize("text, seconds", [("11h30m", 41400.0), ("90m", 5400.0), ("45s", 45.0), ("1h", 3600.0),
                                           ("1.5h", 5400.0), ("2m30s", 150.0), ("600", 600.0), ("0.3", 0.3),
                                           (" 1H ", 3600.0), ("0", None), ("", None), ("none", None),
                                           ("off", None), (None, None)])
def test_parse_duration(text, seconds):
    assert budget.parse_duration(text, "time-limit") == seconds


@pytest.mark.parametrize("text", ["1d", "h", "-5", "1h 30m", "30m1h", "fast"])
def test_parse_duration_refuses_what_it_cannot_read_naming_the_option(text):
    with pytest.raises(ConfigError, match="--save-every"):
        budget.parse_duration(text, "save-every")


@pytest.mark.parametrize("env, limit, every", [({}, None, None),
                                               ({"COLAB_RELEASE_TAG": "r"}, None, 1800.0),
                                               ({"KAGGLE_KERNEL_RUN_TYPE": "Batch", "COLAB_RELEASE_TAG": "r"},
                                                41400.0, 1800.0)])
def test_auto_takes_the_platform_default(monkeypatch, env, limit, every):
    for key in ("KAGGLE_KERNEL_RUN_TYPE", "COLAB_RELEASE_TAG", "COLAB_GPU"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert budget.resolve_durations("auto", "auto") == {"time_limit": limit, "save_every": every}
    assert budget.resolve_durations("2h", "0") == {"time_limit": 7200.0, "save_every": None}


class _Clock:
    """The budget's clock (StopControl's ``clock`` seam); the test moves it."""

    def __init__(self) -> None:
        self.now = 1000.0

    def time(self) -> float:
        return self.now


@pytest.fixture
def clock() -> _Clock:
    return _Clock()


def _control(clock: _Clock, limit, every=None, reserve=0.0, signals=None) -> budget.StopControl:
    return budget.StopControl(time_limit=limit, save_every=every, signals=signals or budget.StopSignals(),
                              start=clock.now, predict_reserve=lambda: reserve, clock=clock.time)


def test_stops_at_the_first_update_after_which_the_rest_would_not_fit(clock):
    """Updates of 1 s, a validation of 5 s, a prediction of 10 s, a save that costs 2 s: the run stops once the
    time left is less than two updates + validation + save + prediction + margin (5 % of a 100 s limit)."""
    control, saves = _control(clock, 100.0, reserve=10.0), []
    control.val_time = 5.0

    def save(epoch, done, snapshot):
        saves.append((epoch, done, clock.now))
        clock.now += 2.0

    done = 0
    while True:
        clock.now += 1.0
        done += 1
        if control.after_update(1, done, dict, save):
            break
    # needed = 2 updates (2 s) + validation (5 s) + a save (the 1 s guess until one is measured) + prediction
    # (10 s) + margin (min(10 s, 5 % of 100 s) = 5 s) = 23 s; after update n, 100 - n s are left: n = 78 is the first
    assert done == 78
    assert saves == [(1, 78, 1078.0)]
    assert control.reason == "time_limit"
    assert control.save_cost == 2.0  # measured from that save on


def test_saves_inside_the_epoch_every_period_without_stopping(clock):
    control, saves = _control(clock, None, every=10.0), []
    for done in range(1, 26):
        clock.now += 1.0
        assert control.after_update(3, done, dict, lambda e, d, s: saves.append(d)) is False
    assert saves == [10, 20] and control.reason == ""
    assert control.remaining() == float("inf")


def test_every_save_is_told_to_the_on_saved_callbacks_in_order(clock):
    """The seam the kill tests pause on: each save inside an epoch (after batch d), then the epoch's end (0)."""
    heard = []
    control = budget.StopControl(time_limit=None, save_every=10.0, signals=budget.StopSignals(), start=clock.now,
                                 predict_reserve=lambda: 0.0, clock=clock.time,
                                 on_saved=[lambda e, b: heard.append((e, b))])
    for done in range(1, 26):
        clock.now += 1.0
        control.after_update(3, done, dict, lambda e, d, s: heard.append(("written", d)))
    control.saved(3, 0)
    assert heard == [("written", 10), (3, 10), ("written", 20), (3, 20), (3, 0)]


def test_a_signal_stops_at_the_next_update_after_saving(clock):
    signals = budget.StopSignals()
    control, saves = _control(clock, 3600.0, signals=signals), []
    clock.now += 1.0
    assert control.after_update(1, 1, dict, lambda e, d, s: saves.append(d)) is False
    signals.received = 15  # SIGTERM, as the handler records it
    clock.now += 1.0
    assert control.after_update(1, 2, dict, lambda e, d, s: saves.append(d)) is True
    assert saves == [2] and control.reason == "signal"


def test_before_an_epoch_stops_when_the_epoch_start_would_not_fit(clock):
    control = _control(clock, 60.0, reserve=20.0)
    control.val_time = 10.0
    # needed = 0 updates measured + 10 + 1 (save guess) + 20 + min(10, 3) = 34 s
    clock.now += 60.0 - 35.0
    assert control.before_epoch() is False and control.reason == ""
    clock.now += 2.0
    assert control.before_epoch() is True and control.reason == "time_limit"


def test_a_second_copy_of_the_signal_arriving_during_the_warning_is_not_said_again():
    """A group SIGTERM reaches a process of a multi-process run twice (the sender's copy, the launcher's); the second
    can arrive while the first one's warning is being logged, and then runs the handler again inside that logging
    call. The stop is recorded before the warning, so it is said once."""
    import logging
    import os
    import signal

    said = []

    class SecondCopy(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            said.append(record.getMessage())
            if len(said) == 1:
                os.kill(os.getpid(), signal.SIGTERM)  # delivered now: Python runs the handler within this call
                sum(range(100))

    logger, handler = logging.getLogger("kernel"), SecondCopy(logging.WARNING)
    logger.addHandler(handler)
    try:
        with budget.StopSignals() as signals:
            os.kill(os.getpid(), signal.SIGTERM)
            sum(range(100))
    finally:
        logger.removeHandler(handler)
    assert signals.received == signal.SIGTERM
    assert [m for m in said if "SIGTERM received" in m] == ["SIGTERM received: finishing this step, then saving last.pt"]
