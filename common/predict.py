"""Inference on any folder with a trained checkpoint: `python -m common.predict ...`.

    python -m common.predict task-a --weights weights/task_a_x.pt --input DIR --output preds.csv
    python -m common.predict task-b --weights weights/task_b_x.pt --gallery DIR --queries DIR \\
        --output matches.csv
    python -m common.predict task-b --weights weights/task_b_x.pt --input FACECOM_SPLIT_DIR ...
    python -m common.predict enrol --weights weights/task_b_x.pt --gallery DIR --index GALLERY
    python -m common.predict search --weights weights/task_b_x.pt --index GALLERY --queries DIR \\
        --output matches.csv
    python -m common.predict compare a.jpg b.jpg --weights weights/task_b_x.pt

Preprocessing (image size, normalisation, face alignment or dlib face chips, threshold) comes
from the model card beside the checkpoint. Folders are walked by `listing.walk_files` (links
followed), like validation walks the data. A bad input never aborts a run: an unreadable image
(zero-byte, corrupt, truncated, decompression bomb, not an image), a hidden file, a broken link
or an unreadable gallery image gets a row whose `error` column names the problem; names that
are not UTF-8 are written with ``\\x`` escapes. The CSV is written atomically and an existing
one is replaced only with ``--overwrite``. Nothing in the input folders is modified.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch

from common import checkpoints, config, data, fusion, listing, metrics, task_a, task_b
from common.checkpoints import ModelCard
from common.gallery import GalleryIndex
from common.model_inputs import ImageLike, prepare_inputs

__all__ = ["predict_gender", "embed", "compare", "match_gallery", "checkpoint_fingerprint",
           "enrol", "search", "main"]

_MODELS: dict[tuple[str, str], tuple[torch.nn.Module, ModelCard]] = {}


def _model(weights: str | os.PathLike, device: torch.device, task: str
           ) -> tuple[torch.nn.Module, ModelCard]:
    """Load (once per process) the checkpoint and check it is for `task`."""
    key = (str(Path(weights).resolve()), str(device))
    if key not in _MODELS:
        _MODELS[key] = checkpoints.load_model(weights, device)
    model, card = _MODELS[key]
    if card.task != task:
        raise ValueError(f"{weights} is a {card.task} checkpoint; this command needs a {task} "
                         "one (see the 'task' field of its model card).")
    return model, card


def predict_gender(paths: Sequence[ImageLike], weights: str | os.PathLike, device: str = "auto",
                   progress: bool = True, batch_size: int = 128) -> pd.DataFrame:
    """Task A: one row per input with label, P(female) at the card's threshold, and error."""
    device_ = config.resolve_device(device)
    model, card = _model(weights, device_, "task_a")
    inputs = prepare_inputs(card, paths, device=str(device_), progress=progress)
    probs = task_a.predict_probs(model, inputs.images, card.image_size, device_, inputs.aligned,
                                 batch_size=batch_size, progress=progress)
    ok = np.array([not err for err in inputs.errors])
    labels = np.where(probs >= card.threshold, "female", "male")
    return pd.DataFrame({"path": [str(p) for p in paths], "label": np.where(ok, labels, ""),
                         "probability": np.where(ok, probs.round(6), np.nan),
                         "error": inputs.errors})


def embed(images: Sequence[ImageLike], weights: str | os.PathLike, device: str = "auto",
          progress: bool = False, batch_size: int = 128) -> np.ndarray:
    """(N, D) L2-normalised embeddings of paths, PIL images or RGB arrays (Task B checkpoint).

    Raises:
        ValueError: an image could not be read (the message names it).
    """
    return _embed(images, weights, device, progress, batch_size=batch_size)[0]


