"""IS-CAM (and CAM) maps: multi-scale inference for one image (:mod:`.multiscale`), generation over a
dataset (:mod:`.generate`), the per-image file format every later stage reads (:mod:`.format`), and
masks for image files from known labels (:mod:`.predict`)."""
