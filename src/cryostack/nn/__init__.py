"""Network building blocks shared by the learned tools (pure ``torch.nn``; no data, no files).

* :mod:`.edm` — EDM preconditioning of a denoiser (Karras et al. 2022) and its loss weight
* :mod:`.graph` — k-nearest-neighbour edges over coordinates in Å
* :mod:`.layers` — small MLPs and the Gaussian radial basis over distances in Å
* :mod:`.attention` — pre-norm self- and cross-attention blocks (sequence, map-patch, particle tokens)
"""
