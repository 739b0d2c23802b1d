"""common/gallery.py: FAISS search against a brute-force numpy reference (dense query x gallery
matrix, one column per identity, ties to the first identity name and the first image), on
FACECOM-sized synthetic galleries with exact duplicates and on the real FACECOM train split."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from common import data, gallery, metrics
from conftest import REAL_DATA, requires_real_data

pytestmark = pytest.mark.long  # conftest hands long files out first


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


# Two float32 implementations of one cosine (FAISS's SIMD loop, BLAS, this float64 reference)
# differ by a few ulps, so identities whose scores are this close may rank either way; exact
# copies of one image score alike and follow the tie rules (tested by name below).
NEAR = 1e-6


def _reference(g_emb, g_ids, q_emb, q_src=None, g_src=None, aggregate="max"):
    """Dense identity scores (Q, I), each identity's best image (Q, I), names sorted, and the
    image similarities (Q, G), computed in float64."""
    names = np.unique(g_ids)
    g, q = _unit(g_emb).astype(np.float64), _unit(q_emb).astype(np.float64)
    sim = q @ g.T
    if q_src is not None:
        sim[np.asarray(q_src)[:, None] == np.asarray(g_src)[None, :]] = -np.inf
    members = [np.flatnonzero(np.asarray(g_ids) == name) for name in names]
    best = np.stack([m[sim[:, m].argmax(axis=1)] for m in members], axis=1)
    if aggregate == "max":
        return names, np.stack([sim[:, m].max(axis=1) for m in members], axis=1), best, sim
    sums = np.stack([g[m].sum(axis=0) for m in members])
    scores = q @ _unit(sums).astype(np.float64).T
    for column, m in enumerate(members):  # the mean without the excluded images, computed as
        for r in np.flatnonzero(np.isneginf(sim[:, m]).any(axis=1)):  # the code it replaced did
            dropped = m[np.isneginf(sim[r, m])]
            kept = sums[column] - g[dropped].sum(axis=0)
            scores[r, column] = (q[r] @ _unit(kept[None])[0] if len(dropped) < len(m)
                                 else -np.inf)
    return names, scores, best, sim


def _assert_best(got: np.ndarray, scores: np.ndarray, what: str) -> None:
    """Each row's `got` column scores within `NEAR` of the row's best, and is the best itself
    wherever no other column comes that close."""
    rows = np.arange(len(scores))
    best = scores.max(axis=1)
    assert (scores[rows, got] >= best - NEAR).all(), what
    clear = (scores >= best[:, None] - NEAR).sum(axis=1) == 1
    assert (got[clear] == scores[clear].argmax(axis=1)).all(), what


def _facecom_like(seed: int = 0, n_identities: int = 300, dim: int = 128):
    """Identities with 1-3 clean photos and 7 noisy copies of each, plus exact duplicates: the
    first identity holds one photo twice, the last identity is one photo of the second filed
    again, and two copies equal their photo (so ties between images and between identities
    really occur). No duplicate makes two means equal, which only float rounding would split."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_identities, dim))
    per = rng.integers(1, 4, n_identities)
    per[[0, 1, -1]] = 2, 2, 1
    g_ids = np.repeat([f"id{i:03d}" for i in rng.permutation(n_identities)], per)
    photos = np.repeat(centres, per, axis=0) + 0.8 * rng.normal(size=(per.sum(), dim))
    photos[1] = photos[0]
    photos[-1] = photos[2]
    g_src = np.array([f"photo{i}" for i in range(len(photos))])
    q_from = np.repeat(np.arange(len(photos)), 7)
    queries = photos[q_from] + 0.6 * rng.normal(size=(len(q_from), dim))
    queries[[0, 14]] = photos[[0, 2]]
    return photos, g_ids, g_src, queries, g_ids[q_from], g_src[q_from]


def _assert_table_is_reference(table, g_emb, g_ids, q_emb, q_ids, q_src, g_src, aggregate,
                               exclude):
    names, scores, best, sim = _reference(g_emb, g_ids, q_emb, q_src if exclude else None,
                                          g_src, aggregate)
    true = np.searchsorted(names, q_ids)
    true_score = scores[np.arange(len(q_ids)), true]
    scored = np.flatnonzero(np.isfinite(true_score))
    assert table["query_index"].tolist() == scored.tolist()
    s, t, ts = scores[scored], true[scored], true_score[scored]
    predicted = np.searchsorted(names, table["predicted_identity"].to_numpy())
    _assert_best(predicted, s, "predicted identity")
    # the rank: one plus the identities above the true one, those within rounding either way
    rank = table["rank"].to_numpy()
    assert (rank >= 1 + (s > ts[:, None] + NEAR).sum(1)).all()
    assert (rank <= (s >= ts[:, None] - NEAR).sum(1)).all()
    assert table["true_score"].to_numpy() == pytest.approx(ts, abs=1e-6)
    # each identity's image: its best one (within rounding), and an image of that identity
    g_ids = np.asarray(g_ids)
    for column, identity in (("predicted_gallery_index", predicted), ("true_gallery_index", t)):
        image = table[column].to_numpy()
        assert (g_ids[image] == names[identity]).all(), column
        mine = np.where(g_ids[None, :] == names[identity][:, None], sim[scored], -np.inf)
        _assert_best(image, mine, column)
    other = s.copy()
    other[np.arange(len(t)), t] = -np.inf
    _assert_best(np.searchsorted(names, table["best_other_identity"].to_numpy()), other,
                 "best other identity")
    random_other = s[np.arange(len(t)), np.searchsorted(names, table["random_other_identity"])]
    assert table["random_other_score"].to_numpy() == pytest.approx(random_other, abs=1e-6)


