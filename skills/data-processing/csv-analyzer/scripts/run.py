"""csv-analyzer: column statistics and anomalies of a CSV table."""

from __future__ import annotations

import math
import statistics
from collections import Counter
from dataclasses import dataclass, field

from skillscale.skillkit import insights_section, md_table, read_table

MISSING = frozenset({"", "na", "n/a", "nan", "null", "none", "-", "?"})
MAX_LISTED = 5


def to_number(value: str) -> float | None:
    text = value.strip().replace("_", "")
    if not text:
        return None
    try:
        number = float(text)
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def fmt(number: float) -> str:
    if number == int(number) and abs(number) < 1e15:
        return str(int(number))
    return f"{number:.4g}" if abs(number) >= 1e4 or abs(number) < 1e-3 else f"{number:.3f}"


@dataclass
class Column:
    name: str
    values: list[tuple[int, str]] = field(default_factory=list)  # (row number, raw)

    def filled(self) -> list[tuple[int, str]]:
        return [(r, v) for r, v in self.values if v.strip().lower() not in MISSING]

    def numbers(self) -> list[tuple[int, float]]:
        out = []
        for row, raw in self.filled():
            number = to_number(raw)
            if number is not None:
                out.append((row, number))
        return out

    def kind(self) -> str:
        filled = self.filled()
        if not filled:
            return "empty"
        numbers = self.numbers()
        if len(numbers) >= 0.8 * len(filled):
            if all(n == int(n) for _, n in numbers):
                return "integer"
            return "float"
        lowered = {v.strip().lower() for _, v in filled}
        if lowered <= {"true", "false", "yes", "no", "0", "1", "y", "n"}:
            return "boolean"
        return "text"


def main() -> None:
    # The table wherever the caller put it (after a request, fenced, JSON...);
    # no table at all is the caller's mistake: a bad_request with a hint.
    table = read_table()
    rows, delimiter = table.rows, table.delimiter
    width = Counter(len(r) for r in rows).most_common(1)[0][0]

    has_header = all(to_number(c) is None for c in rows[0]) and len(rows) > 1
    header = [c.strip() or f"column_{i + 1}" for i, c in enumerate(rows[0])] if has_header else []
    header += [f"column_{i + 1}" for i in range(len(header), width)]
    data = rows[1:] if has_header else rows
    first_data_line = 2 if has_header else 1
    columns = [Column(name) for name in header[:width]]
    ragged: list[int] = []
    for offset, row in enumerate(data):
        line = first_data_line + offset
        if len(row) != width:
            ragged.append(line)
        for i, column in enumerate(columns):
            column.values.append((line, row[i] if i < len(row) else ""))

    shown = "\\t" if delimiter == "\t" else delimiter
    out = [
        "## CSV Analysis",
        "",
        f"**{len(data)} rows x {width} columns**, delimiter `{shown}`, "
        f"header {'detected' if has_header else 'not detected'}.",
        "",
    ]
    overview = []
    for column in columns:
        filled = column.filled()
        overview.append(
            (
                column.name,
                column.kind(),
                len(filled),
                len(column.values) - len(filled),
                len({v.strip() for _, v in filled}),
            )
        )
    out += [
        "### Columns",
        "",
        md_table(("Column", "Type", "Filled", "Missing", "Distinct"), overview),
        "",
    ]

    numeric_rows = []
    anomalies: list[str] = []
    for column in columns:
        kind = column.kind()
        filled = column.filled()
        if kind in ("integer", "float"):
            numbers = column.numbers()
            values = sorted(n for _, n in numbers)
            if values:
                q1, median, q3 = (
                    statistics.quantiles(values, n=4, method="inclusive")
                    if len(values) > 1
                    else (values[0],) * 3
                )
                std = statistics.stdev(values) if len(values) > 1 else 0.0
                numeric_rows.append(
                    (
                        column.name,
                        fmt(statistics.fmean(values)),
                        fmt(std),
                        fmt(values[0]),
                        fmt(q1),
                        fmt(median),
                        fmt(q3),
                        fmt(values[-1]),
                    )
                )
                iqr = q3 - q1
                if iqr > 0 and len(values) >= 4:
                    low, high = q1 - 1.5 * iqr, q3 + 1.5 * iqr
                    outliers = [(r, n) for r, n in numbers if n < low or n > high]
                    if outliers:
                        listed = ", ".join(f"{fmt(n)} (row {r})" for r, n in outliers[:MAX_LISTED])
                        more = (
                            f" and {len(outliers) - MAX_LISTED} more"
                            if len(outliers) > MAX_LISTED
                            else ""
                        )
                        anomalies.append(
                            f"**{column.name}**: {len(outliers)} outlier(s) outside "
                            f"[{fmt(low)}, {fmt(high)}]: {listed}{more}"
                        )
            bad = [(r, v) for r, v in filled if to_number(v) is None]
            if bad:
                listed = ", ".join(f"{v.strip()!r} (row {r})" for r, v in bad[:MAX_LISTED])
                anomalies.append(
                    f"**{column.name}**: {len(bad)} non-numeric value(s) "
                    f"in a numeric column: {listed}"
                )
        missing = len(column.values) - len(filled)
        if missing:
            missing_rows = [r for r, v in column.values if v.strip().lower() in MISSING]
            shown_rows = ", ".join(map(str, missing_rows[:MAX_LISTED]))
            anomalies.append(
                f"**{column.name}**: {missing} missing value(s) (rows {shown_rows}"
                f"{', ...' if missing > MAX_LISTED else ''})"
            )
        if len(filled) > 1 and len({v.strip() for _, v in filled}) == 1:
            anomalies.append(
                f"**{column.name}**: constant column (every value is {filled[0][1].strip()!r})"
            )

    if numeric_rows:
        out += [
            "### Numeric statistics",
            "",
            md_table(("Column", "Mean", "Std", "Min", "Q1", "Median", "Q3", "Max"), numeric_rows),
            "",
        ]
    text_columns = [c for c in columns if c.kind() in ("text", "boolean")]
    if text_columns:
        rows_out = []
        for column in text_columns:
            top = Counter(v.strip() for _, v in column.filled()).most_common(3)
            rows_out.append((column.name, ", ".join(f"{v} ({n})" for v, n in top)))
        out += ["### Frequent values", "", md_table(("Column", "Top values"), rows_out), ""]

    seen: dict[tuple[str, ...], int] = {}
    duplicates = []
    for offset, row in enumerate(data):
        key = tuple(c.strip() for c in row)
        if key in seen:
            duplicates.append((first_data_line + offset, seen[key]))
        else:
            seen[key] = first_data_line + offset
    if duplicates:
        listed = ", ".join(f"row {a} = row {b}" for a, b in duplicates[:MAX_LISTED])
        anomalies.append(f"{len(duplicates)} duplicate row(s): {listed}")
    if ragged:
        anomalies.append(
            f"{len(ragged)} row(s) with a field count other than {width}: rows "
            + ", ".join(map(str, ragged[:MAX_LISTED]))
        )

    out += ["### Anomalies", ""]
    out += [f"- {a}" for a in anomalies] if anomalies else ["None found."]
    out += insights_section(
        "Give three short insights and recommendations about this dataset profile:\n"
        + "\n".join(out)
    )
    print("\n".join(out))


if __name__ == "__main__":
    main()
