"""From a model card and images to what the saved model takes: one way for notebook 04 and
`common.predict`.

A card says which view of an image its model was trained on (`ModelCard.stream`, ``aligned``,
``descriptor_weight``); `prepare_inputs` turns paths, PIL images or arrays into that view, with
one error string per item instead of an exception, so one bad file never stops a whole folder.
"""
from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Union

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from common import (cache, checkpoints, face_descriptor, face_priors, faces, fusion, sface_net,
                    whole_image)
from common.image_decode import ImageReadError
from common.checkpoints import ModelCard

__all__ = ["ImageLike", "ModelInputs", "prepare_inputs", "load_inputs", "probe_inputs",
           "card_descriptors", "card_identity", "card_glare"]

ImageLike = Union[str, os.PathLike, Image.Image, np.ndarray]


@dataclass
class ModelInputs:
    """What a card's model takes for N inputs, rows in input order.

    Attributes:
        images: (N, S, S, 3) uint8 images at the card's size and fit, or dlib face chips
            (stream "chips"), or SFace's face crops (an identity channel's card), or (N, D)
            unit face descriptors (stream "descriptor"); black or a placeholder's row where an
            item failed.
        errors: one per item, "" when fine, else what went wrong.
        aligned: (N, S, S, 3) MTCNN-aligned faces for a dual-stream card, else None.
        faces: raw face descriptors and face-found flags of the full-size inputs, when the card
            fuses them (``descriptor_weight``) or they were asked for, else None.
        identity: unit vectors of the identity channel of the card's copy switch, when asked
            for: its fine-tuned network's (`ModelCard.identity_weights`), else the face
            descriptors'; else None.
        identity_descriptors: unit face descriptors and face-found flags of the front end the
            switch mixes into its fine-tuned network for the gallery (a ``descriptor_share``),
            when asked for the identity channel; else None (`task_b.switch_channels`).
        identity_found: per row, whether the identity channel found the face (YuNet's crop
            for a fine-tuned network, the descriptor's detector otherwise), with `identity`
            (the switch's ``faceless_share`` and a face rule's ``faceless_cosine`` read it);
            else None.
        whole / gallery: with `identity`, when the card's switch carries a share of a
            whole-image network (``glare_weights``): its unit features of the rows that carry
            it (`fusion.carries_whole`; zeros in the others), and per row whether it is a
            gallery photo (`prepare_inputs`); else None.
    """

    images: np.ndarray
    errors: list[str]
    aligned: np.ndarray | None = None
    faces: tuple[np.ndarray, np.ndarray] | None = None
    identity: np.ndarray | None = None
    identity_descriptors: tuple[np.ndarray, np.ndarray] | None = None
    identity_found: np.ndarray | None = None
    whole: np.ndarray | None = None
    gallery: np.ndarray | None = None


def _is_path(item: ImageLike) -> bool:
    return isinstance(item, (str, os.PathLike))


def load_inputs(images: Sequence[ImageLike], image_size: int, progress: bool = True,
                fit: str = "crop") -> tuple[np.ndarray, list[str]]:
    """Decode paths / PIL images / arrays like the training cache (``fit`` as the model card
    says, see `cache.FITS`); errors per item, never raised.

    Returns the (N, S, S, 3) array (black where an item failed) and one error string per item
    ("" when fine).
    """
    array = np.zeros((len(images), image_size, image_size, 3), dtype=np.uint8)
    errors = [""] * len(images)
    for index, item in enumerate(tqdm(images, desc="reading", disable=not progress, leave=False)):
        try:
            if _is_path(item):
                array[index] = cache.load_resized(item, image_size, fit)
            else:
                array[index] = cache.resize_square(item, image_size, fit)
        except (ImageReadError, OSError, ValueError, TypeError) as error:
            errors[index] = f"{type(error).__name__}: {error}"
    return array, errors


def probe_inputs(images: Sequence[ImageLike], front_end: str, progress: bool = True,
                 context_backbone: str = "", device: str = "cpu",
                 tuned: whole_image.Tuned | None = None) -> np.ndarray:
    """The descriptor probe's input rows: unit face descriptors of files (cached) or RGB arrays,
    the same for training (`task_a.prepare_data`), notebook 04 and `common.predict`; with a
    `context_backbone`, each row also holds the face-found flag and the whole image's features
    (`models.DescriptorProbe`, `common.whole_image`): its `tuned` network's where no face was
    found and zeros elsewhere, when the probe has one."""
    vectors, found = face_descriptor.describe_images(images, front_end, progress)
    rows = face_descriptor.normalise(vectors)
    if not context_backbone:
        return rows
    if tuned is None:
        context = whole_image.features(images, context_backbone, device, progress)
    else:
        context = np.zeros((len(rows), whole_image.feature_size(context_backbone)), np.float32)
        faceless = np.flatnonzero(~found)
        context[faceless] = whole_image.features([images[i] for i in faceless], context_backbone,
                                                 device, progress, tuned=tuned)
    return np.hstack([rows, found[:, None].astype(rows.dtype), context.astype(rows.dtype)])


