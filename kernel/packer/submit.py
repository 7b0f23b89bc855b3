"""Submitting to a competition with the official ``kaggle`` CLI and waiting for the score.

Client 2.2.5 (the pinned one), read from its source:

- ``kaggle competitions submission-limits COMP --json`` prints ``ApiSubmissionLimits`` as JSON with its zero
  fields left out (``numToday``, ``numTotal``, ``numAllowedNow``, ``limitedByTotal``); all zeros means the user
  is on no team of the competition yet (rules not accepted).
- ``kaggle competitions submit COMP -f FILE -m MSG`` (a file) or ``... -k owner/slug -v N -f submission.csv -m MSG``
  (a code competition: the kernel version's output file) prints the server's message and ``Submission ref: N``.
  2.2.4 printed no ref, and both exit 0 after a failed upload ("Could not submit to competition"). So the exit
  status is never trusted alone: a short unique token goes at the end of the message, and a submission whose ref
  was not printed is looked up by it.
- ``kaggle competitions submissions COMP --csv`` lists ``ref,fileName,date,description,status,publicScore,
  privateScore`` newest first, ``status`` as ``SubmissionStatus.PENDING|COMPLETE|ERROR`` and a missing score as
  ``None``. It has no error description: ``kaggle competitions submission REF`` (2.2.5 on) prints it, as an
  ``Error:`` row whose further lines are indented.
"""
from __future__ import annotations

import csv
import io
import json
import re
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional

from .ledger import Ledger, run_facts
from .metadata import BuildError
from .push import KaggleRun
from .watch import elapsed_text, version_folder

__all__ = ["Submitted", "check_limits", "submit", "list_submissions", "find_submission", "wait_for_score",
           "error_text", "latest_version_folder", "submit_and_score", "show_ledger"]

FAILED_MARKS = ("could not find competition", "could not submit to competition")


@dataclass
class Submitted:
    """One submission sent: its ref (None until found), the message sent (with its unique token), the token."""

    ref: Optional[str]
    message: str
    token: str


def _text(proc) -> str:
    return ((proc.stdout or "") + (proc.stderr or "")).strip()


def _last_line(text: str, fallback: str) -> str:
    """The line that says what went wrong: the last one with a known failure mark (with the ``Error: ...`` line
    after it, where 2.2.5 puts Kaggle's own words), else the last one that is not a progress bar (the client's
    upload prints tqdm bars, ``\\r``-separated)."""
    lines = [line.strip() for line in re.split(r"[\r\n]+", text) if line.strip()]
    lines = [line for line in lines if not re.search(r"\d+%\|", line)]
    marked = [i for i, line in enumerate(lines) if any(mark in line.lower() for mark in FAILED_MARKS)]
    if not marked:
        return (lines or [fallback])[-1]
    i = marked[-1]
    return " ".join(lines[i:i + 2]) if lines[i + 1:i + 2] and lines[i + 1].startswith("Error:") else lines[i]


def check_limits(kaggle: KaggleRun, competition: str) -> int:
    """Today's remaining submissions; raises BuildError (nothing is sent) when none is left or the call fails."""
    proc = kaggle("competitions", "submission-limits", competition, "--json", check=False)
    text = _text(proc)
    match = re.search(r"\{.*\}", text, re.S)
    try:
        limits = json.loads(match.group(0)) if proc.returncode == 0 and match else None
    except ValueError:
        limits = None
    if not isinstance(limits, dict):
        raise BuildError(f"--submit: `kaggle competitions submission-limits {competition}` failed "
                         f"({_last_line(text, f'exit {proc.returncode}')}); check the competition's slug (the last "
                         f"part of its URL)")
    left, today, total = (int(limits.get(k) or 0) for k in ("numAllowedNow", "numToday", "numTotal"))
    if left > 0:
        return left
    if today == 0 and total == 0:
        raise BuildError(f"--submit: Kaggle allows you no submission to {competition} (all limits are 0): join the "
                         f"competition and accept its rules at https://www.kaggle.com/competitions/{competition}/rules")
    cap = "its lifetime cap is reached" if limits.get("limitedByTotal") else f"{today} made today, none left"
    raise BuildError(f"--submit: no submission to {competition} is left ({cap}); nothing was sent: try again after "
                     f"the daily reset (00:00 UTC)")


