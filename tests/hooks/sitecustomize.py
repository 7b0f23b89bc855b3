"""Hooks for the ``kernel`` processes a test starts, so that where a save, a stop or a kill lands never depends on
how fast the machine is. Python imports this module at start-up when ``conftest.subprocess_env(hooks=...)`` puts
this folder on ``PYTHONPATH`` (launched children inherit it). Each hook goes through the run's declared seams
(:mod:`kernel.run.seams`) and is on only when its variable is set:

``KERNEL_TEST_TICKS``  every read of the time budget's clock is one second after the last, so ``--save-every 3``
                       saves every few updates, at the same updates on any machine.
``KERNEL_TEST_JUMP``   SIGUSR1 moves the budget's clock 12 hours ahead, as if the rest of a Kaggle session had
                       passed in one step: the stop that follows is the real one (remaining < needed).
``KERNEL_TEST_PAUSE``  after each save of ``last.pt`` (inside an epoch or at its end) the process writes
                       ``test-hook: paused pid P at epoch E, batch B`` to stderr and stops itself (SIGSTOP); the test
                       kills it there, signals it, or lets it go on (SIGCONT). Every process of a run pauses.
``KERNEL_TEST_SELFTEST``  the all-reduce self-test of a multi-process run fails, as it does when NCCL hangs between
                       Kaggle's T4s (without a real hang).
"""
import os


def _on(name: str) -> bool:
    return bool(os.environ.get(f"KERNEL_TEST_{name}"))


def _install() -> None:
    import signal
    import time

    from kernel.engine.distributed import SelfTestFailed
    from kernel.run.seams import install  # the run's declared seams: nothing of kernel is replaced

    if _on("TICKS") or _on("JUMP"):
        ticking, ticks, ahead = _on("TICKS"), [time.time()], [0.0]

        def clock() -> float:
            ticks[0] += 1.0
            return (ticks[0] if ticking else time.time()) + ahead[0]

        install(clock=clock)
        if _on("JUMP"):
            signal.signal(signal.SIGUSR1, lambda *_: ahead.__setitem__(0, 12 * 3600.0))

    if _on("PAUSE"):
        def paused(epoch: int, batch: int) -> None:
            os.write(2, f"test-hook: paused pid {os.getpid()} at epoch {epoch}, batch {batch}\n".encode())
            os.kill(os.getpid(), signal.SIGSTOP)

        install(on_saved=paused)

    if _on("SELFTEST"):
        def failing_self_test(device) -> None:
            raise SelfTestFailed("the all-reduce self-test timed out (made to by KERNEL_TEST_SELFTEST)")

        install(self_test=failing_self_test)


if any(_on(name) for name in ("TICKS", "JUMP", "PAUSE", "SELFTEST")):
    try:
        _install()
    except BaseException:  # Python would only warn and run on without the hooks: a test must not pass that way
        import traceback

        traceback.print_exc()
        os._exit(70)
