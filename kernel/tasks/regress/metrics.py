"""Regression metrics in the targets' own units: RMSE, MAE, R², Pearson's r, per target and averaged.

:class:`RegressMeter` keeps sums only (no host sync per batch), so a mid-epoch checkpoint holds them and several
processes add theirs up; outputs and targets arrive standardized and are brought back to the original units
with the run's mean and std first. With ``keep_outputs`` it also keeps the predictions and targets (original
units) for the best checkpoint's pictures.
"""
from __future__ import annotations

import math
from typing import Any, Dict, List, Sequence

import numpy as np
import torch

__all__ = ["RegressMeter", "regression_scores"]

SUMS = ("n", "y", "y2", "p", "p2", "yp", "abs", "sq")


def regression_scores(pred: np.ndarray, true: np.ndarray) -> Dict[str, float]:
    """RMSE, MAE, R² and Pearson's r of ``pred`` against ``true`` (both (N,) or (N, T)), averaged over targets."""
    pred, true = np.asarray(pred, np.float64).reshape(len(pred), -1), np.asarray(true, np.float64).reshape(len(true), -1)
    err = pred - true
    ss_tot = ((true - true.mean(0)) ** 2).sum(0)
    r2 = np.where(ss_tot > 0, 1 - (err ** 2).sum(0) / np.where(ss_tot > 0, ss_tot, 1), np.nan)
    pearson = [float(np.corrcoef(pred[:, j], true[:, j])[0, 1]) if pred[:, j].std() > 0 and true[:, j].std() > 0
               else float("nan") for j in range(true.shape[1])]
    return {"rmse": float(np.sqrt((err ** 2).mean(0)).mean()), "mae": float(np.abs(err).mean(0).mean()),
            "r2": float(np.mean(r2)), "pearson": float(np.mean(pearson))}


class RegressMeter:
    """Sums over a pass of (N, T) standardized outputs and targets -> ``rmse``, ``mae``, ``r2``, ``pearson`` (the
    mean over targets; per target ``rmse_<name>`` when there are several) in original units."""

    def __init__(self, mean: Sequence[float], std: Sequence[float], names: Sequence[str], keep_outputs: bool = False):
        self.mean, self.std = torch.tensor(mean, dtype=torch.float64), torch.tensor(std, dtype=torch.float64)
        self.names, self.keep_outputs = list(names), keep_outputs
        self._sums = {k: torch.zeros(len(self.names), dtype=torch.float64) for k in SUMS}
        self.preds: List[torch.Tensor] = []
        self.trues: List[torch.Tensor] = []

    def original(self, standardized: torch.Tensor) -> torch.Tensor:
        """(N, T) standardized values -> the targets' own units (float64)."""
        return standardized.double().reshape(len(standardized), -1) * self.std.to(standardized.device) + \
            self.mean.to(standardized.device)

    def update(self, outputs: torch.Tensor, targets: torch.Tensor) -> None:
        if self._sums["n"].device != outputs.device:
            self._sums = {k: v.to(outputs.device) for k, v in self._sums.items()}
        p, y = self.original(outputs.detach()), self.original(targets)
        s = self._sums
        s["n"] += p.shape[0]
        s["y"] += y.sum(0)
        s["y2"] += (y * y).sum(0)
        s["p"] += p.sum(0)
        s["p2"] += (p * p).sum(0)
        s["yp"] += (y * p).sum(0)
        s["abs"] += (p - y).abs().sum(0)
        s["sq"] += ((p - y) ** 2).sum(0)
        if self.keep_outputs:
            self.preds.append(p.float())
            self.trues.append(y.float())

    def state(self) -> Dict[str, torch.Tensor]:
        return {k: v.clone() for k, v in self._sums.items()}

    def load_state(self, state: Dict[str, torch.Tensor]) -> None:
        self._sums = {k: state[k].detach().clone().double() for k in SUMS}

    def sync(self) -> None:
        """Sum over the processes; gather the kept outputs in dataset order (process r holds r, r + P, ...)."""
        from ...engine.distributed import all_reduce_sum, gather_in_order

        self.load_state({k: all_reduce_sum(v.clone()) for k, v in self._sums.items()})
        if self.keep_outputs:
            self.preds, self.trues = [gather_in_order(self.preds)], [gather_in_order(self.trues)]

    def compute(self) -> Dict[str, Any]:
        s = {k: v.cpu() for k, v in self._sums.items()}
        n = s["n"].clamp_min(1.0)
        rmse, mae = (s["sq"] / n).sqrt(), s["abs"] / n
        var_y = s["y2"] / n - (s["y"] / n) ** 2
        var_p = s["p2"] / n - (s["p"] / n) ** 2
        cov = s["yp"] / n - s["y"] * s["p"] / n ** 2
        r2 = torch.where(var_y > 0, 1 - (s["sq"] / n) / var_y.clamp_min(1e-300), torch.full_like(var_y, math.nan))
        r = torch.where((var_y > 0) & (var_p > 0), cov / (var_y * var_p).clamp_min(1e-300).sqrt(),
                        torch.full_like(var_y, math.nan))
        out: Dict[str, Any] = {"rmse": float(rmse.mean()), "mae": float(mae.mean()), "r2": float(r2.mean()),
                               "pearson": float(r.mean())}
        if len(self.names) > 1:
            out.update({f"rmse_{name}": float(v) for name, v in zip(self.names, rmse)})
        if self.keep_outputs:
            out["preds"], out["trues"] = _cat(self.preds).cpu(), _cat(self.trues).cpu()
        return out


def _cat(parts: List[torch.Tensor]) -> torch.Tensor:
    return torch.cat(parts) if parts else torch.zeros(0)