@pytest.mark.parametrize("aggregate", gallery.AGGREGATES)
@pytest.mark.parametrize("exclude", [False, True])
def test_retrieval_table_equals_brute_force(aggregate, exclude):
    g_emb, g_ids, g_src, q_emb, q_ids, q_src = _facecom_like()
    table = metrics.compute_retrieval_table(g_emb, g_ids, q_emb, q_ids, query_sources=q_src,
                                            gallery_sources=g_src, aggregate=aggregate,
                                            exclude_own_source=exclude)
    _assert_table_is_reference(table, g_emb, g_ids, q_emb, q_ids, q_src, g_src, aggregate,
                               exclude)
    if aggregate == "max" and not exclude:  # a photo under two identities: the name first
        assert table.loc[14, "predicted_identity"] == min(g_ids[2], g_ids[-1])
        assert table.loc[0, "predicted_gallery_index"] == 0  # a photo twice: the first


def _thumbnail(path: str) -> np.ndarray:
    with Image.open(path) as image:
        image.draft("L", (32, 32))  # JPEG decodes at reduced scale: ~1 ms per file
        pixels = np.asarray(image.convert("L").resize((16, 16), Image.BILINEAR), np.float32)
    return pixels.ravel() - pixels.mean()


@pytest.fixture(scope="module")
def facecom_thumbnails():
    """The real train split and 16 x 16 grey thumbnails of its images: cheap real embeddings
    whose distorted copies resemble their photos, duplicates included."""
    frame = data.read_task_b(REAL_DATA)
    return frame, np.stack([_thumbnail(path) for path in frame["path"]])


@requires_real_data
@pytest.mark.parametrize("aggregate", gallery.AGGREGATES)
@pytest.mark.parametrize("exclude", [False, True])
def test_facecom_top1_unchanged_to_the_last_query(facecom_thumbnails, aggregate, exclude):
    """The official protocol on the real train split (clean photos = gallery, 13k distorted
    copies = queries): the evaluation table and the FAISS top-1 search both equal brute force."""
    frame, embeddings = facecom_thumbnails
    clean = (frame["distortion"] == "clean").to_numpy()
    g, q = frame[clean], frame[~clean]
    args = (embeddings[clean], g["identity"].to_numpy(), embeddings[~clean],
            q["identity"].to_numpy())
    sources = dict(query_sources=q["source"].to_numpy(), gallery_sources=g["path"].to_numpy())
    table = metrics.compute_retrieval_table(*args, **sources, aggregate=aggregate,
                                            exclude_own_source=exclude)
    _assert_table_is_reference(table, *args, q["source"].to_numpy(), g["path"].to_numpy(),
                               aggregate, exclude)
    names, scores, _, _ = _reference(args[0], args[1], args[2], q["source"].to_numpy()
                                     if exclude else None, g["path"].to_numpy(), aggregate)
    index = gallery.GalleryIndex.build(args[0], args[1], g["path"].to_numpy(),
                                       aggregate=aggregate)
    top1 = index.search(args[2], 1, q["source"].to_numpy() if exclude else None).codes[:, 0]
    answered = np.isfinite(scores.max(axis=1))
    _assert_best(np.searchsorted(names, np.asarray(index.names)[top1[answered]]),
                 scores[answered], "top-1 search")


@pytest.mark.parametrize("aggregate", gallery.AGGREGATES)
def test_top_k_search_matches_brute_force_and_chunks(aggregate, monkeypatch):
    g_emb, g_ids, g_src, q_emb, _, q_src = _facecom_like(seed=1)
    names, scores, _, sim = _reference(g_emb, g_ids, q_emb, aggregate=aggregate)
    monkeypatch.setattr(gallery, "_CHUNK_CELLS", 5000)  # many chunks, refetches
    index = gallery.GalleryIndex.build(g_emb, g_ids, g_src, aggregate=aggregate)
    found = index.search(q_emb, k=5)
    # slot j holds five different identities, the j-th best each (within rounding)
    codes = np.searchsorted(names, np.asarray(index.names)[found.codes])
    assert (np.sort(codes, axis=1)[:, 1:] != np.sort(codes, axis=1)[:, :-1]).all()
    ranked = -np.sort(-scores, axis=1)[:, :5]
    assert np.take_along_axis(scores, codes, 1) == pytest.approx(ranked, abs=NEAR)
    assert found.scores == pytest.approx(ranked, abs=NEAR)
    g_ids = np.asarray(g_ids)
    for slot in range(5):  # each identity's best image
        image = found.gallery_rows[:, slot]
        assert (g_ids[image] == names[codes[:, slot]]).all()
        mine = np.where(g_ids[None, :] == names[codes[:, slot]][:, None], sim, -np.inf)
        _assert_best(image, mine, f"gallery row of slot {slot}")
    hard = index.search(q_emb, k=3, exclude_sources=q_src)
    names_h, scores_h, _, _ = _reference(g_emb, g_ids, q_emb, q_src, g_src, aggregate)
    _assert_best(np.searchsorted(names_h, np.asarray(index.names)[hard.codes[:, 0]]), scores_h,
                 "top-1 without the own photo")


