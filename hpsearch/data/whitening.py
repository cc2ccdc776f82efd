"""PCA and ZCA whitening, fitted on the training split only and cached on disk.

Both decorrelate the inputs and give every direction unit variance: with the training split centred (its mean image
subtracted) and C = X^T X / N = U diag(s) U^T,

- ``zca`` maps a row x to x U diag(1/sqrt(s + e)) U^T: whitened, yet as close to the original pixels as whitening
  allows, so ``sample_shape`` (images stay images) is kept;
- ``pca`` maps it to x U_k diag(1/sqrt(s_k + e)): the ``components`` directions of largest variance only, so rows
  get ``components`` features (fewer inputs: a cheaper first layer) and ``sample_shape`` becomes ``(components,)``.

``e`` is ``epsilon`` times the mean eigenvalue, so that the same ``epsilon`` means the same on any scale of pixel
values: it keeps the directions of tiny variance (mostly noise) from being blown up. The validation and test splits
are mapped with the training split's matrix; nothing about them enters the fit.

Fitting costs a D x D covariance and its eigendecomposition (20 to 30 s for CIFAR-10 on this 2-core machine). The
matrix is cached in ``$HPSEARCH_CACHE_DIR`` (default ``$XDG_CACHE_HOME/hpsearch``, else ``~/.cache/hpsearch``) under
the dataset's fingerprint, the training split's shape and the settings, so every trial, worker and later run of the same data loads it instead
(workers that start together wait for the first one's fit). Entries are never removed: delete the folder to reclaim
the space (a CIFAR-10 zca entry is 36 MB).
"""

from __future__ import annotations

import dataclasses
import hashlib

import numpy as np

from hpsearch.data.cache import load_entry, locked, save_atomically
from hpsearch.data.dataset import Dataset
from hpsearch.errors import DataError
from hpsearch.files import cache_dir

WHITENING = ("pca", "zca")
DEFAULT_EPSILON = 0.1
SAMPLED_ROWS = 64  # of the training split, hashed into the cache key beside the dataset's fingerprint
CACHE_VERSION = 2  # bump when the fit or the key changes: old entries then stop matching


def whiten(data: Dataset, method: str, *, components: int | None = None, epsilon: float = DEFAULT_EPSILON,
           source: str = "data") -> Dataset:
    """``data`` whitened by ``method``, one of :data:`WHITENING`: every split has the training split's mean
    subtracted, then is mapped with the matrix fitted on the centred training split."""
    if method not in WHITENING:
        raise DataError(f"{source}: whitening must be one of {', '.join(WHITENING)}. Got {method!r} instead.")
    features = data.input_size
    if components is not None and method == "zca":
        raise DataError(f"{source}: data.whitening.components is for preprocess pca; zca keeps every feature.")
    if components is not None and not 1 <= components <= features:
        raise DataError(f"{source}: data.whitening.components must be between 1 and the {features} features. Got "
                        f"{components} instead.")
    if not epsilon > 0:
        raise DataError(f"{source}: data.whitening.epsilon must be > 0. Got {epsilon} instead.")
    mean = data.X_train.mean(axis=0, dtype=np.float64).astype(data.X_train.dtype)  # ~0 when the loader centred it
    centred = data.X_train - mean
    projection = _projection(centred, data.fingerprint, method, components or features, epsilon)

    def mapped(rows: np.ndarray | None) -> np.ndarray | None:
        return None if rows is None else (rows - mean) @ projection

    return dataclasses.replace(
        data, X_train=centred @ projection, X_val=mapped(data.X_val), X_test=mapped(data.X_test),
        sample_shape=(projection.shape[1],) if method == "pca" else data.sample_shape)


def _projection(X_train: np.ndarray, source: str, method: str, components: int, epsilon: float) -> np.ndarray:
    """The (D, components) matrix, from the cache when an entry for exactly this split and these settings is there.

    source: the dataset's fingerprint, the hash the loader made of the rows the splits are cut from (in their order):
    with the training split's shape and dtype it names the split, so no load hashes the whole training split again.
    A sample of :data:`SAMPLED_ROWS` rows joins it, for rows that were scaled after the fingerprint was made."""
    digest = hashlib.blake2b(digest_size=16)
    digest.update(f"{CACHE_VERSION}:{method}:{components}:{epsilon!r}:{X_train.dtype}:{X_train.shape}:"
                  f"{source}".encode())
    digest.update(np.ascontiguousarray(X_train[:: max(1, len(X_train) // SAMPLED_ROWS)]).data)
    entry = cache_dir() / "whitening" / f"{method}-{digest.hexdigest()}.npy"
    expected = (X_train.shape[1], components)
    with locked(entry.with_suffix(".lock")):  # workers starting together: one fits, the others read its entry
        cached = load_entry(entry)  # None: absent or damaged; fit again and rewrite it
        if cached is not None and cached.shape == expected and cached.dtype == X_train.dtype \
                and np.isfinite(cached).all():
            return cached
        projection = fit(X_train, method, components, epsilon)
        try:
            save_atomically(entry, projection)
        except OSError:
            pass  # a read-only or full cache: this load and later ones fit again
        return projection


def fit(X_train: np.ndarray, method: str, components: int, epsilon: float) -> np.ndarray:
    """The whitening matrix of the centred rows ``X_train`` (N, D), as a (D, components) array of their dtype."""
    covariance = (X_train.T @ X_train).astype(np.float64) / len(X_train)
    values, vectors = np.linalg.eigh(covariance)
    values, vectors = np.clip(values[::-1], 0.0, None), vectors[:, ::-1]  # largest variance first
    # an eigenvector's sign is arbitrary: fix it (largest entry positive) so that every machine gets the same features
    signs = np.sign(vectors[np.argmax(np.abs(vectors), axis=0), np.arange(vectors.shape[1])])
    vectors = vectors * np.where(signs == 0, 1.0, signs)
    floor = epsilon * values.mean() if values.mean() > 0 else epsilon
    scaled = vectors[:, :components] / np.sqrt(values[:components] + floor)
    projection = scaled if method == "pca" else scaled @ vectors.T
    return projection.astype(X_train.dtype)