def _embed(images: Sequence[ImageLike], weights: str | os.PathLike, device: str = "auto",
           progress: bool = False, with_faces: bool = False, with_identity: bool = False,
           batch_size: int = 128
           ) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray] | None,
                      tuple[np.ndarray, np.ndarray] | None]:
    """`embed`, plus the card's face descriptors and face-found flags when the card fuses them
    or `with_faces` asks, and what a face rule reads of its copy switch's identity channel when
    `with_identity` asks (`task_b.switch_channels`' ``"pair_faces"``, with its ``"found"``):
    computed once for every use (`model_inputs.prepare_inputs`)."""
    device_ = config.resolve_device(device)
    model, card = _model(weights, device_, "task_b")
    inputs = prepare_inputs(card, images, with_faces=with_faces, with_identity=with_identity,
                            device=str(device_), progress=progress)
    failed = [f"{images[i] if isinstance(images[i], (str, os.PathLike)) else f'image #{i}'}: "
              f"{err}" for i, err in enumerate(inputs.errors) if err]
    if failed:
        raise ValueError("Could not read " + "; ".join(failed))
    channels = (task_b.switch_channels(model, card, inputs, device_, progress, batch_size)
                if with_identity else {"embedding": None})
    embeddings = task_b.embed_for_card(model, card, inputs, device_, progress, batch_size,
                                       learned=channels["embedding"])
    return (embeddings, inputs.faces,
            (channels["pair_faces"], channels["found"]) if with_identity else None)


def compare(image_a: ImageLike, image_b: ImageLike, weights: str | os.PathLike,
            device: str = "auto") -> dict:
    """Cosine similarity of two faces and the same/different decision: at the card's threshold,
    or by its dev-fitted `fusion.FaceRule` when it has one (the Siamese notebook's), on the face
    channel the rule was fitted on."""
    _, card = _model(weights, config.resolve_device(device), "task_b")
    rule = card.fitted_face_rule
    reads_identity = rule is not None and rule.channel == "identity"
    (first, second), faces, identity = _embed(
        [image_a, image_b], weights, device, with_faces=rule is not None and not reads_identity,
        with_identity=reads_identity)
    similarity = float(np.clip(first @ second, -1.0, 1.0))
    threshold = card.similarity_threshold
    result = {"similarity": similarity, "threshold": threshold,
              "same": None if threshold is None else bool(similarity >= threshold)}
    if rule is not None:
        unit, found = task_b.rule_faces(rule, faces, identity)
        cosine = float(unit[0] @ unit[1])
        same = rule.decide(np.array([np.linalg.norm(first - second)]), np.array([cosine]),
                           np.array([found.all()]))
        result.update(same=bool(same[0]), descriptor_cosine=cosine,
                      faces_found=bool(found.all()), face_rule=card.face_rule)
    return result


def _folder_images(folder: Path) -> list[Path]:
    """Every visible file under ``folder``, through links (`listing.walk_files`); the ones that
    are not images get their error row from `model_inputs.prepare_inputs`."""
    walk = listing.walk_files(folder)
    if not walk.files and not walk.skipped and not walk.broken:
        raise FileNotFoundError(f"{folder} contains no files; pass a folder of images.")
    return [Path(path) for path in walk.files]


def _skipped_files(*folders: Path) -> list[tuple[str, str]]:
    """``(path, reason)`` for what the walk of ``folders`` did not read (hidden files and
    folders, broken links, link loops), each once: they get a row, not silence."""
    rows = {}
    for folder in dict.fromkeys(folders):
        walk = listing.walk_files(folder)
        rows.update(walk.skipped + walk.broken)
    return sorted(rows.items())


def _identity_of(path: Path, root: Path) -> str:
    """`<root>/<identity>/...` -> identity ("" for files directly in root)."""
    relative = path.relative_to(root).parts
    return relative[0] if len(relative) > 1 else ""


def _gallery_files(gallery: Path) -> tuple[list[Path], list[str]]:
    """`<gallery>/<identity>/*` files (distortion sub-folders ignored) and their identities."""
    files = [p for p in _folder_images(gallery) if "distortion" not in p.parts[-2:-1]]
    identities = [_identity_of(p, gallery) for p in files]
    if not all(identities):
        raise ValueError(f"Gallery {gallery} must hold one folder per identity "
                         "(<gallery>/<identity>/*.jpg); found images directly inside it.")
    empty = sorted(p.name for p in gallery.iterdir() if p.is_dir()
                   and not any(f.is_file() for f in p.rglob("*")))
    if empty:
        print(f"warning: gallery identities with no images are skipped: {empty}")
    return files, identities


