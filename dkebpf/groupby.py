"""Group-by aggregation of Arrow tables without `pyarrow.acero`.

`Table.group_by(...).aggregate(...)` imports pyarrow.acero, which imports
pyarrow.dataset, and that the filesystems (S3, GCS, Azure, HDFS), parquet,
CSV, JSON and ssl: +17 MiB of resident memory for a collector that reads
no file (README "Resources"). The same aggregate node is reached here
through the compiled `pyarrow._acero` alone, which imports none of them.
tests/unit/test_imports.py checks both: the same result as
Table.group_by, and that pyarrow.dataset stays unimported."""
from pyarrow._acero import AggregateNodeOptions, Declaration, TableSourceNodeOptions


def group_by(table, keys, aggregations):
    """``table.group_by(keys, use_threads=False).aggregate(aggregations)``:
    aggregations are (column, function) pairs ("sum", "count", "max", ...);
    the result has the keys, then one column "<column>_<function>" per
    aggregation, one row per distinct key, single-threaded."""
    keys = [keys] if isinstance(keys, str) else list(keys)
    aggs = [([column], f"hash_{func}" if keys else func, None, f"{column}_{func}")
            for column, func in aggregations]
    plan = Declaration.from_sequence([
        Declaration("table_source", TableSourceNodeOptions(table)),
        Declaration("aggregate", AggregateNodeOptions(aggs, keys=keys)),
    ])
    return plan.to_table(use_threads=False)