def test_more_identities_asked_than_exist():
    index = gallery.GalleryIndex.build(_unit(np.eye(3)), ["a", "b", "b"])
    found = index.search(_unit([[1, 0.5, 0]]), k=4)
    assert [index.names[c] for c in found.codes[0, :2]] == ["a", "b"]
    assert found.codes[0, 2:].tolist() == [-1, -1] and np.isneginf(found.scores[0, 2:]).all()
    assert found.gallery_rows[0, :2].tolist() == [0, 1]


def _clustered(n_images: int, n_identities: int, n_queries: int, dim: int = 64, seed: int = 0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_identities, dim))
    ids = rng.integers(0, n_identities, n_images)
    images = _unit(centres[ids] + rng.normal(size=(n_images, dim)))
    source = rng.integers(0, n_images, n_queries)  # a query: a gallery image at cosine ~0.9
    queries = _unit(images[source] + 0.5 * rng.normal(size=(n_queries, dim)) / np.sqrt(dim))
    return images, ids.astype(str), queries


def test_large_gallery_switches_to_ivf_with_high_recall(monkeypatch):
    images, ids, queries = _clustered(20_000, 2_000, 500)
    monkeypatch.setattr(gallery, "EXACT_LIMIT", 10_000)
    index = gallery.GalleryIndex.build(images[:8_000], ids[:8_000])
    assert not index.is_ivf
    index.add(images[8_000:], ids[8_000:])  # past the limit: rebuilt as an inverted file
    assert index.is_ivf and len(index) == 20_000
    exact = gallery.GalleryIndex.build(images, ids, kind="exact").search(queries, 1)
    approximate = index.search(queries, 1)
    assert (approximate.codes[:, 0] == exact.codes[:, 0]).mean() >= 0.99


@pytest.mark.parametrize("kind", ["exact", "ivf"])
def test_save_load_append_round_trip(tmp_path, kind):
    images, ids, queries = _clustered(3_000, 300, 200)
    first = gallery.GalleryIndex.build(images[:2_000], ids[:2_000], sources=ids[:2_000],
                                       aggregate="mean", kind=kind, nlist=16,
                                       metadata={"fingerprint": {"checkpoint": "a"}})
    first.save(tmp_path / "g")
    loaded = gallery.GalleryIndex.load(tmp_path / "g", fingerprint={"checkpoint": "a"})
    loaded.add(images[2_000:], ids[2_000:], sources=ids[2_000:])
    whole = gallery.GalleryIndex.build(images, ids, sources=ids, aggregate="mean", kind=kind,
                                       nlist=16)
    np.testing.assert_allclose(loaded.identity_scores(queries)[0],  # read from stored vectors
                               whole.identity_scores(queries)[0], atol=1e-6)
    if kind == "exact":  # the appended index is the index built at once
        a, b = loaded.search(queries, 3), whole.search(queries, 3)
        assert (np.asarray(loaded.names)[a.codes] == np.asarray(whole.names)[b.codes]).all()
        assert a.scores == pytest.approx(b.scores, abs=1e-6)
    top = loaded.search(queries, 1).codes[:, 0]
    # sources are the identity names here: excluding one removes the whole identity
    hard = loaded.search(queries, 3, exclude_sources=np.asarray(loaded.names)[top])
    assert len(loaded) == 3_000 and (hard.codes[:, 0] >= 0).all()
    assert (hard.codes[:, 0] != top).all()
    with pytest.raises(gallery.FingerprintMismatchError, match="checkpoint.*'a'.*'b'"):
        gallery.GalleryIndex.load(tmp_path / "g", fingerprint={"checkpoint": "b"})
    with pytest.raises(FileNotFoundError, match="enrol"):
        gallery.GalleryIndex.load(tmp_path / "nothing")


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="aggregate='median'"):
        gallery.GalleryIndex(4, aggregate="median")
    index = gallery.GalleryIndex.build(np.eye(4), list("abcd"))
    with pytest.raises(ValueError, match=r"\(Q, 4\)"):
        index.search(np.ones((2, 3)))
    with pytest.raises(ValueError, match="empty"):
        gallery.GalleryIndex(4).search(np.ones((1, 4)))