def _embed_files(files: Sequence[Path], weights: str | os.PathLike, device: str,
                 progress: bool, batch_size: int, gallery: bool
                 ) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray | None]:
    """Per channel, the embeddings of `files` as the card says (a placeholder's where a file is
    unreadable), one error string per file ("" when fine), and whether the identity channel
    found each face (None without one). The channel is ``"embedding"``; a card with a
    `fusion.CopySwitch` also has ``"identity"`` (`task_b.switch_channels`), which depends on
    whether the files are `gallery` photos or queries (`model_inputs.prepare_inputs`)."""
    device_ = config.resolve_device(device)
    model, card = _model(weights, device_, "task_b")
    inputs = prepare_inputs(card, files, with_identity=bool(card.copy_switch), gallery=gallery,
                            device=str(device_), progress=progress)
    errors = np.array(inputs.errors, dtype=object)
    if card.copy_switch:
        channels = task_b.switch_channels(model, card, inputs, device_, batch_size=batch_size)
        return ({name: channels[name] for name in ("embedding", "identity")}, errors,
                channels["found"])
    return {"embedding": task_b.embed_for_card(model, card, inputs, device_,
                                               batch_size=batch_size)}, errors, None


def _build_indexes(embeddings: dict[str, np.ndarray], identities: Sequence,
                   sources: Sequence | None = None, metadata: dict | None = None
                   ) -> dict[str, GalleryIndex]:
    return {channel: GalleryIndex.build(vectors, identities, sources, metadata=metadata)
            for channel, vectors in embeddings.items()}


def _match_table(indexes: dict[str, GalleryIndex], query_files: list[Path], queries: Path,
                 embeddings: dict[str, np.ndarray], errors: np.ndarray,
                 face_found: np.ndarray | None, switch: fusion.CopySwitch | None
                 ) -> pd.DataFrame:
    """One row per query: the best identity, its similarity, the true identity (the query's
    first sub-folder, when there is one) and whether they agree. With a card's `switch`
    (`fusion.CopySwitch`), each query is answered by the channel it chooses, named in a
    ``channel`` column."""
    found = indexes["embedding"].search(embeddings["embedding"], k=2 if switch else 1)
    predicted = np.asarray(indexes["embedding"].names)[found.codes[:, 0]]
    similarity = found.scores[:, 0]
    columns = {}
    if switch:
        by_face = indexes["identity"].search(embeddings["identity"], k=1)
        use_copy = switch.decide(found.scores[:, 0], found.scores[:, 1], by_face.scores[:, 0],
                                 face_found)
        predicted = np.where(use_copy, predicted,
                             np.asarray(indexes["identity"].names)[by_face.codes[:, 0]])
        similarity = np.where(use_copy, similarity, by_face.scores[:, 0])
        columns["channel"] = np.where(use_copy, "copy", "identity")
    table = pd.DataFrame({
        "query": [str(p) for p in query_files], "predicted_identity": predicted,
        "similarity": similarity.round(6), **columns,
        "true_identity": [_identity_of(p, queries) for p in query_files], "error": errors})
    known = table["true_identity"].isin(set(indexes["embedding"].names)) & (table["error"] == "")
    table["match"] = np.where(known, (table["predicted_identity"] == table["true_identity"])
                              .astype(int), "")
    table.loc[table["error"] != "", ["predicted_identity", "similarity", *columns]] = [
        "", np.nan, *([""] * len(columns))]
    return table


