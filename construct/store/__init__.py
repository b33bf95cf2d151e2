"""The Zarr feature store shared by extract (writer) and train/eval (readers)."""

from construct.store.feature_store import (
    STORE_DTYPES,
    FeatureStore,
    StoreLayout,
    StoreSpec,
    dataset_fingerprint,
)

__all__ = ["STORE_DTYPES", "FeatureStore", "StoreLayout", "StoreSpec", "dataset_fingerprint"]
