"""The per-epoch training histories of a finished run, read back from its `history/` CSV files."""

import csv
import math
from pathlib import Path


def _read_history_csv(path):
    """One history CSV as dict metric -> per-epoch floats (NaN where a value is `NA`); the epoch column is the order."""
    with open(path, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    columns = [column for column in (rows[0] if rows else {}) if column != "epoch"]
    return {column: [math.nan if row[column] in ("", "NA") else float(row[column]) for row in rows]
            for column in columns}


def read_histories(run_dir, models=None):
    """The training history of each trained model of a run: `history/<MODEL>.csv`, with folds the first fold's.

    Models reused under a second name and the baselines have no history and are left out.

    Args:
        run_dir: the run folder.
        models: model names, to keep and to order the result by (default: None, every history in
            the folder, by name).

    Example:
        >>> read_histories("runs/exp1")["fusion"]["val_loss"][:3]
        [1.21, 0.84, 0.66]
    """
    history_dir = Path(run_dir) / "history"
    paths = {}
    if history_dir.is_dir():
        for path in sorted(history_dir.glob("*.csv")):
            paths[path.stem] = path
        for folder in sorted(entry for entry in history_dir.iterdir() if entry.is_dir()):
            # Cross-validation keeps one file per fold; the first fold's stands for the model, as in the report.
            folds = sorted(folder.glob("*.csv"), key=lambda fold: (fold.name != "repeat1_fold1.csv", fold.name))
            if folds:
                paths[folder.name] = folds[0]
    names = sorted(paths) if models is None else [name for name in models if name in paths]
    return {name: _read_history_csv(paths[name]) for name in names}
