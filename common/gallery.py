"""Gallery search on FAISS: the one way a query embedding finds its identities.

A `GalleryIndex` holds L2-normalised gallery embeddings with the identity and source of each and
returns, per query, the k most similar identities. An identity's score is the max cosine over
its images (``"max"``) or the cosine to its normalised mean embedding (``"mean"``), as the
evaluation protocol defines them; the harder variant drops the images that share the query's
source. Galleries up to `EXACT_LIMIT` images are searched exactly (``IndexFlatIP``). Larger ones
use an inverted file of 4-bit product-quantised codes scanned with SIMD lookup tables
(``IVF<n>,PQ<m>x4fs``) over `nprobe` cells per query, whose best candidates are re-scored exactly
from the stored vectors (``RFlat``): scanning float vectors would be bound by memory bandwidth,
and the re-scoring keeps every returned score an exact cosine.

Per-identity scores come from each query's top images, fetched again with more images only for
the queries whose top-k identities are not settled yet, and queries go in chunks: memory is
bounded by the chunk, never queries x gallery. Ties go to the identity whose name sorts first and,
within an identity, to the image added first: what ``np.argmax`` did over the dense matrices
this replaced. Scores within float32 rounding of each other may rank either way in `search`
(BLAS); `identity_scores` takes its product in float64, so exact copies tie there.
"""
from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np

__all__ = ["AGGREGATES", "INDEX_KINDS", "EXACT_LIMIT", "Matches", "GalleryIndex",
           "FingerprintMismatchError", "normalise"]

AGGREGATES = ("max", "mean")
INDEX_KINDS = ("auto", "exact", "ivf")
EXACT_LIMIT = 50_000  # images; "auto" switches to an inverted file above this
NPROBE = 32  # IVF cells scanned per query (benchmarks/results/gallery.md)
REFINE_FACTOR = 4  # IVF candidates re-scored exactly per image asked for
_CHUNK_CELLS = 2 ** 22  # query rows x fetched images per chunk: 16 MB of float32 scores
_TRAIN_PER_LIST = 40  # k-means training points per IVF cell (FAISS warns below 39)
_INDEX_FILE, _META_FILE, _ITEMS_FILE = "index.faiss", "gallery.json", "items.npz"
# FAISS's flat search takes BLAS for every batch size: its SIMD loop per pair is several times
# slower, k-means training included (benchmarks/results/gallery.md). BLAS rounds a score by
# where the pair falls in its blocks, so scores a few ulps apart are not told apart reliably:
# two copies of one image can differ in the last bit.
faiss.cvar.distance_compute_blas_threshold = 0


class FingerprintMismatchError(ValueError):
    """A saved gallery searched with embeddings of another checkpoint than it was built with."""


