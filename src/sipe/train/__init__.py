"""Training the classifier: SIPE with the official recipe (:mod:`.trainer`) and the plain-classifier
pretraining that stands in for ImageNet weights in the demo (:mod:`.pretrain`).

The exports load lazily: the configuration (:mod:`sipe.config.train`) and the training data
(:mod:`.inputs`) are torch-free, so ``sipe train`` reports config and dataset errors before torch loads.
"""

from sipe._lazy import lazy_exports

_EXPORTS = {
    "PretrainConfig": "sipe.config.train",
    "SIPETrainConfig": "sipe.config.train",
    "training_data": "inputs",
    **dict.fromkeys(("SIPETrainSet", "make_val_fn", "sipe_step", "train_sipe"), "trainer"),
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
__all__ = sorted(_EXPORTS)
