"""Following a pushed kernel: poll its status, download its outputs, report the run, push again after a time-limit stop.

Everything goes through the official ``kaggle`` CLI (:func:`.push.kaggle_runner`), whose printed
output is parsed (client 2.2.x, read from its source):

- ``kaggle kernels status owner/slug`` prints ``owner/slug has status "KernelWorkerStatus.RUNNING"``
  (the enum: QUEUED, RUNNING, COMPLETE, ERROR, CANCEL_REQUESTED, CANCEL_ACKNOWLEDGED, NEW_SCRIPT; 1.x
  clients printed bare names such as ``cancelAcknowledged``) and, on a failure, a second line
  ``Failure message: "..."``. The quoted status is matched by case-insensitive keywords.
- ``kaggle kernels output owner/slug -p DIR`` writes each output file under DIR (sub-folders kept)
  and the session log, exactly as the server sends it, to ``DIR/<slug>.log``: a JSON array of
  ``{"stream_name", "time", "data"}`` records, one per line.
- ``kaggle kernels status`` has no version number: right after a push it can still describe the
  previous version, so a finished state is trusted only once the new version was seen queued or
  running, or after ``stale_s``.
"""
from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

from .metadata import BuildError
from .push import KaggleRun, push_kernel

__all__ = ["FINISHED", "parse_status", "elapsed_text", "wait_for_kernel", "version_folder", "download_outputs",
           "log_lines", "find_log", "read_summaries", "summary_line", "main_files", "follow"]

FINISHED = ("complete", "error", "cancelled")
# Checked in this order: "cancel" before "error" so CANCEL_* never reads as a failure's keyword.
_KEYWORDS = (("cancel", "cancelled"), ("error", "error"), ("fail", "error"), ("complete", "complete"),
             ("running", "running"), ("queued", "queued"))
_MAIN_NAMES = ("summary.json", "best.pt", "last.pt", "model.safetensors", "metrics.csv", "submission.csv",
               "predictions.csv", "config.yaml")


def parse_status(text: str, kernel_id: str = "") -> Tuple[Optional[str], str]:
    """``(state, failure message)`` from ``kaggle kernels status`` output.

    ``state`` is one of queued/running/complete/error/cancelled, another status name lower-cased
    (e.g. ``new_script``), or None when the text holds no status at all.
    """
    failure = re.search(r'failure message:\s*"?(.*?)"?\s*$', text, re.I | re.M)
    message = failure.group(1).strip() if failure else ""
    quoted = re.search(r'has status\s+"([^"]*)"', text, re.I)
    if quoted:
        name = quoted.group(1).strip().rsplit(".", 1)[-1].lower()  # KernelWorkerStatus.RUNNING -> running
    else:  # search the text minus the kernel id: a slug may contain "error"
        name = (text.replace(kernel_id, " ") if kernel_id else text).lower()
    for keyword, state in _KEYWORDS:
        if keyword in name:
            return state, message
    return (name or None) if quoted else None, message


def elapsed_text(seconds: float) -> str:
    """``"  3m10s"`` (minutes padded to 3) or ``"1h02m03s"``."""
    s = int(max(seconds, 0))
    h, s = divmod(s, 3600)
    m, s = divmod(s, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m:3d}m{s:02d}s"


