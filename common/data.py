"""FACECOM tables: readers for Task A and Task B, the gender join and the validation report
that decides which files are usable (splits are `common.splits`).

The raw folders are never modified: every function here builds a pandas view of them, with
absolute ``str`` paths. Expected layout (the hackathon release)::

    <root>/Task_A/<split>/{male,female}/*.jpg
    <root>/Task_B/<split>/<identity>/*.jpg                      clean images
    <root>/Task_B/<split>/<identity>/distortion/<stem>_<distortion>.jpg

Image decoding and the array cache live in `common.cache`; their public names are re-exported
here so notebooks only import `common.data`.
"""
from __future__ import annotations

import hashlib
import os
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from tqdm.auto import tqdm

from common import near_duplicates, views
from common.cache import ImageArrayDataset, compute_fingerprint, load_image, load_image_array
from common.config import cpu_count
from common.distortions import DISTORTIONS
from common.image_decode import ImageReadError, decode_image
from common.listing import IMAGE_EXTENSIONS, is_hidden, is_image_name, is_valid_name, printable
from common.listing import walk_files

__all__ = [
    "GENDERS", "SPLITS", "DISTORTIONS", "IMAGE_EXTENSIONS", "OFFICIAL_COUNTS",
    "DatasetLayoutError", "ImageReadError", "ValidationReport", "available_splits",
    "read_task_a", "read_task_b", "join_gender", "validate_dataset",
    "load_image", "load_image_array", "compute_fingerprint", "ImageArrayDataset",
]

GENDERS = ("male", "female")  # label 0 = male, 1 = female
SPLITS = ("train", "val")
DISTORTION_DIR = "distortion"
# Official FACECOM release (COMSYS-5 hackathon) file counts, to catch incomplete copies.
OFFICIAL_COUNTS = {
    ("Task_A", "train"): {"male": 1532, "female": 394},
    ("Task_A", "val"): {"male": 317, "female": 105},
    ("Task_B", "train"): {"identities": 877, "clean": 1926, "distorted": 13482},
    ("Task_B", "val"): {"identities": 250, "clean": 422, "distorted": 2954},
}
# An earlier release had 303 male / 79 female Task A val labels.
_OLD_TASK_A_VAL = {"male": 303, "female": 79}
_LAYOUT = ("<root>/Task_A/<split>/{male,female}/*.jpg and "
           "<root>/Task_B/<split>/<identity>/[distortion/]*.jpg")
_FIX = "pass --data-dir (data_dir=) pointing at the folder that contains Task_A and Task_B"


class DatasetLayoutError(ValueError):
    """The data root or a split folder does not have the FACECOM layout; says what and the fix."""


def _layout_error(path: Path, problem: str) -> DatasetLayoutError:
    return DatasetLayoutError(f"{path}: {problem}. Expected the FACECOM layout {_LAYOUT}; {_FIX}.")


def _check_root(root: str | os.PathLike) -> Path:
    path = Path(root).expanduser().resolve()
    if not path.is_dir():
        raise _layout_error(path, "data root does not exist")
    if not (path / "Task_A").is_dir() and not (path / "Task_B").is_dir():
        raise _layout_error(path, "no Task_A/ or Task_B/ folder inside")
    return path


def _files(folder: Path) -> list[os.DirEntry]:
    """Image files directly in ``folder`` (through links; hidden ones are never read)."""
    return sorted((e for e in os.scandir(folder) if e.is_file() and is_image_name(e.name)),
                  key=lambda e: e.name)


def _dirs(folder: Path) -> list[os.DirEntry]:
    return sorted((e for e in os.scandir(folder) if e.is_dir() and not is_hidden(e.name)),
                  key=lambda e: e.name)


def available_splits(root: str | os.PathLike, task: str) -> list[str]:
    """Split folders present under ``<root>/<task>`` (``[]`` when the task is absent)."""
    folder = _check_root(root) / task
    return [e.name for e in _dirs(folder)] if folder.is_dir() else []