def match_gallery(gallery: Path, queries: Path, weights: str | os.PathLike,
                  device: str = "auto", progress: bool = True,
                  batch_size: int = 128) -> pd.DataFrame:
    """Task B: match every query image to the most similar gallery identity.

    The gallery is `<gallery>/<identity>/*` (distortion sub-folders ignored); queries are any
    images under `queries`, labelled by their first sub-folder when there is one. The gallery
    is embedded on every call: `enrol` keeps it in a saved index instead.
    """
    gallery_files, gallery_ids = _gallery_files(gallery)
    query_files = _folder_images(queries)
    g_emb, g_errors, _ = _embed_files(gallery_files, weights, device, progress, batch_size,
                                      gallery=True)
    g_ok = g_errors == ""
    if not g_ok.any():
        raise ValueError(f"No readable gallery image in {gallery}: {list(g_errors[:3])}")
    indexes = _build_indexes({channel: vectors[g_ok] for channel, vectors in g_emb.items()},
                             np.array(gallery_ids)[g_ok])
    table = _match_table(indexes, query_files, queries,
                         *_embed_files(query_files, weights, device, progress, batch_size,
                                       gallery=False),
                         checkpoints.load_model_card(weights).fitted_copy_switch)
    table.attrs["gallery_errors"] = [(str(p), i, e) for p, i, e in
                                     zip(gallery_files, gallery_ids, g_errors) if e]
    return table


def checkpoint_fingerprint(weights: str | os.PathLike) -> dict:
    """What a saved gallery remembers of the checkpoint that embedded it: the model card's name
    and the SHA-256 of its weights (recorded in the card, verified whenever the weights load),
    so a checkpoint retrained under the same name differs."""
    card = checkpoints.load_model_card(weights)
    if not card.weights_sha256:
        raise checkpoints.CheckpointError(f"The model card of {card.weights_path} records no "
                                          "weights hash; re-save it with the current notebooks.")
    return {"checkpoint": card.name, "sha256": card.weights_sha256}


def enrol(gallery: Path, index: Path, weights: str | os.PathLike, device: str = "auto",
          progress: bool = True, batch_size: int = 128) -> GalleryIndex:
    """Save the embeddings of `<gallery>/<identity>/*` as a gallery index in the folder `index`,
    or, when one is there, append only the files it does not hold yet (new identities or new
    photos of known ones): nothing is embedded twice. Files are known by their resolved path.

    Raises:
        gallery.FingerprintMismatchError: the saved index was built with another checkpoint.
    """
    index, fingerprint = Path(index), checkpoint_fingerprint(weights)
    saved = (_load_indexes(index, fingerprint, checkpoints.load_model_card(weights))
             if index.is_dir() and any(index.iterdir()) else None)
    files, identities = _gallery_files(gallery)
    held = set(saved["embedding"].sources) if saved else set()
    new = [i for i, path in enumerate(files) if str(path.resolve()) not in held]
    ok = np.zeros(0, np.int64)
    if new:
        embeddings, errors, _ = _embed_files([files[i] for i in new], weights, device, progress,
                                             batch_size, gallery=True)
        ok = np.flatnonzero(errors == "")
        if len(ok) < len(new):
            print(f"warning: {len(new) - len(ok)} unreadable gallery images not enrolled, e.g. "
                  f"{[str(files[new[i]]) for i in np.flatnonzero(errors != '')[:3]]}")
        if len(ok):
            names, sources = ([identities[new[i]] for i in ok],
                              [str(files[new[i]].resolve()) for i in ok])
            if saved is None:
                saved = _build_indexes({channel: vectors[ok] for channel, vectors
                                        in embeddings.items()}, names, sources,
                                       {"fingerprint": fingerprint})
            else:
                for channel, vectors in embeddings.items():
                    saved[channel].add(vectors[ok], names, sources)
            for channel, built in saved.items():
                built.save(_channel_folder(index, channel))
    if saved is None:
        raise ValueError(f"No readable gallery image in {gallery}; nothing to enrol.")
    print(f"enrolled {len(ok)} new images into {index}: {len(saved['embedding'])} images of "
          f"{len(saved['embedding'].names)} identities")
    return saved["embedding"]


def _channel_folder(index: Path, channel: str) -> Path:
    """Where a saved gallery keeps a channel: the card's embedding in the folder itself (as
    galleries always were), a copy switch's face descriptors in its ``identity/``."""
    return index if channel == "embedding" else index / channel