def card_descriptors(card: ModelCard, originals: Sequence[ImageLike],
                     progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Raw face descriptors and face-found flags of full-size `originals` with the card's
    front end: cached for a list of files, computed for in-memory images.

    Raises:
        PriorUnavailableError: a face model of that front end is not installed.
    """
    return face_descriptor.describe_images(originals, card.descriptor_front_end or "robust",
                                           progress)


def card_identity(card: ModelCard, originals: Sequence[ImageLike], device: str = "cpu",
                  progress: bool = False) -> np.ndarray:
    """Unit vectors of full-size `originals` from the card's fine-tuned identity channel (its
    checkpoint `ModelCard.identity_path`, on SFace's crops: cached for files).

    Raises:
        PriorUnavailableError: onnx2torch or SFace is not installed.
    """
    path = card.identity_path
    modified_ns = _modified_ns(path)
    weights_sha256 = _checkpoint_card(str(path), modified_ns).weights_sha256
    return sface_net.describe_images(lambda: _saved_model(str(path), modified_ns, device),
                                     originals, device, "identity channel" if progress else "",
                                     weights_sha256)


def card_glare(card: ModelCard, originals: Sequence[ImageLike], rows: np.ndarray,
               device: str = "cpu", progress: bool = False) -> np.ndarray:
    """Unit features of full-size `originals` from the card's glare network (its checkpoint
    `ModelCard.glare_path`, `common.glare_identity`; kept for files by its weights' hash), in
    the `rows` a switch mixes them into; zeros in the others, which it never reads."""
    path = card.glare_path
    modified_ns = _modified_ns(path)
    glare = _checkpoint_card(str(path), modified_ns)
    tuned = whole_image.Tuned(_saved_model(str(path), modified_ns, device), glare.weights_sha256)
    rows = np.flatnonzero(rows)
    described = whole_image.features([originals[i] for i in rows],
                                     glare.model_kwargs["backbone_name"], device, progress,
                                     tuned=tuned)
    out = np.zeros((len(originals), described.shape[1]), np.float32)
    out[rows] = face_descriptor.normalise(described)
    return out


def _modified_ns(checkpoint: Path) -> tuple[int, int]:
    """Modification times of a checkpoint and its card: what keys `_saved_model`."""
    return tuple(os.stat(file).st_mtime_ns
                 for file in (checkpoint, checkpoint.with_suffix(".json")))


@functools.lru_cache(maxsize=4)
def _saved_model(path: str, modified_ns: tuple[int, int], device: str) -> torch.nn.Module:
    """A checkpoint loaded once per process while it and its card are unchanged
    (`modified_ns`): `predict` compares pairs one call at a time, and the leaderboard's
    cards share one identity checkpoint."""
    return checkpoints.load_model(path, device)[0]


def _probe_tuned(card: ModelCard, device: str) -> whole_image.Tuned | None:
    """The fine-tuned whole-image network inside a probe's checkpoint, keyed by its hash."""
    if not card.model_kwargs.get("context_tuned"):
        return None
    path = Path(card.weights_path)  # set when the card was read beside its checkpoint
    model = _saved_model(str(path), _modified_ns(path), device)
    return whole_image.Tuned(model.context_network, card.weights_sha256)


@functools.lru_cache(maxsize=4)
def _checkpoint_card(path: str, modified_ns: tuple[int, int]) -> ModelCard:
    """An identity or glare checkpoint's card (its weights' hash keys the kept vectors), read
    once per process while it and the checkpoint are unchanged."""
    return checkpoints.load_model_card(path)


def _decode(images: Sequence[ImageLike], card: ModelCard, image_cache: str,
            progress: bool) -> tuple[np.ndarray, list[str]]:
    """`load_inputs` at the card's size and fit; a list of data-set files of a whole-image card
    comes from the decoded-image cache when `image_cache` names a mode (the rows training read),
    item by item only when a file cannot be decoded, so that item alone fails."""
    if image_cache and card.stream == "raw" and all(_is_path(item) for item in images):
        try:
            return cache.load_image_array(list(images), card.image_size, fit=card.fit,
                                          progress=progress, image_cache=image_cache), \
                [""] * len(images)
        except ImageReadError:
            pass
    return load_inputs(images, card.image_size, progress, card.fit)


def _originals(images: Sequence[ImageLike], decoded: np.ndarray, errors: list[str]) -> list:
    """What a face descriptor reads: each file or full-size image as given, the placeholder of
    `load_inputs` where an item failed (its row is reported as an error)."""
    return [decoded[i] if errors[i] else item if _is_path(item) else cache.to_rgb_array(item)
            for i, item in enumerate(images)]


def _face_chips(images: Sequence[ImageLike], errors: list[str], size: int,
                sources: Sequence[str | os.PathLike] | None, progress: bool) -> np.ndarray:
    """dlib face chips (`common.face_priors`): each image's own face, else its clean source's
    face when `sources` names it (as in training), else the whole image.

    New files have no known source, so `common.predict` gets the whole-image fallback; notebook
    04 passes the data set's sources so its chips are the ones the model was trained and
    selected on. Files go through the chip cache; in-memory images are computed.
    """
    chips = np.zeros((len(images), size, size, 3), dtype=np.uint8)
    good = [i for i, err in enumerate(errors) if not err]
    if not good:
        return chips
    if all(_is_path(images[i]) for i in good):
        chips[good] = face_priors.load_face_chips(
            [images[i] for i in good], None if sources is None else [sources[i] for i in good],
            size=size, progress=progress).images
    elif sources is not None:
        raise ValueError("sources name the clean image of each file; pass file paths with them")
    else:
        chips[good] = face_priors.extract_face_chips(
            [cache.load_image(images[i]) if _is_path(images[i]) else
             cache.to_rgb_array(images[i]) for i in good], size)[0]
    return chips


def _aligned(images: Sequence[ImageLike], card: ModelCard, errors: list[str],
             device: str, progress: bool) -> np.ndarray:
    """MTCNN-aligned faces of the readable files (black where an item failed)."""
    good = [i for i, err in enumerate(errors) if not err]
    if any(not _is_path(images[i]) for i in good):
        raise TypeError(f"{card.name} was trained on MTCNN-aligned faces: pass file paths.")
    aligned = np.zeros((len(images), card.image_size, card.image_size, 3), dtype=np.uint8)
    if good:
        aligned[good] = faces.align_faces([str(images[i]) for i in good],
                                          image_size=card.image_size, device=str(device),
                                          progress=progress).images
    return aligned


def prepare_inputs(card: ModelCard, images: Sequence[ImageLike],
                   sources: Sequence[str | os.PathLike] | None = None, *,
                   with_faces: bool = False, with_identity: bool = False,
                   gallery: bool | Sequence[bool] = False,
                   image_cache: str = "", device: str = "cpu",
                   progress: bool = False) -> ModelInputs:
    """Turn paths, PIL images or RGB arrays into the inputs the card's model was trained on.

    Args:
        card: the checkpoint's model card.
        images: the items to prepare; an unreadable one gets an error string, never an
            exception.
        sources: per item, the clean image it was derived from, when known (data-set rows);
            only face chips use it, so a distorted copy without a face of its own gets its
            source's face as in training. None (new files): that copy gets the whole image.
        with_faces: also compute the card's face descriptors when it does not fuse them (the
            face rule of `common.predict.compare` needs them).
        with_identity: also compute the identity channel of the card's copy switch
            (`ModelInputs.identity`); the face descriptors only when it has no fine-tuned one.
        gallery: with `with_identity`, whether the items (all, or each) are gallery photos:
            a switch's whole-image share goes into every gallery photo and only into the
            queries whose face was not found (`fusion.carries_whole`).
        image_cache: for files of a whole-image card, read through the decoded-image cache in
            this mode (`cache.IMAGE_CACHES`); "" decodes item by item and writes nothing.
        device: where MTCNN runs for an ``aligned`` card, the identity channel and a probe's
            whole-image features.

    Raises:
        TypeError: an ``aligned`` card was given in-memory images (MTCNN reads files).
        PriorUnavailableError: the card needs a face model that is not installed.
    """
    decoded, errors = _decode(images, card, image_cache, progress)
    need_faces = bool(card.descriptor_weight or with_faces
                      or (with_identity and not card.identity_weights))
    originals = (_originals(images, decoded, errors)
                 if card.stream == "descriptor" or need_faces or with_identity
                 or card.kind == sface_net.KIND else None)
    if card.stream == "chips":
        model_images = _face_chips(images, errors, card.image_size, sources, progress)
    elif card.stream == "descriptor":  # failed rows: the placeholder's, unused
        model_images = probe_inputs(originals, card.descriptor_front_end, progress,
                                    card.model_kwargs.get("context_backbone", ""), device,
                                    _probe_tuned(card, device))
    elif card.kind == sface_net.KIND:  # a fine-tuned identity channel reads SFace's face crop
        model_images = sface_net.face_crops(originals, progress)[0]
    else:
        model_images = decoded
    found_faces = card_descriptors(card, originals, progress) if need_faces else None
    identity = identity_descriptors = identity_found = whole = is_gallery = None
    if with_identity:
        identity = (card_identity(card, originals, device, progress) if card.identity_weights
                    else face_descriptor.normalise(found_faces[0]))
        identity_found = (sface_net.face_crops(originals)[1]  # files: kept by content
                          if card.identity_weights else found_faces[1])
        switch = card.fitted_copy_switch
        if card.identity_weights and switch is not None and switch.descriptor_share:
            vectors, found = face_descriptor.describe_images(
                originals, switch.descriptor_front_end, progress)
            identity_descriptors = (face_descriptor.normalise(vectors), found)
        if card.glare_weights and switch is not None and switch.whole_share:
            is_gallery = np.broadcast_to(np.asarray(gallery, bool), (len(images),)).copy()
            whole = card_glare(card, originals, fusion.carries_whole(identity_found, is_gallery),
                               device, progress)
    return ModelInputs(
        model_images, errors,
        _aligned(images, card, errors, device, progress) if card.aligned else None,
        found_faces, identity, identity_descriptors, identity_found, whole, is_gallery)