def _split_dir(root: str | os.PathLike, task: str, split: str) -> Path:
    folder = _check_root(root) / task / split
    if not folder.is_dir():
        present = available_splits(root, task)
        raise _layout_error(folder, f"split folder missing (present: {present or 'none'})")
    return folder


def _clean_identity_map(root: Path, split: str) -> dict[str, str]:
    """Clean file name -> Task B identity, for naming Task A images (they are the same files)."""
    folder = root / "Task_B" / split
    if not folder.is_dir():
        return {}
    return {f.name: d.name for d in _dirs(folder) for f in _files(Path(d.path))}


def read_task_a(root: str | os.PathLike, split: str = "train") -> pd.DataFrame:
    """Task A table: one row per image with ``path, split, gender, label, identity``.

    ``identity`` comes from the Task B clean image with the same file name (the release ships
    byte-identical copies), else the file stem, so identity-disjoint splits also work for
    gender classification.

    Raises:
        DatasetLayoutError: root, split or both gender folders missing.
    """
    folder = _split_dir(root, "Task_A", split)
    if not any((folder / g).is_dir() for g in GENDERS):
        raise _layout_error(folder, "neither male/ nor female/ folder inside")
    identities = _clean_identity_map(_check_root(root), split)
    rows = []
    for label, gender in enumerate(GENDERS):
        if not (folder / gender).is_dir():
            continue
        for entry in _files(folder / gender):
            identity = identities.get(entry.name, os.path.splitext(entry.name)[0])
            rows.append((str(Path(entry.path)), split, gender, label, identity))
    return pd.DataFrame(rows, columns=["path", "split", "gender", "label", "identity"])


def _parse_distorted(name: str, clean_by_stem: dict[str, str]) -> tuple[str, str]:
    """``<stem>_<distortion>.jpg`` -> (distortion or "unknown", clean source path or "")."""
    prefix, _, suffix = os.path.splitext(name)[0].rpartition("_")
    if suffix not in DISTORTIONS:
        return "unknown", ""
    return suffix, clean_by_stem.get(prefix, "")


def read_task_b(root: str | os.PathLike, split: str = "train") -> pd.DataFrame:
    """Task B table: ``path, split, identity, distortion, source``, clean rows first per identity.

    Clean images have ``distortion == "clean"`` and ``source == path``; a distorted image's
    ``source`` is the clean image whose stem prefixes its name, or ``""`` when there is none
    (`validate_dataset` reports those). A suffix outside `DISTORTIONS` gives "unknown".

    Raises:
        DatasetLayoutError: root or split missing, or the split holds no identity folders.
    """
    folder = _split_dir(root, "Task_B", split)
    identity_dirs = _dirs(folder)
    if not identity_dirs:
        raise _layout_error(folder, "no <identity>/ folders inside")
    rows = []
    for identity_dir in identity_dirs:
        identity_path = Path(identity_dir.path)
        clean = [Path(e.path) for e in _files(identity_path)]
        clean_by_stem = {p.stem: str(p) for p in clean}
        rows += [(str(p), split, identity_dir.name, "clean", str(p)) for p in clean]
        distorted_dir = identity_path / DISTORTION_DIR
        if distorted_dir.is_dir():
            for entry in _files(distorted_dir):
                distortion, source = _parse_distorted(entry.name, clean_by_stem)
                rows.append((str(Path(entry.path)), split, identity_dir.name, distortion, source))
    return pd.DataFrame(rows, columns=["path", "split", "identity", "distortion", "source"])


def join_gender(task_b: pd.DataFrame, task_a: pd.DataFrame) -> pd.DataFrame:
    """Task B table plus a ``gender`` column taken from Task A by clean file name.

    Every row of an identity (distorted ones included) gets the identity's majority gender;
    identities with no Task A match get ``None``.
    """
    gender_by_name = dict(zip(task_a["path"].map(os.path.basename), task_a["gender"]))
    clean = task_b[task_b["distortion"] == "clean"]
    matched = pd.DataFrame({"identity": clean["identity"],
                            "gender": clean["path"].map(os.path.basename).map(gender_by_name)})
    by_identity = matched.dropna().groupby("identity")["gender"].agg(lambda s: s.mode().iloc[0])
    out = task_b.copy()
    out["gender"] = out["identity"].map(by_identity).astype(object)
    out.loc[out["gender"].isna(), "gender"] = None
    return out