def _load_indexes(index: Path, fingerprint: dict, card: ModelCard) -> dict[str, GalleryIndex]:
    channels = ("embedding", "identity") if card.copy_switch else ("embedding",)
    return {channel: GalleryIndex.load(_channel_folder(index, channel), fingerprint)
            for channel in channels}


def search(queries: Path, index: Path, weights: str | os.PathLike, device: str = "auto",
           progress: bool = True, batch_size: int = 128) -> pd.DataFrame:
    """`match_gallery` against a gallery saved by `enrol` (same columns); only the queries
    are embedded.

    Raises:
        gallery.FingerprintMismatchError: `weights` is not the checkpoint the index was built
            with.
    """
    card = checkpoints.load_model_card(weights)
    saved = _load_indexes(Path(index), checkpoint_fingerprint(weights), card)
    query_files = _folder_images(queries)
    return _match_table(saved, query_files, queries,
                        *_embed_files(query_files, weights, device, progress, batch_size,
                                      gallery=False),
                        card.fitted_copy_switch)


def _check_output(output: str, overwrite: bool) -> None:
    """Refuse, before any work, to replace an existing CSV unless asked to."""
    if os.path.exists(output) and not overwrite:
        raise FileExistsError(f"{output} already exists; pass --overwrite to replace it, or "
                              "choose another --output.")


def _with_problem_rows(table: pd.DataFrame, rows: list[dict]) -> pd.DataFrame:
    """``table`` plus one row per problem ``{path column: ..., "error": ...}``; the columns a
    row leaves out are blank ("" for text, NaN for numbers), as for unreadable images."""
    if not rows:
        return table
    blank = {column: np.nan if pd.api.types.is_float_dtype(dtype) else ""
             for column, dtype in table.dtypes.items()}
    return pd.concat([table, pd.DataFrame([{**blank, **row} for row in rows])],
                     ignore_index=True)


def _write(table: pd.DataFrame, output: str) -> None:
    """Write the CSV atomically (temp file beside it, then rename): an interrupted run leaves
    the previous file or none, never half a table. Text is made valid UTF-8 first
    (`listing.printable`), so a file name that is not UTF-8 cannot crash the write."""
    target = Path(output)
    target.parent.mkdir(parents=True, exist_ok=True)
    table = table.copy()
    for column in table.columns[[not pd.api.types.is_numeric_dtype(t) for t in table.dtypes]]:
        table[column] = table[column].map(
            lambda value: listing.printable(value) if isinstance(value, str) else value)
    handle, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}",
                                        suffix=".tmp")
    try:
        with os.fdopen(handle, "w", encoding="utf-8", newline="") as file:
            table.to_csv(file, index=False)
        os.replace(tmp_name, target)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    bad = int((table["error"] != "").sum())
    print(f"wrote {len(table)} rows to {output}" + (f" ({bad} with a problem, see the error "
                                                    "column)" if bad else ""))


def _task_a(args: argparse.Namespace) -> None:
    _check_output(args.output, args.overwrite)
    folder = Path(args.input)
    files = _folder_images(folder)
    table = predict_gender(files, args.weights, args.device, batch_size=args.batch_size)
    skipped = [{"path": path, "error": reason} for path, reason in _skipped_files(folder)]
    _write(_with_problem_rows(table, skipped), args.output)
    truth = [p.parent.name for p in files]
    labelled = [t in data.GENDERS for t in truth]
    ok = (table["error"] == "").to_numpy() & np.array(labelled)
    if ok.any():
        labels = np.array([data.GENDERS.index(t) for t in np.array(truth)[ok]])
        result = metrics.compute_classification_metrics(
            labels, table["probability"].to_numpy()[ok],
            checkpoints.load_model_card(args.weights).threshold)
        print({k: round(result[k], 4) for k in ("accuracy", "f1_macro", "recall_female")
               if result.get(k) is not None})


