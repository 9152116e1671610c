"""The table `cnnlab data list` prints."""

from __future__ import annotations

from rich.table import Table


def datasets_table(rows: list[dict]) -> Table:
    """Rows of `prepared_datasets()` as a rich table: name, ready or not, split sizes, location."""
    table = Table(title="datasets")
    for column in ("name", "prepared", "train", "test", "location"):
        justify = "right" if column in ("train", "test") else "left"
        table.add_column(column, justify=justify, overflow="fold")
    for row in rows:
        splits = row["splits"]
        table.add_row(
            row["name"],
            "[green]yes[/]" if row["prepared"] else "[red]no[/]",
            f"{splits['train']:,}" if "train" in splits else "-",
            f"{splits['test']:,}" if "test" in splits else "-",
            row["location"],
        )
    return table
