"""The Zarr feature store shared by extract (writer) and train/eval (readers)."""

from construct.lazy import lazy_exports

_EXPORTS = {name: "feature_store" for name in
            ("STORE_DTYPES", "FeatureStore", "StoreLayout", "StoreSpec", "dataset_fingerprint")}
__all__ = list(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