def _task_b(args: argparse.Namespace) -> None:
    if args.input:
        gallery = queries = Path(args.input)
    elif args.gallery and args.queries:
        gallery, queries = Path(args.gallery), Path(args.queries)
    else:
        raise SystemExit("task-b needs --gallery and --queries, or --input (a FACECOM-layout "
                         "split folder: <identity>/<clean> + <identity>/distortion/*)")
    _check_output(args.output, args.overwrite)
    table = match_gallery(gallery, queries, args.weights, args.device,
                          batch_size=args.batch_size)
    gallery_errors = table.attrs.get("gallery_errors", [])
    if args.input:  # one FACECOM folder: the queries are the distorted images
        table = table[table["query"].str.contains(f"{os.sep}distortion{os.sep}")]
    problems = [{"query": path, "true_identity": identity,
                 "error": f"gallery image not used: {error}"}
                for path, identity, error in gallery_errors]
    problems += [{"query": path, "error": reason}
                 for path, reason in _skipped_files(gallery, queries)]
    _write_matches(_with_problem_rows(table, problems), args.output)


def _enrol(args: argparse.Namespace) -> None:
    enrol(Path(args.gallery), Path(args.index), args.weights, args.device,
          batch_size=args.batch_size)


def _search(args: argparse.Namespace) -> None:
    _check_output(args.output, args.overwrite)
    table = search(Path(args.queries), Path(args.index), args.weights, args.device,
                   batch_size=args.batch_size)
    skipped = [{"query": path, "error": reason} for path, reason in
               _skipped_files(Path(args.queries))]
    _write_matches(_with_problem_rows(table, skipped), args.output)


def _write_matches(table: pd.DataFrame, output: str) -> None:
    _write(table, output)
    scored = table[table["match"] != ""]
    if len(scored):
        print(f"top-1 over {len(scored)} labelled queries: "
              f"{scored['match'].astype(int).mean():.4f}")


def _compare(args: argparse.Namespace) -> None:
    result = compare(args.image_a, args.image_b, args.weights, args.device)
    decision = {True: "same person", False: "different people", None: "no threshold in card"}
    print(f"similarity {result['similarity']:.4f} (threshold {result['threshold']}): "
          f"{decision[result['same']]}")


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit code."""
    parser = argparse.ArgumentParser(prog="python -m common.predict", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    a = sub.add_parser("task-a", help="gender of every image in a folder")
    a.add_argument("--input", required=True, help="flat folder or one with male/ and female/")
    b = sub.add_parser("task-b", help="match queries to gallery identities")
    b.add_argument("--gallery", help="<gallery>/<identity>/*")
    b.add_argument("--queries", help="images, optionally in <identity>/ folders")
    b.add_argument("--input", help="one FACECOM-layout split folder (gallery = clean images)")
    e = sub.add_parser("enrol", help="save a gallery index, or add new files to one")
    e.add_argument("--gallery", required=True, help="<gallery>/<identity>/*")
    e.add_argument("--index", required=True, help="folder of the saved gallery index")
    s = sub.add_parser("search", help="match queries against a saved gallery index")
    s.add_argument("--index", required=True, help="folder written by enrol")
    s.add_argument("--queries", required=True, help="images, optionally in <identity>/ folders")
    c = sub.add_parser("compare", help="similarity of two face images")
    c.add_argument("image_a")
    c.add_argument("image_b")
    for command in (a, b, s):
        command.add_argument("--output", required=True, help="CSV to write")
        command.add_argument("--overwrite", action="store_true",
                             help="replace --output when it exists (refused otherwise)")
    for command in (a, b, e, s, c):
        command.add_argument("--weights", required=True, help="checkpoint .pt with its .json card")
        command.add_argument("--device", default="auto", help="auto | cpu | cuda")
    for command in (a, b, e, s):
        command.add_argument("--batch-size", type=int, default=128,
                             help="images per forward pass (default 128; lower it when a GPU "
                                  "runs out of memory, raise it on a large one)")
    args = parser.parse_args(argv)
    try:
        {"task-a": _task_a, "task-b": _task_b, "enrol": _enrol, "search": _search,
         "compare": _compare}[args.command](args)
    except (FileNotFoundError, FileExistsError, NotADirectoryError, ValueError, TypeError,
            checkpoints.MissingModelCardError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
