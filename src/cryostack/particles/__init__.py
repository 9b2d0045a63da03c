"""Particle tools: simulated particle datasets with ground truth (``cryostack particles simulate``),
the particle encoder and CryoRanker scores (``particles embed``, ``particles rank``).

Python::

    from cryostack.io.models import read_structure
    from cryostack.particles import SimulationConfig, simulate_particles, source_from_structure

    config = SimulationConfig(n_particles=10_000, box_px=128, pixel_size_A=1.4, snr=0.05, junk_fraction=0.3)
    source = source_from_structure(read_structure("model.cif"), config.pixel_size_A, config.effective_resolution_A,
                                   name="model")
    result = simulate_particles(config, [source], "sim_particles/", seed=0)

    from cryostack.particles import rank_particles
    rank_particles("picked.star", "ranked.star")   # the shipped ranker; score and rank columns

Conventions, junk types and the SNR definition: ``docs/particles.md``; the encoder and ranker:
``docs/particles_rank.md``.
"""

from cryostack.particles.featurize import FeatureSpec, featurize
from cryostack.particles.junk import JUNK_TYPES
from cryostack.particles.rank import embed_particles, rank_particles
from cryostack.particles.simulate import (
    JUNK_QUALITY,
    TRUTH_COLUMNS,
    MicrographBatch,
    ParticleSimulator,
    SimulationConfig,
    SimulationResult,
    assign_labels,
    simulate_particles,
)
from cryostack.particles.sources import (
    ParticleSource,
    corpus_sources,
    source_from_atoms,
    source_from_map,
    source_from_structure,
)

__all__ = [
    "FeatureSpec",
    "JUNK_QUALITY",
    "JUNK_TYPES",
    "TRUTH_COLUMNS",
    "MicrographBatch",
    "ParticleSimulator",
    "ParticleSource",
    "SimulationConfig",
    "SimulationResult",
    "assign_labels",
    "corpus_sources",
    "embed_particles",
    "featurize",
    "rank_particles",
    "simulate_particles",
    "source_from_atoms",
    "source_from_map",
    "source_from_structure",
]