def submit(kaggle: KaggleRun, competition: str, *, file: Optional[Path] = None, kernel: Optional[str] = None,
           version: Optional[int] = None, message: str, output: str = "submission.csv",
           token: Optional[str] = None) -> Submitted:
    """Send a file (``file``) or a kernel version's output (``kernel``, ``version``); what was sent.

    A failure the client reports (exit status, or its "could not ..." lines that exit 0) raises BuildError.
    """
    token = token or secrets.token_hex(4)
    sent = f"{message} [{token}]"  # the token finds this submission in the listing when no ref was printed
    if kernel is not None:
        if version is None:
            raise BuildError(f"--submit: a code submission needs the version of {kernel}; the push output did not "
                             f"name it: run `kaggle competitions submit {competition} -k {kernel} -v N -f {output} "
                             f"-m MSG` with the version from its page")
        args = ["-k", kernel, "-v", str(version), "-f", output]
    elif file is not None and Path(file).is_file():
        args = ["-f", str(file)]
    else:
        what = f"{file} does not exist" if file is not None else f"no {output} among the downloaded outputs"
        raise BuildError(f"--submit: no submission file ({what}); run with --wait to download the kernel's outputs, "
                         f"or name one with --submission-file FILE")
    proc = kaggle("competitions", "submit", competition, *args, "-m", sent, check=False)
    text = _text(proc)
    if proc.returncode != 0 or any(mark in text.lower() for mark in FAILED_MARKS):
        raise BuildError(f"--submit: `kaggle competitions submit {competition}` failed "
                         f"({_last_line(text, f'exit {proc.returncode}')}); see its output above")
    ref = re.search(r"submission ref:\s*(\d+)", text, re.I)
    return Submitted(ref.group(1) if ref else None, sent, token)


def _status(text: str) -> str:
    return text.strip().rsplit(".", 1)[-1].lower()  # SubmissionStatus.COMPLETE -> complete


def _score(text: Optional[str]) -> Optional[str]:
    text = (text or "").strip()
    return None if text in ("", "None") else text


def list_submissions(kaggle: KaggleRun, competition: str) -> List[Dict[str, Optional[str]]]:
    """The competition's submissions, newest first: ``ref, fileName, date, description, status`` (lower case),
    ``publicScore`` and ``privateScore`` (None while missing). Raises BuildError when the listing fails."""
    proc = kaggle("competitions", "submissions", competition, "--csv", check=False, echo=False)
    text = proc.stdout or ""
    if proc.returncode != 0:
        raise BuildError(f"--submit: `kaggle competitions submissions {competition}` failed "
                         f"({_last_line(_text(proc), f'exit {proc.returncode}')})")
    start = text.find("ref,")
    if start < 0:
        return []  # "No submissions found"
    rows = []
    for row in csv.DictReader(io.StringIO(text[start:])):
        row["status"] = _status(row.get("status") or "")
        row["publicScore"], row["privateScore"] = _score(row.get("publicScore")), _score(row.get("privateScore"))
        rows.append(row)
    return rows


def find_submission(rows: List[Dict], ref: Optional[str] = None, token: Optional[str] = None) -> Optional[Dict]:
    """The row with this ref, else the one whose description ends with ``[token]``."""
    for row in rows:
        if (ref and row.get("ref") == str(ref)) or (token and (row.get("description") or "").endswith(f"[{token}]")):
            return row
    return None


def error_text(kaggle: KaggleRun, ref: str, competition: str) -> str:
    """Kaggle's error description of a failed submission (``kaggle competitions submission REF``, 2.2.5 on), or
    where to read it when the installed client cannot show it."""
    proc = kaggle("competitions", "submission", str(ref), check=False, echo=False)
    found = re.search(r"^\s*Error:\s*(.+?)(?=^\s*Public Score:|\Z)", proc.stdout or "", re.M | re.S)
    if proc.returncode == 0 and found:
        return " ".join(found.group(1).split())
    return (f"the kaggle client printed no error description (`kaggle competitions submission {ref}` needs kaggle "
            f"2.2.5 or later); read it at https://www.kaggle.com/competitions/{competition}/submissions")


def wait_for_score(kaggle: KaggleRun, competition: str, sent: Submitted, *, timeout_s: float = 1800.0,
                   sleep: Callable[[float], None] = time.sleep, clock: Callable[[], float] = time.monotonic,
                   first_s: float = 10.0, max_s: float = 120.0,
                   found: Callable[[Dict], None] = lambda row: None) -> Dict:
    """Poll the listing until the submission is scored or errs, or ``timeout_s`` passes; its last row.

    The first listing must hold it (else BuildError: the client said nothing, but nothing was submitted); it is
    passed to ``found``. Sleeps ``first_s`` doubling to ``max_s``; prints each change of status once.
    """
    start, delay, shown = clock(), first_s, None
    while True:
        row = find_submission(list_submissions(kaggle, competition), sent.ref, sent.token)
        if row is None:
            raise BuildError(f"--submit: the submission \"{sent.message}\" is not in `kaggle competitions submissions "
                             f"{competition}`: it was not made (the kaggle client exits 0 after a failed upload); see the "
                             f"submit output above")
        if shown is None:
            found(row)
        sent.ref = row["ref"]
        elapsed = clock() - start
        if row["status"] != shown:
            print(f"[{elapsed_text(elapsed)}] submission {row['ref']}: {row['status']}", flush=True)
            shown = row["status"]
        if row["status"] in ("complete", "error") or elapsed + delay > timeout_s:
            return row
        sleep(delay)
        delay = min(delay * 2, max_s)


