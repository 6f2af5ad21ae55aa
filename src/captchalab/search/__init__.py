"""Image search: an incremental, persistent index of a folder's images, queried by image or by text.

The index is model-agnostic: anything that follows ``ImageEmbedder`` (and ``TextEmbedder`` for text queries)
can fill it. Nothing here imports torch; faiss is imported only for large indexes.
"""

from captchalab.search.datasets import ChannelStats, channel_stats, compute_channel_stats, split_class_folders
from captchalab.search.embedder import ImageEmbedder, TextEmbedder
from captchalab.search.index import (
    ANN_THRESHOLD,
    Hit,
    ImageIndex,
    RecallReport,
    UpdateReport,
    update_index,
)

__all__ = [
    "ANN_THRESHOLD",
    "ChannelStats",
    "Hit",
    "ImageEmbedder",
    "ImageIndex",
    "RecallReport",
    "TextEmbedder",
    "UpdateReport",
    "channel_stats",
    "compute_channel_stats",
    "split_class_folders",
    "update_index",
]