def wait_for_kernel(kaggle: KaggleRun, kernel_id: str, *, sleep: Callable[[float], None] = time.sleep,
                    clock: Callable[[], float] = time.monotonic, first_s: float = 10.0, max_s: float = 120.0,
                    stale_s: float = 60.0, max_failures: int = 5) -> Tuple[str, str]:
    """Poll ``kaggle kernels status`` until the kernel finishes; ``(state in FINISHED, failure message)``.

    Sleeps ``first_s`` doubling to ``max_s`` between polls (back to ``first_s`` when the state
    changes); prints each change once as ``[elapsed] state``.
    """
    start, delay, shown, failures, seen_live = clock(), first_s, None, 0, False
    while True:
        proc = kaggle("kernels", "status", kernel_id, check=False, echo=False)
        text = ((proc.stdout or "") + (proc.stderr or "")).strip()
        state, message = parse_status(text, kernel_id) if proc.returncode == 0 else (None, "")
        elapsed = clock() - start
        if state is None:
            failures += 1
            last = text.splitlines()[-1] if text else f"exit {proc.returncode}"
            if failures >= max_failures:
                raise BuildError(f"--wait: `kaggle kernels status {kernel_id}` failed {failures} times in a row "
                                 f"({last}); check the kernel on kaggle.com, then download with `kaggle kernels "
                                 f"output {kernel_id} -p DIR`")
            label = f"status unavailable ({last})"
        else:
            failures, seen_live = 0, seen_live or state not in FINISHED
            if state in FINISHED and (seen_live or elapsed >= stale_s):
                print(f"[{elapsed_text(elapsed)}] {state}" + (f": {message}" if message else ""), flush=True)
                return state, message
            label = state if state not in FINISHED else f"{state} (the previous version's, probably: waiting " \
                                                        f"for the new one to start)"
        if label != shown:
            print(f"[{elapsed_text(elapsed)}] {label}", flush=True)
            shown, delay = label, first_s
        sleep(delay)
        delay = min(delay * 2, max_s)


def version_folder(root: Path, version: Optional[int]) -> Path:
    """``root/v<version>``; for an unknown version the next free ``root/v<N>`` (one above the highest)."""
    if version is not None:
        return root / f"v{version}"
    taken = [int(p.name[1:]) for p in root.glob("v*") if re.fullmatch(r"v\d+", p.name)] if root.is_dir() else []
    return root / f"v{max(taken, default=0) + 1}"


def download_outputs(kaggle: KaggleRun, kernel_id: str, folder: Path) -> List[Path]:
    """``kaggle kernels output kernel_id -p folder`` (overwriting); every file now in ``folder``, sorted."""
    folder.mkdir(parents=True, exist_ok=True)
    kaggle("kernels", "output", kernel_id, "-p", str(folder), "-o", "-q")
    return sorted(p for p in folder.rglob("*") if p.is_file())


def _json_records(text: str) -> Optional[List[dict]]:
    try:
        data = json.loads(text)
    except ValueError:  # not one document: try one record per line ("[{...}", ",{...}", "]")
        data = []
        for line in text.splitlines():
            line = line.strip().lstrip("[,").rstrip("],").strip()
            if not line:
                continue
            try:
                data.append(json.loads(line))
            except ValueError:
                return None
    if isinstance(data, list) and data and all(isinstance(r, dict) and "data" in r for r in data):
        return data
    return None


def log_lines(path: Path) -> List[str]:
    """The text of a Kaggle session log: the ``data`` of its JSON records joined, or the file's own lines."""
    text = path.read_text(encoding="utf-8", errors="replace")
    records = _json_records(text)
    return "".join(str(r["data"]) for r in records).splitlines() if records is not None else text.splitlines()


def find_log(folder: Path, slug: str) -> Optional[Path]:
    """The session log ``kernels output`` wrote (``<slug>.log``), else the newest ``*.log`` below ``folder``."""
    if (folder / f"{slug}.log").is_file():
        return folder / f"{slug}.log"
    logs = sorted(folder.rglob("*.log"), key=lambda p: (p.stat().st_mtime, str(p)))
    return logs[-1] if logs else None


def read_summaries(folder: Path) -> List[Tuple[Path, Dict]]:
    """Every readable ``<anything>/summary.json`` below ``folder``, by path."""
    found = []
    for path in sorted(folder.rglob("summary.json")):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(data, dict):
            found.append((path, data))
    return found


def summary_line(summary: Dict) -> str:
    """One line: best metric and epoch, epochs run, and where a time-limited run stopped."""
    monitor, best = summary.get("monitor") or "metric", summary.get("best_metric")
    parts = [f"best {monitor} {best:.4g} at epoch {summary.get('best_epoch')}" if isinstance(best, (int, float))
             else f"no best {monitor}"]
    parts.append(f"{summary.get('epochs_run', '?')} epochs run (last epoch {summary.get('last_epoch', '?')})")
    if summary.get("stopped"):
        where = [f"{k} {summary[k]}" for k in ("epoch", "step") if summary.get(k) is not None]
        parts.append(f"stopped: {summary['stopped']}" + (f" at {', '.join(where)}" if where else ""))
    return "; ".join(parts)


