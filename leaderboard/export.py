"""`python -m leaderboard export DIR`: the history and the ranking as files for analysis (pandas,
DuckDB, the `datasets` library). The history is streamed in batches (a million rows never sit
in memory at once); `history.parquet` has the columns of the previous version's
`results.parquet`, so it also serves to go back to that version.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from . import history as hist
from .rows import COLUMNS, SCHEMA, rows_to_table
from .store import Store

FORMATS = ("parquet", "csv")


def _for_csv(table: pa.Table) -> pa.Table:
    """Lists as JSON text (CSV has no lists)."""
    for name in table.column_names:
        if pa.types.is_list(table.schema.field(name).type):
            values = [None if v is None else json.dumps(v) for v in table.column(name).to_pylist()]
            table = table.set_column(table.schema.get_field_index(name), name, pa.array(values, pa.string()))
    return table


class _Writer:
    def __init__(self, path: Path, fmt: str):
        self.path, self.fmt, self.writer = path, fmt, None

    def write(self, table: pa.Table) -> None:
        if self.fmt == "csv":
            table = _for_csv(table)
        if self.writer is None:
            self.writer = (pq.ParquetWriter(self.path, table.schema) if self.fmt == "parquet"
                           else pacsv.CSVWriter(self.path, table.schema))
        self.writer.write_table(table)

    def close(self, empty_schema: pa.Schema) -> None:
        if self.writer is None:
            self.write(empty_schema.empty_table())
        self.writer.close()


def export(store: Store, directory: str | Path, *, fmt: str = "parquet") -> list[Path]:
    """Write `history.{fmt}` (every row) and `ranking.{fmt}` (every env) into `directory`;
    returns the paths. Files are written aside and renamed, so a reader never sees half."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}: use one of {', '.join(FORMATS)}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    target = directory / f"history.{fmt}"
    tmp = target.with_name(f".{target.name}.tmp")
    writer = _Writer(tmp, fmt)
    with store.database.read() as db:
        for rows in hist.select(db):
            writer.write(rows_to_table(rows, columns=COLUMNS))
    writer.close(SCHEMA)
    tmp.replace(target)
    written.append(target)

    ranking = store.ranking()
    target = directory / f"ranking.{fmt}"
    tmp = target.with_name(f".{target.name}.tmp")
    table = pa.Table.from_pandas(ranking, preserve_index=False)
    if fmt == "parquet":
        pq.write_table(table, tmp)
    else:
        pacsv.write_csv(_for_csv(table), tmp)
    tmp.replace(target)
    written.append(target)
    return written
