"""The output contract of every benchmark and check: a human table, then exactly one JSON line
(which carries what the figures were measured on: llmlab.environment.machine). Timing itself is
llmlab.timing."""

from __future__ import annotations

import json
from typing import Any


def print_table(rows: list[dict[str, Any]], columns: list[tuple[str, str, str]]) -> None:
    """columns: (key, header, format spec). Missing values print as '-'."""
    cells = [[h for _, h, _ in columns]]
    for row in rows:
        cells.append([
            "-" if row.get(k) is None else (format(row[k], fmt) if fmt else str(row[k])) for k, _, fmt in columns
        ])
    widths = [max(len(r[i]) for r in cells) for i in range(len(columns))]
    for j, r in enumerate(cells):
        print("  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))))
        if j == 0:
            print("  ".join("-" * w for w in widths))


def emit_json(payload: dict[str, Any]) -> None:
    """The last line of every benchmark: one JSON object."""
    print(json.dumps(payload, sort_keys=False))
