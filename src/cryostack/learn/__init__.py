"""Training infrastructure shared by every learned tool.

* :mod:`.loop` — one training loop: warm-up + cosine schedule, gradient clipping, sampling seeded
  by (seed, step), resume, wall-time budget, history, optional ``torchrun``/DDP
* :mod:`.checkpoint` — one checkpoint format (weights, config, provenance) and its loader
* :mod:`.registry` — the packaged checkpoints (name, file, sha256, model card)
* :mod:`.provenance` — git commit, machine and data hashes written into checkpoints and cards

A tool supplies a :class:`~cryostack.learn.loop.TrainTask` (its data sampler, model and loss);
everything else is here.
"""
