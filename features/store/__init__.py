"""The HDF5 feature store: its layout, crash-safe changes, the writer lock, and the loader.

Crash safety rests on three rules (see the README section "How it never loses work"):
every structural change (new store, new backbone, new or dropped rows) is made on a copy
that is fsynced and `os.replace`d over the store; feature datasets are created at full size
with their chunks allocated at once and no compression, so filling rows writes raw data
only; and rows are marked done in `/progress/<backbone>` only after their features, and the
CRC32 of each row in `/checksums/<features|views>/<backbone>`, are on disk. What a run measured
(`/cost`) is added in the same way, as raw data. A sharded (`--ray`) run keeps rows in shard files
instead, written whole and renamed, which the store maps with HDF5 virtual datasets (`_virtual`).

Every refusal of a damaged or unfinished store is a `StoreError`, one line that says what is
wrong and how to finish or rebuild the store.
"""

from features.store._files import (
    REBUILD,
    StoreBusyError,
    StoreError,
    h5py_version,
    open_store,
    remove_stale_temporary,
    rewrite_store,
    store_errors,
    store_lock,
)
from features.store._layout import (
    CHECKSUMS_SINCE,
    COST_COLUMNS,
    FORMAT_VERSION,
    SPLITS,
    STRING_DTYPE,
    add_backbone,
    feature_attrs,
    options_json,
    read_cost,
    read_options,
    seconds_per_image,
    stored_backbones,
)
from features.store._checks import (
    check_finished,
    check_store,
    open_to_resume,
    verify_store,
)
from features.store._read import (
    MAX_READ_SPAN,
    FeatureRows,
    FeatureStore,
    RunRows,
    StoreIndex,
    load_store,
    read_index,
    read_run_rows,
)
from features.store._shards import (
    ShardResult,
    ShardTask,
    ShardWriter,
    commit_copied,
    commit_mapped,
    plan_shards,
    read_finished,
    shards_folder,
)
from features.store._virtual import (
    RowSpan,
    create_virtual,
    merge_shards,
    read_spans,
    remove_unused_shards,
    shard_files,
    spans_of_rows,
    virtual_backbones,
)
from features.store._write import (
    RowFiller,
    create_store,
    rebuild_rows,
    write_plain_store,
)

__all__ = [
    "shards_folder",
    "read_finished",
    "plan_shards",
    "commit_mapped",
    "commit_copied",
    "ShardWriter",
    "ShardTask",
    "ShardResult",
    "add_backbone",
    "check_finished",
    "check_store",
    "CHECKSUMS_SINCE",
    "COST_COLUMNS",
    "create_store",
    "create_virtual",
    "feature_attrs",
    "FeatureRows",
    "FeatureStore",
    "FORMAT_VERSION",
    "h5py_version",
    "load_store",
    "MAX_READ_SPAN",
    "merge_shards",
    "open_store",
    "open_to_resume",
    "options_json",
    "read_cost",
    "read_index",
    "read_options",
    "read_run_rows",
    "read_spans",
    "REBUILD",
    "rebuild_rows",
    "remove_stale_temporary",
    "remove_unused_shards",
    "rewrite_store",
    "RowFiller",
    "RowSpan",
    "RunRows",
    "seconds_per_image",
    "shard_files",
    "spans_of_rows",
    "SPLITS",
    "store_errors",
    "store_lock",
    "StoreBusyError",
    "stored_backbones",
    "StoreError",
    "StoreIndex",
    "STRING_DTYPE",
    "verify_store",
    "virtual_backbones",
    "write_plain_store",
]
