"""Training the classifier: SIPE with the official recipe (:mod:`.trainer`) and the plain-classifier
pretraining that stands in for ImageNet weights in the demo (:mod:`.pretrain`)."""

from sipe.train.trainer import SIPETrainConfig, SIPETrainSet, make_val_fn, sipe_step, train_sipe

__all__ = ["SIPETrainConfig", "SIPETrainSet", "make_val_fn", "sipe_step", "train_sipe"]
