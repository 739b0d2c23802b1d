"""The whole-image network fine-tuned for identity through glare (`common.glare_identity`)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from common import glare_identity, identity_training, models, task_a, whole_image
from common.whole_image_tuning import TuneSettings


def _people(count: int, seed: int) -> tuple[np.ndarray, pd.DataFrame]:
    """`count` people, two photos each, every photo clean and under glare. A person is the colour
    and stripe period of the band at the top of the image (the "hair"); each photo has its own
    noise background and band height, and glare whitens a disc over the middle: only the band
    tells who it is, and the network must learn to read it."""
    rng = np.random.default_rng(seed)
    size = whole_image.SIZE
    yy, xx = np.mgrid[:size, :size]
    glare = ((yy - size * 0.6) ** 2 + (xx - size / 2) ** 2) < (size * 0.32) ** 2
    images, rows = [], []
    for person in range(count):
        colour, period = rng.integers(0, 256, size=3), rng.uniform(8, 40)
        for photo in range(2):
            image = rng.integers(0, 256, size=(size, size, 3)).astype(np.uint8) // 2
            band = xx[: int(size * rng.uniform(0.2, 0.3))]
            stripes = (np.sin(2 * np.pi * band / period) > 0)[..., None]
            image[: len(band)] = np.where(stripes, colour, 255 - colour)
            path = f"p{person}/{photo}.jpg"
            for distortion, picture in (("clean", image),
                                        (glare_identity.GLARE, np.where(glare[..., None], 250,
                                                                        image))):
                images.append(picture.astype(np.uint8))
                rows.append({"path": path if distortion == "clean" else f"{path}:{distortion}",
                             "identity": f"p{person}", "distortion": distortion,
                             "source": path})
    return np.stack(images), pd.DataFrame(rows)


def test_whole_image_network_learns_people_through_glare_and_keeps_its_best_dev_epoch():
    """Fine-tuned on 12 people, the network recognises unseen people's glare copies against
    their other photo (own photo removed; chance 1 of 8) far better than its ImageNet weights
    do, and it leaves the network of its best dev epoch."""
    train, train_frame = _people(12, 0)
    dev, dev_frame = _people(6, 1)
    test, test_frame = _people(8, 2)
    network, _ = models.create_backbone(task_a.PROBE_CONTEXT, pretrained="required")
    frozen = identity_training.dev_top1_hard(test_frame)(
        whole_image.mirror_features(network, test, "cpu"))
    history = glare_identity.fine_tune(network, train, train_frame["identity"].to_numpy(), dev,
                                       dev_frame, TuneSettings(lr=3e-4, epochs=3, batch_size=8))
    top1 = identity_training.dev_top1_hard(test_frame)(
        whole_image.mirror_features(network, test, "cpu"))
    assert top1 >= 0.75 and top1 >= frozen + 0.2
    best = max(row["dev_glare_top1_hard"] for row in history)
    assert len(history) == 3 and identity_training.dev_top1_hard(dev_frame)(
        whole_image.mirror_features(network, dev, "cpu")) == best


def test_identity_tuning_refuses_what_it_cannot_learn_from():
    images, frame = _people(2, 0)
    network, _ = models.create_backbone(task_a.PROBE_CONTEXT, pretrained="required")
    with pytest.raises(ValueError, match="at least two train identities"):
        glare_identity.fine_tune(network, images, np.zeros(len(images)), images, frame)
    clean = frame["distortion"].eq("clean").to_numpy()
    with pytest.raises(ValueError, match="no clean photos or no sunny copies"):
        glare_identity.fine_tune(network, images, frame["identity"].to_numpy(), images[clean],
                                 frame[clean])