def latest_version_folder(root: Path) -> Optional[Path]:
    """The highest ``root/v<N>`` that exists, or None."""
    taken = [p for p in root.glob("v*") if re.fullmatch(r"v\d+", p.name)] if root.is_dir() else []
    return max(taken, key=lambda p: int(p.name[1:]), default=None)


def _find_file(folder: Optional[Path], name: str) -> Optional[Path]:
    found = sorted(folder.rglob(name), key=lambda p: (len(p.parts), str(p))) if folder and folder.is_dir() else []
    return found[0] if found else None


def submit_and_score(kaggle: KaggleRun, competition: str, *, kernel: Optional[str] = None,
                     version: Optional[int] = None, code: bool = False, file: Optional[Path] = None,
                     message: Optional[str] = None, latest: bool = True, outputs: Path = Path("outputs"),
                     output: str = "submission.csv", timeout_s: float = 1800.0,
                     sleep: Callable[[float], None] = time.sleep, clock: Callable[[], float] = time.monotonic,
                     token: Optional[str] = None) -> int:
    """Check the limits, submit, record a ledger row, wait for the score; the exit status (1: Kaggle's ERROR).

    The run's outputs are ``outputs/<kernel-slug>/v<version>/`` (with ``version`` None and ``latest``: the latest
    downloaded version, which a code submission then submits); the file submitted is ``file`` or the
    ``submission.csv`` there. ``code`` submits the kernel version itself (a code competition). The ledger is
    ``outputs/<competition>/ledger.csv``.
    """
    if code and not kernel:
        raise BuildError("--submit --code: a code submission names a kernel: build it (--config or --inference) or "
                         "submit a file with --submission-file FILE")
    slug_root = outputs / kernel.split("/")[1] if kernel else None
    folder = version_folder(slug_root, version) if slug_root and version is not None else (
        latest_version_folder(slug_root) if slug_root else None)  # after an unnumbered push: the one just written
    if file is None and not code:
        file = _find_file(folder, output)
    if version is None and latest and folder is not None:
        version = int(folder.name[1:])  # the latest downloaded version: the one a code submission submits
    facts = run_facts(Path(file).parent if file is not None and not code else folder)
    check_limits(kaggle, competition)
    base = message or (f"{kernel} v{version}" if kernel else Path(str(file)).name)
    sent = submit(kaggle, competition, file=None if code else file, kernel=kernel if code else None,
                  version=version, message=base, output=output, token=token)
    ledger = Ledger(outputs / competition / "ledger.csv")

    def record(row: Dict) -> None:  # the pending row is kept even when the wait is interrupted
        ledger.add(ref=row["ref"], kernel=kernel or "", version=version, facts=facts, message=sent.message)
        ledger.save()

    row = wait_for_score(kaggle, competition, sent, timeout_s=timeout_s, sleep=sleep, clock=clock, found=record)
    error = error_text(kaggle, row["ref"], competition) if row["status"] == "error" else ""
    ledger.update(row, error=error)
    ledger.save()
    if row["status"] == "error":
        print(f"Submission {row['ref']} failed to score: {error}")
        return 1
    if row["status"] != "complete":
        print(f"Submission {row['ref']} is still {row['status']} after {elapsed_text(timeout_s).strip()}; "
              f"`python build.py --ledger {competition}` fills in its score later")
        return 0
    cv = f" (CV {facts['cv_name']} {facts['cv']})" if facts.get("cv") not in (None, "") else ""
    print(f"Submission {row['ref']} scored: public {row['publicScore'] or '(not published yet)'}{cv}"
          + (f", private {row['privateScore']}" if row["privateScore"] else ""))
    return 0


def show_ledger(kaggle: Callable[[], KaggleRun], competition: Optional[str], outputs: Path = Path("outputs")) -> int:
    """``--ledger [COMP]``: refresh the rows from the listing, rewrite the ledger and its plot, print the table.

    ``kaggle`` makes the runner (only called when there is a ledger). Without COMP the only ledger under
    ``outputs`` is used.
    """
    if not competition:
        found = sorted(p.parent.name for p in outputs.glob("*/ledger.csv"))
        if len(found) != 1:
            raise BuildError(f"--ledger: name the competition ({', '.join(found)})" if found else
                             f"--ledger: no ledger under {outputs}/ yet; submit with --submit COMP first")
        competition = found[0]
    path = outputs / competition / "ledger.csv"
    if not path.is_file():
        raise BuildError(f"--ledger: no ledger for {competition} ({path} does not exist); submit with "
                         f"--submit {competition} first")
    ledger = Ledger(path)
    ledger.refresh(list_submissions(kaggle(), competition))
    ledger.save()
    print(ledger.table())
    print(f"Ledger: {path}; plot: {path.with_suffix('.png')}")
    return 0
