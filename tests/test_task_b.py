"""common.task_b: the Siamese pair recipe (incl. hard negatives) and the FaceNet stage-2 path."""
from __future__ import annotations

import numpy as np
import pytest

from common import experiment, models, task_b


@pytest.fixture(scope="module")
def setup(tmp_path_factory, sample_root):
    tmp = tmp_path_factory.mktemp("task_b")
    cfg = experiment.ExperimentConfig.resolve(
        "03_task_b_siamese", task_b.SIAMESE_BACKBONES, task_b.EPOCHS, data_dir=str(sample_root),
        output_dir=str(tmp / "run"), weights_dir=str(tmp / "weights"), quick=True, epochs=2,
        image_size=48, seed=0, dev_fraction=0.3)
    return cfg, task_b.prepare_data(cfg)


def test_siamese_pairs_with_hard_negatives_train_and_embed(setup):
    cfg, task_data = setup
    model = models.create_model("siamese", backbone_name="resnet10t", pretrained=False)
    result = task_b.train_pairs(model, task_data, cfg, "siamese_hard", epochs=2, lr=1e-3,
                                pairs_per_epoch=64, hard_negatives=True, monitor="pair_accuracy")
    assert len(result.history) == 2 and np.isfinite(result.history[-1]["train_loss"])
    embeddings = task_b.embed(model, task_data.images["eval"], cfg.image_size,
                              model.data_config["mean"], model.data_config["std"])
    assert embeddings.shape == (len(task_data.splits.eval), 128)
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-5)


def test_backbone_for_and_embedders(setup):
    cfg, _ = setup
    assert task_b.backbone_for("facenet", "x") == "inception_resnet_v1"
    assert task_b.backbone_for("efficientfr", "x") == "efficientfr"
    assert task_b.backbone_for("embedding", "convnext_atto") == "convnext_atto"
    with pytest.raises(ValueError, match="embedding, facenet or efficientfr"):
        task_b.backbone_for("resnet", "x")
    cfg.pretrained = False
    embedder = task_b.create_embedder("efficientfr", cfg)
    assert embedder.embedding_dim == 512 and not embedder.weights_source.pretrained
