"""Hooks for the ``kernel`` processes a test starts, so that where a save, a stop or a kill lands never depends on
how fast the machine is. Python imports this module at start-up when ``conftest.subprocess_env(hooks=...)`` puts
this folder on ``PYTHONPATH`` (launched children inherit it); each hook is on only when its variable is set:

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
    import importlib
    import signal
    import time
    import types

    # the modules (kernel.run also exports a function named ``fit``); not kernel.train, which ``python -m`` runs
    # afresh as __main__: it takes ``self_test`` from kernel.engine.distributed when it starts, after this patch
    budget, fit, distributed = (importlib.import_module(f"kernel.{name}") for name in (
        "run.budget", "run.fit", "engine.distributed"))

    if _on("TICKS") or _on("JUMP"):
        ticking, ticks, ahead = _on("TICKS"), [time.time()], [0.0]

        def clock() -> float:
            ticks[0] += 1.0
            return (ticks[0] if ticking else time.time()) + ahead[0]

        budget.time = types.SimpleNamespace(time=clock)
        if _on("JUMP"):
            signal.signal(signal.SIGUSR1, lambda *_: ahead.__setitem__(0, 12 * 3600.0))

    if _on("PAUSE"):
        def pausing(save, where):
            def saved_then_paused(*args):
                save(*args)
                epoch, batch = where(*args)
                os.write(2, f"test-hook: paused pid {os.getpid()} at epoch {epoch}, batch {batch}\n".encode())
                os.kill(os.getpid(), signal.SIGSTOP)
            return saved_then_paused

        fit.save_position = pausing(fit.save_position, lambda p, state, epoch, batch, snapshot: (epoch, batch))
        fit.save_epoch = pausing(fit.save_epoch, lambda p, state, improved: (state.last_epoch, 0))

    if _on("SELFTEST"):
        def failing_self_test(device):
            raise distributed.SelfTestFailed("the all-reduce self-test timed out (made to by KERNEL_TEST_SELFTEST)")

        distributed.self_test = failing_self_test


if any(_on(name) for name in ("TICKS", "JUMP", "PAUSE", "SELFTEST")):
    try:
        _install()
    except BaseException:  # Python would only warn and run on without the hooks: a test must not pass that way
        import traceback

        traceback.print_exc()
        os._exit(70)