def normalise(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length in float32 (zero rows stay zero), `(N, D)` in and out."""
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


@dataclass
class Matches:
    """Top-k identities per query, best first; slots beyond the identities found hold code -1,
    score -inf and gallery row -1.

    Attributes:
        codes: `(Q, k)` identity codes, indices into `GalleryIndex.names`.
        scores: `(Q, k)` float32 identity scores.
        gallery_rows: `(Q, k)` the identity's best-matching image (row in insertion order); -1
            where an approximate search met none of its images (``"mean"`` only).
    """

    codes: np.ndarray
    scores: np.ndarray
    gallery_rows: np.ndarray


class GalleryIndex:
    """Identity search over a growing set of gallery embeddings (see the module docstring).

    Args:
        dim: embedding size D.
        aggregate: ``"max"`` or ``"mean"`` (see `AGGREGATES`).
        kind: ``"exact"``, ``"ivf"`` or ``"auto"`` (exact up to `EXACT_LIMIT` images, then the
            index is rebuilt as an inverted file once, from the stored vectors).
        nlist: IVF cells; None chooses about sqrt(N) for the N images present when it is built.
        nprobe: IVF cells scanned per query (recall against speed).
        metadata: JSON-able facts saved with the index (e.g. the checkpoint fingerprint).
    """

    def __init__(self, dim: int, aggregate: str = "max", kind: str = "auto",
                 nlist: int | None = None, nprobe: int = NPROBE,
                 metadata: dict | None = None) -> None:
        if aggregate not in AGGREGATES:
            raise ValueError(f"GalleryIndex: aggregate={aggregate!r}; use one of {AGGREGATES}")
        if kind not in INDEX_KINDS:
            raise ValueError(f"GalleryIndex: kind={kind!r}; use one of {INDEX_KINDS}")
        self.dim, self.aggregate, self.kind = int(dim), aggregate, kind
        self.nlist, self.nprobe = nlist, int(nprobe)
        self.metadata = dict(metadata or {})
        self.index: faiss.Index = faiss.IndexFlatIP(self.dim)
        self.names: list[str] = []
        self.sources: list[str] = []
        self._name_code: dict[str, int] = {}
        self._source_code: dict[str, int] = {}
        self._item_identity = np.zeros(0, np.int64)
        self._item_source = np.zeros(0, np.int64)  # -1: no source given
        self._name_rank = np.zeros(0, np.int64)
        self._sums = np.zeros((0, self.dim), np.float32)  # per identity, for "mean"
        self._counts = np.zeros(0, np.int64)
        self._centroids: faiss.IndexFlatIP | None = None

    @classmethod
    def build(cls, embeddings: np.ndarray, identities: Sequence, sources: Sequence | None = None,
              **kwargs) -> GalleryIndex:
        """A new index holding `embeddings` `(N, D)`; kwargs as for the constructor."""
        embeddings = np.asarray(embeddings)
        index = cls(embeddings.shape[1], **kwargs)
        index.add(embeddings, identities, sources)
        return index

    @property
    def is_ivf(self) -> bool:
        """Whether searches are approximate (an inverted file)."""
        return isinstance(self.index, faiss.IndexRefine)

    def __len__(self) -> int:
        return int(self.index.ntotal)

    def add(self, embeddings: np.ndarray, identities: Sequence,
            sources: Sequence | None = None) -> None:
        """Append images `(N, D)` (normalised here) of new or known identities; nothing already
        in the index is recomputed. `sources` names what each image shows (its clean photo),
        for `search(exclude_sources=...)`."""
        vectors = normalise(embeddings)
        names = np.asarray(identities).astype(str)
        if vectors.ndim != 2 or vectors.shape[1] != self.dim or len(names) != len(vectors):
            raise ValueError(f"GalleryIndex.add: embeddings {vectors.shape} and {len(names)} "
                             f"identities; expected (N, {self.dim}) and N identities")
        if sources is not None and len(sources) != len(vectors):
            raise ValueError(f"GalleryIndex.add: {len(sources)} sources for {len(vectors)} images")
        codes = _register(names.tolist(), self.names, self._name_code)
        source_codes = (np.full(len(names), -1, np.int64) if sources is None else
                        _register([str(s) for s in sources], self.sources, self._source_code))
        self._item_identity = np.concatenate([self._item_identity, codes])
        self._item_source = np.concatenate([self._item_source, source_codes])
        self._name_rank = np.argsort(np.argsort(np.array(self.names)))
        if self.aggregate == "mean":
            self._add_sums(vectors, codes)
        if self.kind == "ivf" and not self.is_ivf or (
                self.kind == "auto" and not self.is_ivf and len(self) + len(vectors) > EXACT_LIMIT):
            self._to_ivf(vectors)
        else:
            self.index.add(vectors)

    def _add_sums(self, vectors: np.ndarray, codes: np.ndarray) -> None:
        """Per-identity sums in gallery order (``np.add.reduceat``), as the mean protocol sums."""
        grown = len(self.names) - len(self._counts)
        self._sums = np.vstack([self._sums, np.zeros((grown, self.dim), np.float32)])
        self._counts = np.append(self._counts, np.zeros(grown, np.int64))
        order = np.argsort(codes, kind="stable")
        present, starts = np.unique(codes[order], return_index=True)
        self._sums[present] += np.add.reduceat(vectors[order], starts, axis=0)
        self._counts += np.bincount(codes, minlength=len(self._counts))
        self._centroids = None

    def _to_ivf(self, vectors: np.ndarray) -> None:
        """Replace the exact index by an inverted file trained on a sample of all vectors."""
        everything = np.vstack([self._vectors(), vectors])
        nlist = self.nlist or max(1, int(np.sqrt(len(everything))))
        codes = next(m for m in range(max(1, self.dim // 8), self.dim + 1) if self.dim % m == 0)
        index = faiss.index_factory(self.dim, f"IVF{nlist},PQ{codes}x4fs,RFlat",
                                    faiss.METRIC_INNER_PRODUCT)
        faiss.extract_index_ivf(index).cp.min_points_per_centroid = 1  # small galleries too
        rng = np.random.default_rng(0)
        index.train(everything[np.sort(rng.choice(
            len(everything), min(len(everything), _TRAIN_PER_LIST * nlist), replace=False))])
        index.add(everything)
        self.index, self.nlist = index, nlist

    def _prepared(self, queries: np.ndarray, exclude_sources: Sequence | None
                  ) -> tuple[np.ndarray, np.ndarray | None]:
        """Normalised queries and their source codes (-2: not in the gallery), checked."""
        if not len(self):
            raise ValueError("GalleryIndex.search: the gallery is empty; add images first")
        queries = normalise(queries)
        if queries.ndim != 2 or queries.shape[1] != self.dim:
            raise ValueError(f"GalleryIndex.search: queries {queries.shape}; expected (Q, "
                             f"{self.dim}) like the gallery")
        if self.is_ivf:
            faiss.extract_index_ivf(self.index).nprobe = self.nprobe
            self.index.k_factor = REFINE_FACTOR
        if exclude_sources is None:
            return queries, None
        return queries, np.array([self._source_code.get(str(s), -2) for s in exclude_sources])

    def search(self, queries: np.ndarray, k: int = 5,
               exclude_sources: Sequence | None = None) -> Matches:
        """The `k` best identities of each query `(Q, D)` (normalised here).

        Args:
            k: identities per query; `len(names)` ranks every identity.
            exclude_sources: per query, a source whose images are left out for that query (the
                harder variant: the query's own photo removed); unknown sources exclude nothing.
        """
        queries, q_src = self._prepared(queries, exclude_sources)
        out = Matches(np.full((len(queries), k), -1, np.int64),
                      np.full((len(queries), k), -np.inf, np.float32),
                      np.full((len(queries), k), -1, np.int64))
        chunk = max(1, _CHUNK_CELLS // self._first_fetch(k, q_src is not None))
        for lo in range(0, len(queries), chunk):
            part = slice(lo, lo + chunk)
            found = self._search_chunk(queries[part], k, None if q_src is None else q_src[part])
            out.codes[part], out.scores[part], out.gallery_rows[part] = found
        return out

    def identity_scores(self, queries: np.ndarray, exclude_sources: Sequence | None = None
                        ) -> tuple[np.ndarray, np.ndarray]:
        """Every identity's score and best image for each query, exactly: what an evaluation
        that ranks all identities needs. Ranking everything is exhaustive by nature, so this
        reads the stored vectors and takes one BLAS product per chunk instead of sorting a
        search result. Columns are identity codes; an identity with no image left after
        exclusion scores -inf. The product is taken in float64 and rounded to float32, so that
        two copies of one image score alike wherever BLAS places them.

        Returns:
            `(Q, I)` float32 scores and `(Q, I)` best gallery rows.
        """
        queries, q_src = self._prepared(queries, exclude_sources)
        order = np.argsort(self._item_identity, kind="stable")  # each identity's images together
        starts = np.searchsorted(self._item_identity[order], np.arange(len(self.names)))
        vectors = self._vectors()[order].astype(np.float64)
        sources = self._item_source[order]
        centroids = (normalise(self._sums).astype(np.float64) if self.aggregate == "mean"
                     else None)
        scores = np.empty((len(queries), len(self.names)), np.float32)
        rows = np.empty((len(queries), len(self.names)), np.int64)
        chunk = max(1, _CHUNK_CELLS // len(self))
        for lo in range(0, len(queries), chunk):
            q = queries[lo:lo + chunk]
            q64 = q.astype(np.float64)
            sim = (q64 @ vectors.T).astype(np.float32)
            if q_src is not None:
                sim[sources[None, :] == q_src[lo:lo + chunk, None]] = -np.inf
            best = np.maximum.reduceat(sim, starts, axis=1)
            first = np.where(sim == np.repeat(best, np.diff(np.append(starts, len(self))), 1),
                             order, len(self))
            rows[lo:lo + chunk] = np.minimum.reduceat(first, starts, axis=1)
            if centroids is not None:
                best = (q64 @ centroids.T).astype(np.float32)
                if q_src is not None:
                    row, code, score = self._excluded_means(q, q_src[lo:lo + chunk])
                    best[row, code] = score
            scores[lo:lo + chunk] = best
        return scores, rows

    def _vectors(self) -> np.ndarray:
        """The stored unit vectors `(N, D)`, a view of the exact index (an IVF's re-scoring
        part)."""
        flat = faiss.downcast_index(self.index.refine_index) if self.is_ivf else self.index
        return faiss.rev_swig_ptr(flat.get_xb(), len(self) * self.dim).reshape(len(self),
                                                                                  self.dim)

    def _first_fetch(self, k: int, excluding: bool) -> int:
        """Images fetched per query on the first pass: all of them when every identity is
        ranked, else a few per identity asked for (plus the most one source can remove)."""
        if k >= len(self.names):
            return len(self)
        extra = int(np.bincount(self._item_source[self._item_source >= 0]).max(initial=0))
        return min(len(self), max(32, 8 * k) + (extra if excluding else 0))

    def _search_chunk(self, queries: np.ndarray, k: int, q_src: np.ndarray | None):
        images_first = self._first_fetch(k, q_src is not None)
        if self.aggregate == "max":
            return _top_k(*self._settled(self._image_candidates, queries, q_src, k,
                                         images_first), len(queries), k)
        codes, scores, _ = _top_k(*self._settled(self._centroid_candidates, queries, q_src, k,
                                                 min(len(self.names), k)), len(queries), k)
        images = self._settled(self._image_candidates, queries, q_src, k, images_first,
                               required=codes)
        return codes, scores, _lookup(images, codes, len(self.names))

    def _settled(self, candidates, queries: np.ndarray, q_src: np.ndarray | None, k: int,
                 fetch: int, required: np.ndarray | None = None) -> tuple[np.ndarray, ...]:
        """Fetch `candidates` for all queries, then again with 4x more for those not settled.

        A query is settled when its k best identities (or the `required` ones) score above the
        last score fetched, so no identity left out can beat or tie them, or when nothing is
        left to fetch.

        Returns:
            (query, code, score, gallery row) of every candidate identity, sorted by query, then
            score (descending), then identity name.
        """
        n_names, pending, parts = len(self.names), np.arange(len(queries)), []
        while len(pending):
            row, code, score, image, last, exhausted = candidates(
                queries[pending], None if q_src is None else q_src[pending], fetch)
            above = score > last[row]
            if required is None:
                count = np.bincount(row[above], minlength=len(pending))
                settled = exhausted | (count >= min(k, n_names))
            else:
                need = required[pending]
                hit = np.isin(np.arange(len(pending))[:, None] * n_names + need,
                              row[above] * n_names + code[above])
                settled = exhausted | (hit | (need < 0)).all(axis=1)
            keep = settled[row]
            parts.append((pending[row[keep]], code[keep], score[keep], image[keep]))
            pending = pending[~settled]
            fetch *= 4
        row, code, score, image = (np.concatenate(column) for column in zip(*parts))
        order = np.lexsort((self._name_rank[code], -score, row))
        return row[order], code[order], score[order], image[order]

    def _image_candidates(self, queries: np.ndarray, q_src: np.ndarray | None, fetch: int):
        """Each query's best image per identity among its `fetch` nearest images, the last
        score fetched and whether nothing is left to fetch."""
        fetch = min(fetch, len(self))
        scores, images = self.index.search(queries, fetch)
        returned = images >= 0  # an inverted file returns -1 past the cells it scanned
        last = np.where(returned[:, -1], scores[:, -1], -np.inf)
        exhausted = ~returned[:, -1] | (fetch >= len(self))
        safe = np.where(returned, images, 0)
        valid = returned if q_src is None else returned & (self._item_source[safe]
                                                            != q_src[:, None])
        rows = np.repeat(np.arange(len(queries)), fetch)
        codes = np.where(valid, self._item_identity[safe], -1).ravel()
        scores, images = scores.ravel(), images.ravel()
        order = np.lexsort((images, -scores, codes, rows))
        rows, codes, scores, images = rows[order], codes[order], scores[order], images[order]
        first = np.ones(len(rows), bool)
        first[1:] = (rows[1:] != rows[:-1]) | (codes[1:] != codes[:-1])
        keep = first & (codes >= 0)
        return rows[keep], codes[keep], scores[keep], images[keep], last, exhausted

    def _centroid_candidates(self, queries: np.ndarray, q_src: np.ndarray | None, fetch: int):
        """The `fetch` identities nearest to each query by normalised mean embedding; with
        exclusion, the means of the identities that hold the query's source are recomputed
        without those images (-inf when none is left, and dropped)."""
        if self._centroids is None:
            self._centroids = faiss.IndexFlatIP(self.dim)
            self._centroids.add(normalise(self._sums))
        fetch = min(fetch, len(self.names))
        scores, codes = self._centroids.search(queries, fetch)
        exhausted = np.full(len(queries), fetch >= len(self.names))
        last = np.where(exhausted, -np.inf, scores[:, -1])
        rows = np.repeat(np.arange(len(queries)), fetch)
        codes, scores = codes.ravel(), scores.ravel()
        if q_src is not None:
            fixed = self._excluded_means(queries, q_src)
            drop = np.isin(rows * len(self.names) + codes,
                           fixed[0] * len(self.names) + fixed[1])
            rows, codes, scores = (np.concatenate([a[~drop], b]) for a, b in
                                   zip((rows, codes, scores), fixed))
        keep = np.isfinite(scores)
        return (rows[keep], codes[keep], scores[keep], np.full(keep.sum(), -1), last,
                exhausted)

    def _excluded_means(self, queries: np.ndarray, q_src: np.ndarray):
        """(query, code, score) for every identity holding a query's source, its mean taken
        without those images, summed in gallery order as `_add_sums` does."""
        out: tuple[list, list, list] = ([], [], [])
        by_source = np.argsort(self._item_source, kind="stable")
        bounds = np.searchsorted(self._item_source[by_source], np.stack([q_src, q_src + 1]))
        vectors = self._vectors()
        for r in np.flatnonzero(q_src >= 0):
            items = by_source[bounds[0, r]:bounds[1, r]]
            for code in np.unique(self._item_identity[items]):
                dropped = items[self._item_identity[items] == code]
                kept = self._sums[code] - vectors[dropped].sum(axis=0)
                out[0].append(r)
                out[1].append(code)
                out[2].append(-np.inf if len(dropped) == self._counts[code]
                              else queries[r] @ normalise(kept[None])[0])
        return (np.array(out[0], np.int64), np.array(out[1], np.int64),
                np.array(out[2], np.float32))

    def save(self, folder: str | os.PathLike) -> Path:
        """Write the index, its identity map and metadata into `folder` (created)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        faiss.write_index(self.index, str(folder / _INDEX_FILE))
        np.savez(folder / _ITEMS_FILE, identity=self._item_identity, source=self._item_source,
                 sums=self._sums, counts=self._counts)
        meta = {"dim": self.dim, "aggregate": self.aggregate, "kind": self.kind,
                "nlist": self.nlist, "nprobe": self.nprobe, "metadata": self.metadata,
                "names": self.names, "sources": self.sources}
        (folder / _META_FILE).write_text(json.dumps(meta))
        return folder

    @classmethod
    def load(cls, folder: str | os.PathLike, fingerprint: dict | None = None) -> GalleryIndex:
        """Read a folder written by `save`.

        Args:
            fingerprint: when given, must equal the saved ``metadata["fingerprint"]``: the
                checkpoint whose embeddings will be searched must be the one that built it.

        Raises:
            FileNotFoundError: `folder` holds no saved gallery.
            FingerprintMismatchError: the fingerprints differ (both named in the message).
        """
        folder = Path(folder)
        missing = [name for name in (_INDEX_FILE, _META_FILE, _ITEMS_FILE)
                   if not (folder / name).is_file()]
        if missing:
            raise FileNotFoundError(f"{folder} is not a saved gallery (missing {missing}); "
                                    "build one with `python -m common.predict enrol`.")
        meta = json.loads((folder / _META_FILE).read_text())
        saved = meta["metadata"].get("fingerprint")
        if fingerprint is not None and saved != fingerprint:
            raise FingerprintMismatchError(
                f"{folder} was built with checkpoint {saved}, not {fingerprint}: embeddings of "
                "two checkpoints are not comparable. Use the gallery's checkpoint, or enrol the "
                "gallery again into a new folder with this one.")
        index = cls(meta["dim"], meta["aggregate"], meta["kind"], meta["nlist"], meta["nprobe"],
                    meta["metadata"])
        index.index = faiss.read_index(str(folder / _INDEX_FILE))
        index.names, index.sources = meta["names"], meta["sources"]
        index._name_code = {name: i for i, name in enumerate(index.names)}
        index._source_code = {source: i for i, source in enumerate(index.sources)}
        with np.load(folder / _ITEMS_FILE) as items:
            index._item_identity, index._item_source = items["identity"], items["source"]
            index._sums, index._counts = items["sums"], items["counts"]
        index._name_rank = np.argsort(np.argsort(np.array(index.names)))
        return index


def _register(values: list[str], known: list[str], code_of: dict[str, int]) -> np.ndarray:
    """Codes of `values`, appending the new ones to `known` (codes are positions in it)."""
    for value in values:
        if value not in code_of:
            code_of[value] = len(known)
            known.append(value)
    return np.array([code_of[value] for value in values], np.int64)


def _top_k(row: np.ndarray, code: np.ndarray, score: np.ndarray, image: np.ndarray,
           n_rows: int, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Scatter the first k candidates of each row (sorted by row, best first) into (Q, k)."""
    position = np.arange(len(row)) - np.searchsorted(row, row)
    keep = position < k
    codes = np.full((n_rows, k), -1, np.int64)
    scores = np.full((n_rows, k), -np.inf, np.float32)
    images = np.full((n_rows, k), -1, np.int64)
    at = (row[keep], position[keep])
    codes[at], scores[at], images[at] = code[keep], score[keep], image[keep]
    return codes, scores, images


def _lookup(candidates: tuple[np.ndarray, ...], codes: np.ndarray, n_names: int) -> np.ndarray:
    """The gallery row of each (query, identity code) in `codes` (Q, k) among the image
    candidates, -1 where the identity has none."""
    row, code, _, image = candidates
    keys = row * n_names + code
    order = np.argsort(keys)
    want = np.arange(len(codes))[:, None] * n_names + codes
    at = np.clip(np.searchsorted(keys[order], want), 0, max(0, len(keys) - 1))
    found = (codes >= 0) & (len(keys) > 0) & (keys[order][at] == want)
    return np.where(found, image[order][at], -1)
