"""The SIPE method itself, parity-locked to the official code: IPE (:mod:`.ipe`), the losses
(:mod:`.losses`) and the SIPE network head (:mod:`.sipe_net`)."""