def _markdown_table(frame: pd.DataFrame) -> str:
    header = "| " + " | ".join(map(str, frame.columns)) + " |"
    rule = "|" + "|".join("---" for _ in frame.columns) + "|"
    body = ["| " + " | ".join(map(str, row)) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([header, rule, *body])


@dataclass
class ValidationReport:
    """What `validate_dataset` found.

    Attributes:
        root: the data root checked.
        counts: long table ``task, split, item, value`` (images per class, identities, clean and
            distorted images per distortion, clean images per identity min/median/max).
        problems: ``path, reason`` for everything wrong; see `validate_dataset` for reasons.
        notes: ``path, note`` for images decoded after a mode conversion and for symbolic
            links followed (listed, still used).
        warnings: data-set level messages (absent splits, counts unlike the official release).
        excluded: paths that cannot be decoded, are not images or have a name that is not
            UTF-8; `filter` drops them. Paths in the frames are `listing.printable`.
        skipped: ``path, reason`` for hidden files and folders, which no reader reads.
        n_files: files opened and checked (hidden ones are not).
        seconds: wall time of the check.
    """

    root: str
    counts: pd.DataFrame
    problems: pd.DataFrame
    notes: pd.DataFrame
    warnings: list[str] = field(default_factory=list)
    excluded: set[str] = field(default_factory=set)
    skipped: pd.DataFrame = field(default_factory=lambda: _frame([], "reason"))
    n_files: int = 0
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        """True when no problem was found (warnings and conversion notes do not count)."""
        return self.problems.empty

    def filter(self, df: pd.DataFrame, verbose: bool = True) -> pd.DataFrame:
        """``df`` without rows whose ``path`` is in `excluded`; prints how many were dropped."""
        keep = ~df["path"].isin(self.excluded)
        if verbose:
            print(f"validation: dropped {int((~keep).sum())} of {len(df)} rows "
                  "(unreadable or non-image files)")
        return df[keep].reset_index(drop=True)

    def to_markdown(self, max_rows: int = 50) -> str:
        """A readable report: summary, counts, problems, notes, skipped files, warnings."""
        status = "OK" if self.ok else f"{len(self.problems)} problem(s)"
        lines = [f"## FACECOM validation: `{self.root}`", "",
                 f"{status}; {self.n_files} file(s) checked, {len(self.excluded)} excluded, "
                 f"{len(self.skipped)} skipped; {len(self.notes)} note(s); checked in "
                 f"{self.seconds:.1f} s.", "", "### Counts", "", _markdown_table(self.counts)]
        for title, frame in (("Problems", self.problems), ("Notes", self.notes),
                             ("Skipped", self.skipped)):
            if len(frame):
                lines += ["", f"### {title}", "", _markdown_table(frame.head(max_rows))]
                if len(frame) > max_rows:
                    lines.append(f"\n... and {len(frame) - max_rows} more")
        if self.warnings:
            lines += ["", "### Warnings", "", *[f"- {w}" for w in self.warnings]]
        return "\n".join(lines)


def _frame(rows: list[tuple[str, str]], column: str) -> pd.DataFrame:
    """``path, <column>`` rows as a frame, names made printable (`listing.printable`)."""
    return pd.DataFrame([(printable(path), printable(text)) for path, text in rows],
                        columns=["path", column])


def _check_file(path: str) -> tuple[str, str | None, str | None, str | None]:
    """(path, sha1, problem reason, converted-from mode) for one file."""
    if not is_valid_name(path):
        return path, None, ("file name is not valid UTF-8 (reports, tables and CSVs cannot "
                            "name it): rename the file"), None
    name = os.path.basename(path)
    if not is_image_name(name):
        extension = os.path.splitext(name)[1] or "none"
        return path, None, (f"not an image file (extension {extension} is not one Pillow "
                            "reads, see data.IMAGE_EXTENSIONS)"), None
    try:
        data = views.read_image_bytes(path)
        image = decode_image(path, data)
    except ImageReadError as exc:
        return path, None, exc.reason, None
    mode = None if image.mode == "RGB" else image.mode
    return path, hashlib.sha1(data).hexdigest(), None, mode


@dataclass
class _SplitWalk:
    """One split's files and what its walk reported (see `listing.walk_files`)."""

    files: list[str]
    problems: list[tuple[str, str]]
    notes: list[tuple[str, str]]
    skipped: list[tuple[str, str]]


def _layout_walk(root: Path, task: str, split: str) -> _SplitWalk:
    """All files of one split, symbolic links followed, plus structural problems (empty
    identities, stray files, broken links), the links followed and the hidden files skipped."""
    folder = root / task / split
    walk = walk_files(folder)
    problems = list(walk.broken)
    for path in walk.files:
        rel = Path(path).parent.relative_to(folder).parts
        expected = ((len(rel) == 1 and rel[0] in GENDERS) if task == "Task_A"
                    else len(rel) == 1 or (len(rel) == 2 and rel[1] == DISTORTION_DIR))
        if not expected:
            problems.append((path, "file outside the FACECOM layout (ignored by readers)"))
    if task == "Task_B":
        for identity in _dirs(folder):
            distorted = Path(identity.path) / DISTORTION_DIR
            if not _files(Path(identity.path)) and not (distorted.is_dir() and _files(distorted)):
                problems.append((identity.path, "empty identity folder (no images)"))
    notes = [(path, f"symbolic link to {target} (followed)") for path, target in walk.links]
    return _SplitWalk(walk.files, problems, notes, walk.skipped)


def _count_rows(task: str, split: str, table: pd.DataFrame) -> list[tuple]:
    if task == "Task_A":
        rows = [(task, split, g, int((table["gender"] == g).sum())) for g in GENDERS]
        return rows + [(task, split, "identities", table["identity"].nunique())]
    clean = table[table["distortion"] == "clean"]
    per_identity = clean.groupby("identity").size().reindex(table["identity"].unique(),
                                                            fill_value=0)
    rows = [(task, split, "identities", table["identity"].nunique()),
            (task, split, "clean", len(clean)),
            (task, split, "distorted", int((table["distortion"] != "clean").sum()))]
    rows += [(task, split, f"distorted:{d}", int((table["distortion"] == d).sum()))
             for d in (*DISTORTIONS, "unknown")]
    if len(per_identity):
        rows += [(task, split, "clean_per_identity_min", int(per_identity.min())),
                 (task, split, "clean_per_identity_median", float(per_identity.median())),
                 (task, split, "clean_per_identity_max", int(per_identity.max()))]
    return rows


def _counts_frame(rows: list[tuple]) -> pd.DataFrame:
    """Counts stay ints (object column) so the medians' floats do not turn 1532 into 1532.0."""
    frame = pd.DataFrame([r[:3] for r in rows], columns=["task", "split", "item"])
    frame["value"] = pd.Series([r[3] for r in rows], dtype=object)
    return frame


def _official_warnings(task: str, split: str, counts: dict[str, int]) -> list[str]:
    expected = OFFICIAL_COUNTS.get((task, split))
    if expected is None:
        return []
    diffs = [f"{key} {counts.get(key, 0)} (official {value})"
             for key, value in expected.items() if counts.get(key, 0) != value]
    if not diffs:
        return []
    message = (f"{task}/{split} differs from the official FACECOM release: {', '.join(diffs)}"
               " (expected for the synthetic sample or a partial copy)")
    if task == "Task_A" and split == "val" and all(
            counts.get(k) == v for k, v in _OLD_TASK_A_VAL.items()):
        message += ("; 303 male / 79 female matches the earlier release's val labels, "
                    "so this is that older copy")
    return [message]


def validate_dataset(root: str | os.PathLike, progress: bool = True, workers: int | None = None,
                     compare_official: bool = True) -> ValidationReport:
    """Check every file under ``<root>/Task_A`` and ``<root>/Task_B`` before training on it.

    Files are found by `listing.walk_files` (symbolic links followed, so a linked identity
    folder is checked like the readers read it); each is read, SHA-1 hashed and fully decoded
    (truncation raises; JPEGs must end with the EOI marker). Problem reasons: ``zero-byte
    file``, ``not an image ...``, ``truncated ...``, ``corrupt ...``, ``too many pixels ...``
    (decompression bomb), ``file name is not valid UTF-8`` (these are `excluded`),
    ``distorted image without a clean source``, ``distortion suffix not one of DISTORTIONS``,
    ``empty identity folder``, ``file outside the FACECOM layout``, ``broken symbolic link``,
    ``symbolic link loop``, ``identity also in another split``, ``same bytes as <path>`` and
    ``near duplicate of <path>`` (`near_duplicates`: re-encoded, resized or distorted) for
    images shared between splits, and the same two for a clean photo repeated under another
    identity of the same split (leakage; reported, not excluded). Hidden files are
    listed in ``skipped``, links followed in ``notes``. A missing val split is a warning.

    Raises:
        DatasetLayoutError: the root or a split folder does not have the FACECOM layout.
    """
    start = time.perf_counter()
    base = _check_root(root)
    files, problems, notes, skipped, count_rows, warnings = [], [], [], [], [], []
    identities_by_split: dict[str, set[str]] = {}
    clean_identity: dict[str, str] = {}  # Task B clean image -> identity
    for task in ("Task_A", "Task_B"):
        splits = available_splits(base, task)
        for split in SPLITS:
            if split not in splits:
                warnings.append(f"{task}/{split} is absent: it is not checked (the shared copy "
                                "of FACECOM holds only train)")
        for split in splits:
            table = read_task_a(base, split) if task == "Task_A" else read_task_b(base, split)
            walk = _layout_walk(base, task, split)
            files += walk.files
            problems += walk.problems
            notes += walk.notes
            skipped += walk.skipped
            rows = _count_rows(task, split, table)
            count_rows += rows
            if compare_official:
                warnings += _official_warnings(task, split, {r[2]: r[3] for r in rows})
            if task == "Task_B":
                identities_by_split[split] = set(table["identity"])
                clean = table[table["distortion"] == "clean"]
                clean_identity.update(zip(clean["path"], clean["identity"]))
                distorted = table[table["distortion"] != "clean"]
                problems += [(p, f"distortion suffix not one of {', '.join(DISTORTIONS)}")
                             for p in distorted.loc[distorted["distortion"] == "unknown", "path"]]
                problems += [(p, "distorted image without a clean source (no clean image with "
                              "the stem before the suffix in its identity folder)")
                             for p in distorted.loc[(distorted["source"] == "")
                                                    & (distorted["distortion"] != "unknown"),
                                                    "path"]]
    with ThreadPoolExecutor(max_workers=workers or cpu_count()) as pool:
        results = list(tqdm(pool.map(_check_file, files, chunksize=32), total=len(files),
                            disable=not progress, desc=f"validating {len(files)} files"))
    excluded = set()
    splits_by_hash: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    for path, digest, reason, mode in results:
        if reason is not None:
            problems.append((path, reason))
            excluded.add(path)
            continue
        if mode is not None:
            notes.append((path, f"converted from {mode}"))
        split = Path(path).relative_to(base).parts[1]
        splits_by_hash[digest][split].append(path)
    problems += _leakage_problems(base, splits_by_hash, identities_by_split)
    problems += _near_duplicate_problems(base, splits_by_hash)
    problems += _shared_photo_problems(base, splits_by_hash, clean_identity)
    return ValidationReport(
        root=str(base), counts=_counts_frame(count_rows), problems=_frame(problems, "reason"),
        notes=_frame(notes, "note"), warnings=warnings, excluded=excluded,
        skipped=_frame(skipped, "reason"), n_files=len(files),
        seconds=time.perf_counter() - start)


def _near_duplicate_problems(base: Path, splits_by_hash: dict[str, dict[str, list[str]]]
                             ) -> list[tuple[str, str]]:
    """Images of a later split (sorted by name) within `near_duplicates.MAX_DISTANCE` bits of
    an image of an earlier one, byte-identical copies left to `_leakage_problems`; one row per
    later image, naming its closest match. Nothing is hashed when there is a single split."""
    paths_by_split: dict[str, list[str]] = defaultdict(list)
    digest_of = {}
    for digest, by_split in splits_by_hash.items():
        for split, paths in by_split.items():
            paths_by_split[split] += paths
            digest_of.update(dict.fromkeys(paths, digest))
    order = sorted(paths_by_split)
    closest: dict[str, tuple[int, str, str]] = {}
    for i, split in enumerate(order[1:], start=1):
        earlier = [p for s in order[:i] for p in sorted(paths_by_split[s])]
        for first, second, bits in near_duplicates.find_near_duplicates(
                earlier, sorted(paths_by_split[split])):
            if digest_of[first] != digest_of[second] and second not in closest:
                closest[second] = (bits, first, Path(first).relative_to(base).parts[1])
    return [(path, f"near duplicate of {first} ({bits} bits apart in the perceptual hash, "
                   f"{split} split)") for path, (bits, first, split) in sorted(closest.items())]


def _shared_photo_problems(base: Path, splits_by_hash: dict[str, dict[str, list[str]]],
                           clean_identity: dict[str, str]) -> list[tuple[str, str]]:
    """Task B clean images of one split that repeat (same bytes or near duplicate) a clean
    image of another identity of the same split: any identity split made later, such as the
    training notebooks' holdout, would put the photo on both sides. One row per later image
    (by path), naming its closest match; only clean images are hashed, which keeps this cheap
    on a train-only copy."""
    digest_of = {path: digest for digest, by_split in splits_by_hash.items()
                 for paths in by_split.values() for path in paths}
    by_split: dict[str, list[str]] = defaultdict(list)
    for path in sorted(p for p in clean_identity if p in digest_of):
        by_split[Path(path).relative_to(base).parts[1]].append(path)
    closest: dict[str, tuple[int, str]] = {}
    for paths in by_split.values():
        for first, second, bits in near_duplicates.find_near_duplicates(paths, paths):
            if first < second and clean_identity[first] != clean_identity[second] and (
                    second not in closest):
                closest[second] = (bits, first)
    rows = []
    for path, (bits, first) in sorted(closest.items()):
        match = (f"same bytes as {first}" if digest_of[first] == digest_of[path] else
                 f"near duplicate of {first} ({bits} bits apart in the perceptual hash)")
        rows.append((path, f"{match}, another identity ({clean_identity[first]}) of the same "
                           "split: an identity split would put the photo on both sides"))
    return rows


def _leakage_problems(base: Path, splits_by_hash: dict[str, dict[str, list[str]]],
                      identities_by_split: dict[str, set[str]]) -> list[tuple[str, str]]:
    """Identities and identical files present in more than one split (first split is kept)."""
    problems = []
    for by_split in splits_by_hash.values():
        if len(by_split) > 1:
            (first_split, first_paths), *others = sorted(by_split.items())
            problems += [(path, f"same bytes as {first_paths[0]} ({first_split} split)")
                         for _, paths in others for path in paths]
    order = sorted(identities_by_split)
    for i, split in enumerate(order):
        earlier = set().union(*(identities_by_split[s] for s in order[:i]))
        problems += [(str(base / "Task_B" / split / identity),
                      "identity also in another split (identity leakage)")
                     for identity in sorted(identities_by_split[split] & earlier)]
    return problems
