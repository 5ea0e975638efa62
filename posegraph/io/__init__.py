"""File formats → :class:`~posegraph.graph.PoseGraph` and back. Knows nothing of Theseus."""

from .g2o import format_g2o, read_g2o, write_bytes_atomic, write_g2o, write_text_atomic

__all__ = ["read_g2o", "write_g2o", "format_g2o", "write_text_atomic", "write_bytes_atomic"]
