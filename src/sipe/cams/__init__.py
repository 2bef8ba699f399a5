"""IS-CAM (and CAM) maps: multi-scale inference for one image (:mod:`.multiscale`), generation over a
dataset (:mod:`.generate`) and masks for image files from known labels (:mod:`.predict`). The
per-image file format every later stage reads lives in the data layer (:mod:`sipe.data.cam_format`)."""
