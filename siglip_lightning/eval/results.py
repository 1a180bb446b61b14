"""The results of ``siglip-lightning evaluate``: one folder per model with ``results.json``,
``results.csv`` and ``results.md``, and one table with a column per model (all the models whose
results are in the output folder), so a base model and its fine-tune read side by side."""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Dict, List

from siglip_lightning.atomic_files import atomic_path

Record = Dict  # {"label", "model", "kind", "suite", "tasks": {name: {"task", "metrics": {...}, "seconds"}}}


def metric_rows(record: Record) -> List[tuple]:
    """``(task, metric, value)`` in the order measured."""
    return [(task, metric, value) for task, entry in record["tasks"].items()
            for metric, value in entry["metrics"].items()]


def _write(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        Path(tmp).write_text(text, encoding="utf-8")


def write_record(out: Path, record: Record) -> Path:
    """``out/<label>/results.{json,csv,md}``; returns the folder."""
    folder = out / record["label"]
    folder.mkdir(parents=True, exist_ok=True)
    _write(folder / "results.json", json.dumps(record, indent=1) + "\n")
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["model", "task", "metric", "value"])
    writer.writerows([record["label"], *row] for row in metric_rows(record))
    _write(folder / "results.csv", buffer.getvalue())
    _write(folder / "results.md", table([record]))
    return folder


def read_records(out: Path) -> List[Record]:
    """Every model's record already written under ``out`` (oldest first)."""
    files = sorted(out.glob("*/results.json"), key=lambda p: p.stat().st_mtime)
    return [json.loads(f.read_text()) for f in files]


def table(records: List[Record]) -> str:
    """Markdown: one row per (task, metric), one column per model."""
    keys: List[tuple] = []
    for record in records:
        keys += [(task, metric) for task, metric, _ in metric_rows(record) if (task, metric) not in keys]
    values = [{(t, m): v for t, m, v in metric_rows(r)} for r in records]
    lines = ["| task | metric | " + " | ".join(r["label"] for r in records) + " |",
             "|---|---|" + "---:|" * len(records)]
    for task, metric in keys:
        cells = [f"{v[(task, metric)]:.4f}" if (task, metric) in v else "" for v in values]
        lines.append(f"| {task} | {metric} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_comparison(out: Path) -> str:
    """``out/comparison.md`` and ``out/comparison.csv`` over every model in ``out``; returns the markdown."""
    records = read_records(out)
    text = table(records)
    _write(out / "comparison.md", text)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["model", "task", "metric", "value"])
    for record in records:
        writer.writerows([record["label"], *row] for row in metric_rows(record))
    _write(out / "comparison.csv", buffer.getvalue())
    return text
