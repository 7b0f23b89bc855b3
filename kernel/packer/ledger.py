"""The CV-vs-LB ledger: one row per submission in ``outputs/<competition>/ledger.csv``, and ``ledger.png``.

A row holds when it was sent, the kernel and version, the run, the run's CV figure (its ``summary.json``: a
k-fold run's ``cv_metric``, else the best validation ``best_metric``), the options that differ from the previous
row (the run's ``config.yaml``, flattened; all of them are kept in ``options`` for the next comparison), the
public and private scores, the status and the message. Pending rows are filled in by :meth:`Ledger.refresh`
from ``kaggle competitions submissions``. Each save rewrites the CSV and the plot atomically: a failed call
leaves the earlier rows as they were.
"""
from __future__ import annotations

import csv
import io
import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import yaml

from ..paths import atomic_write
from .watch import read_summaries

__all__ = ["COLUMNS", "run_facts", "changed_options", "Ledger"]

COLUMNS = ("ref", "time", "kernel", "version", "run", "cv_name", "cv", "public", "private", "status", "changed",
           "message", "error", "options")
# What an inference kernel's summary.json says it chose that can change the score (not its timings or counts).
_INFERENCE_OPTIONS = ("checkpoint", "members", "of_members", "tta")


def _flatten(data: Any, prefix: str = "") -> Dict[str, Any]:
    if not isinstance(data, dict):
        return {prefix: data} if prefix else {}
    flat: Dict[str, Any] = {}
    for key, value in data.items():
        flat.update(_flatten(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}": value})
    return flat


def run_facts(folder: Optional[Path]) -> Dict[str, Any]:
    """``run``, ``cv_name``, ``cv`` and ``options`` of the run whose outputs are in ``folder`` (empty when none).

    A k-fold run's top summary carries ``cv_metric``; the shallowest summary with a figure is the run's.
    """
    summaries = read_summaries(folder) if folder is not None and folder.is_dir() else []
    summaries.sort(key=lambda item: (len(item[0].parts), "cv_metric" not in item[1], str(item[0])))
    for path, summary in summaries:
        if isinstance(summary.get("cv_metric"), (int, float)):
            name, value = summary.get("cv_metric_name") or "cv", summary["cv_metric"]
        elif isinstance(summary.get("best_metric"), (int, float)):
            name, value = summary.get("monitor") or "metric", summary["best_metric"]
        else:
            continue
        run = path.parent.relative_to(folder).as_posix()
        if run == ".":  # an inference kernel's output: the trained run's summary, named by its run folder
            run = Path(str(summary.get("run_dir") or folder.name)).name
        return {"run": run, "cv_name": name, "cv": value, "options": _options(path.parent, summary)}
    return {"run": folder.name if folder is not None else "", "cv_name": "", "cv": None, "options": {}}


def _options(folder: Path, summary: Dict[str, Any]) -> Dict[str, Any]:
    """The run's options (its ``config.yaml``, flattened) and what an inference kernel chose (members, TTA)."""
    config = folder / "config.yaml"
    try:
        options = _flatten(yaml.safe_load(config.read_text(encoding="utf-8"))) if config.is_file() else {}
    except (OSError, yaml.YAMLError):
        options = {}
    inference = summary.get("inference") if isinstance(summary.get("inference"), dict) else {}
    options.update({f"inference.{k}": inference[k] for k in _INFERENCE_OPTIONS if k in inference})
    return options


def changed_options(now: Dict[str, Any], before: Optional[Dict[str, Any]]) -> str:
    """``"lr=0.001 (was 0.01); epochs=12 (was 8)"``: the options that differ from the previous row's."""
    if before is None:
        return ""
    keys = sorted(k for k in set(now) | set(before) if now.get(k) != before.get(k))
    return "; ".join(f"{k}={json.dumps(now.get(k))} (was {json.dumps(before.get(k))})" for k in keys)


def _float(text: Any) -> Optional[float]:
    try:
        return float(text)
    except (TypeError, ValueError):
        return None


class Ledger:
    """The rows of one competition's ledger, keyed by submission ref; :meth:`save` writes CSV and plot."""

    def __init__(self, path: Path, now: Callable[[], datetime] = lambda: datetime.now(timezone.utc)):
        self.path, self.now = Path(path), now
        self.rows: List[Dict[str, str]] = []
        if self.path.is_file():
            with self.path.open(encoding="utf-8", newline="") as f:
                self.rows = [{c: row.get(c) or "" for c in COLUMNS} for row in csv.DictReader(f)]

    def _row(self, ref: str) -> Optional[Dict[str, str]]:
        return next((r for r in self.rows if r["ref"] == str(ref)), None)

    def add(self, *, ref: str, kernel: str, version: Optional[int], facts: Dict[str, Any], message: str) -> None:
        """A new pending row (or the same ref's row again), its options compared with the previous row's."""
        before = json.loads(self.rows[-1]["options"] or "{}") if self.rows else None
        options = facts.get("options") or {}
        row = {c: "" for c in COLUMNS}
        row.update(ref=str(ref), time=self.now().strftime("%Y-%m-%d %H:%M:%S"), kernel=kernel,
                   version="" if version is None else str(version), run=facts.get("run") or "",
                   cv_name=facts.get("cv_name") or "", cv="" if facts.get("cv") is None else f"{facts['cv']:.6g}",
                   status="pending", changed=changed_options(options, before), message=message,
                   options=json.dumps(options, sort_keys=True, default=str))
        old = self._row(ref)
        if old is not None:
            self.rows[self.rows.index(old)] = row
        else:
            self.rows.append(row)

    def update(self, listed: Dict[str, Any], error: str = "") -> bool:
        """Take status and scores from a listing row (``ref``, ``status``, ``publicScore``, ``privateScore``);
        whether this ledger has that ref."""
        row = self._row(listed.get("ref") or "")
        if row is None:
            return False
        row.update(status=listed.get("status") or row["status"], public=listed.get("publicScore") or "",
                   private=listed.get("privateScore") or "")
        if error:
            row["error"] = error
        return True

    def refresh(self, listing: List[Dict[str, Any]]) -> int:
        """Update every row the listing holds (pending ones get their scores; private scores appear once
        revealed); how many rows were found."""
        return sum(self.update(listed) for listed in listing)

    def save(self) -> None:
        """Rewrite ``ledger.csv`` and ``ledger.png`` next to it, each atomically."""
        buf = io.StringIO()  # as kernel.report.files.write_csv does (that package imports torch: too slow here)
        csv.writer(buf, lineterminator="\n").writerows([list(COLUMNS)] + [[r[c] for c in COLUMNS] for r in self.rows])
        atomic_write(self.path, lambda tmp: Path(tmp).write_text(buf.getvalue(), encoding="utf-8"))
        self.plot(self.path.with_suffix(".png"))

    def table(self) -> str:
        """The ledger as an aligned text table (without the options and the message)."""
        shown = ("ref", "time", "kernel", "version", "run", "cv", "public", "private", "status", "changed")
        cells = [list(shown)] + [[r[c] for c in shown] for r in self.rows]
        widths = [max(len(row[i]) for row in cells) for i in range(len(shown))]
        return "\n".join("  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip() for row in cells)

    def plot(self, path: Path) -> None:
        """Public score against CV, one labelled point per scored submission (matplotlib, Agg backend)."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        points = [(i, _float(r["cv"]), _float(r["public"]), r) for i, r in enumerate(self.rows, 1)]
        points = [p for p in points if p[1] is not None and p[2] is not None]
        fig, ax = plt.subplots(figsize=(6, 4.5), dpi=100)
        try:
            if points:
                xs, ys = [p[1] for p in points], [p[2] for p in points]
                low, high = min(xs + ys), max(xs + ys)
                ax.plot([low, high], [low, high], ":", color="grey", label="CV = LB")  # on it: CV predicts LB
                ax.scatter(xs, ys, color="tab:blue", zorder=3)
                ax.margins(0.15)
                ax.legend(loc="lower right", fontsize=8)
                for i, x, y, r in points:
                    label = f"#{i} v{r['version']}" if r["version"] else f"#{i}"
                    ax.annotate(label, (x, y), textcoords="offset points", xytext=(5, 5), fontsize=8)
            else:
                ax.text(0.5, 0.5, "no scored submission with a CV figure yet", ha="center", va="center",
                        transform=ax.transAxes)
            names = sorted({r["cv_name"] for r in self.rows if r["cv_name"]})
            ax.set_xlabel(f"CV ({', '.join(names)})" if names else "CV")
            ax.set_ylabel("public LB score")
            ax.set_title(f"{self.path.parent.name}: CV vs public LB ({len(points)} of {len(self.rows)} submissions)")
            ax.grid(True, alpha=0.3)
            fig.tight_layout()
            atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))
        finally:
            plt.close(fig)