def main_files(files: List[Path], folder: Path, limit: int = 8) -> List[str]:
    """The files worth naming (summaries, checkpoints, tables, logs), as paths relative to ``folder``."""
    rank = {name: i for i, name in enumerate(_MAIN_NAMES)}
    main = [p for p in files if p.name in rank or p.suffix == ".log"]
    main.sort(key=lambda p: (rank.get(p.name, len(rank)), str(p)))
    return [p.relative_to(folder).as_posix() for p in main[:limit]]


def _report(kaggle: KaggleRun, kernel_id: str, folder: Path, state: str, tail: int) -> List[Dict]:
    """Download a finished version's outputs and print what came back; the run summaries found."""
    try:
        files = download_outputs(kaggle, kernel_id, folder)
    except BuildError as e:
        if state == "complete":
            raise
        print(f"build.py: warning: {e}", flush=True)  # a failed run's outputs are a bonus; report the failure
        files = sorted(p for p in folder.rglob("*") if p.is_file())
    size = sum(p.stat().st_size for p in files)
    named = main_files(files, folder)
    more = f", and {len(files) - len(named)} more" if len(files) > len(named) else ""
    amount = f"{size / 1e6:.1f} MB" if size >= 1e6 else f"{size / 1e3:.1f} KB"
    print(f"Downloaded {len(files)} file(s), {amount}, to {folder}" +
          (f": {', '.join(named)}{more}" if named else ""))
    summaries = read_summaries(folder)
    for path, summary in summaries:
        print(f"Run {path.parent.relative_to(folder).as_posix() or '.'}: {summary_line(summary)}")
    if state != "complete":
        log = find_log(folder, kernel_id.split("/")[1])
        lines = log_lines(log)[-tail:] if log else []
        print(f"Last {len(lines)} line(s) of {log}:\n  " + "\n  ".join(lines) if lines else
              "No log came back; open the kernel's page on kaggle.com")
    return [s for _, s in summaries]


def follow(kaggle: KaggleRun, kernel_id: str, kernel_dir: Path, version: Optional[int], *,
           outputs: Path = Path("outputs"), max_versions: int = 1, tail: int = 30,
           sleep: Callable[[float], None] = time.sleep, clock: Callable[[], float] = time.monotonic) -> int:
    """Wait for a pushed kernel, download to ``outputs/<slug>/v<N>/`` and report; the exit status.

    0 when a version completes without a time-limit stop (or ``max_versions`` versions were run);
    1 when one fails or is cancelled (its log's last ``tail`` lines are printed). A version whose
    ``summary.json`` says ``"stopped": "time_limit"`` is followed by a push of the same built kernel
    (``kernel_dir``), up to ``max_versions`` versions in all.
    """
    slug = kernel_id.split("/")[1]
    for n in range(1, max_versions + 1):
        if n > 1:
            print(f"The run stopped on its time limit: pushing the same build again (run {n} of at most "
                  f"{max_versions})", flush=True)
            version = push_kernel(kaggle, kernel_dir)
        folder = version_folder(outputs / slug, version)
        if version is None:
            print(f"The pushed version number is not in the kaggle output; outputs go to {folder} (the next "
                  f"free folder)")
        print(f"Waiting for {kernel_id}" + (f" version {version}" if version else "") + " (Ctrl-C stops "
              "waiting, not the kernel)", flush=True)
        try:
            state, _ = wait_for_kernel(kaggle, kernel_id, sleep=sleep, clock=clock)
        except KeyboardInterrupt:
            print(f"Stopped waiting; the kernel keeps running: kaggle kernels status {kernel_id}")
            return 130
        summaries = _report(kaggle, kernel_id, folder, state, tail)
        if state != "complete":
            print(f"{kernel_id}" + (f" version {version}" if version else "") + f" ended: {state}")
            return 1
        if not any(s.get("stopped") == "time_limit" for s in summaries):
            return 0
    hint = "--until-done N" if max_versions == 1 else f"a larger --until-done than {max_versions}"
    print(f"The last version stopped on its time limit; continue with `kaggle kernels push -p {kernel_dir}` "
          f"(or {hint})")
    return 0
