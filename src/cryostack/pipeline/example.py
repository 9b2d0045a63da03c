"""The bundled end-to-end example: simulated particles (with junk) of the spike NTD, its sequence
and a perturbed starting model, run through every stage of ``cryostack run``.

The structure (PDB 6VYB, chain A N-terminal domain) is not in the training corpus, so the ranker
has never seen it. Everything is made from the bundled model with a fixed seed; the settings are
chosen so the whole chain runs on two CPU cores in minutes, not to reach high resolution
(:data:`EXAMPLE_TOML`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cryostack.examples import SPIKE_NTD_MODEL
from cryostack.io.atomic import atomic_output
from cryostack.pipeline.demo import NOISE_A, SHIFT_A  # the start model is perturbed as in `cryostack demo`
from cryostack.pipeline.run import RunInputs

#: Particle images of the example: few and small, at a noise level a good data set would have.
N_PARTICLES = 800
BOX_PX = 48
PIXEL_A = 3.0
SNR = 0.1
JUNK_FRACTION = 0.25

#: Settings of the example run (printed back in its report).
EXAMPLE_TOML = """\
# cryostack run: settings of the bundled example (see docs/pipeline.md for every key).
# Cut so the whole chain runs in well under half an hour on 2 CPU cores; a real data set
# would keep the defaults.
[wizard]
initial_sizes = [400]     # one stage-2 subset (of 800 particles) instead of two
min_subset = 100
n_parts = 2               # stage 3: the top half and all of the kept particles
mask_diameter_A = 100.0   # the NTD is about 60 Å across, in a 144 Å box

[wizard.search]           # initial model: 4/12/4 SGD iterations instead of 10/40/10;
initial_iterations = [4, 12, 4]   # auto-refine from 7.5° (measured 25.5 min for the whole
initial_subsets = [50, 150]       # example; from the default 15° it took over 30 min here)
healpix_order = 2
local_healpix_order = 4
offset_range_px = 5.0

[wizard.final]            # final refinement from 15° (local 3.75°) instead of 7.5° (local 0.9°),
healpix_order = 1         # offsets in 2 px steps instead of 1 px
local_healpix_order = 3
offset_step_px = 2.0

[refine]
max_recycles = 4
"""


@dataclass
class Example:
    folder: Path
    inputs: RunInputs
    config: Path


def make_example(folder: str | Path, *, seed: int = 1, progress: bool = False) -> Example:
    """Write the example's particles, sequence, starting model and config into ``folder`` (kept
    when already there, so a rerun resumes the same run)."""
    from cryostack.io.models import read_structure
    from cryostack.particles.simulate import SimulationConfig, simulate_particles
    from cryostack.particles.sources import source_from_structure
    from cryostack.refine.perturb import perturb_model

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    sim = folder / "particles"
    deposited = read_structure(SPIKE_NTD_MODEL)
    if not (sim / "particles.star").is_file():
        config = SimulationConfig(
            n_particles=N_PARTICLES, box_px=BOX_PX, pixel_size_A=PIXEL_A, snr=SNR, junk_fraction=JUNK_FRACTION
        )
        source = source_from_structure(deposited, PIXEL_A, config.effective_resolution_A, name="6vyb_ntd")
        simulate_particles(config, [source], sim, seed=seed, progress=progress, write_cs=False, overwrite=True)
    model = folder / "start_model.cif"
    if not model.is_file():
        perturb_model(deposited, NOISE_A, SHIFT_A, seed=seed).write(model)
    fasta = folder / "sequence.fasta"
    if not fasta.is_file():
        (chain, seq), *_ = deposited.sequences().items()
        with atomic_output(fasta) as tmp:
            tmp.write_text(f">6VYB_{chain} spike glycoprotein N-terminal domain, chain {chain}\n{seq}\n")
    config_path = folder / "example.toml"
    if not config_path.is_file():
        with atomic_output(config_path) as tmp:
            tmp.write_text(EXAMPLE_TOML)
    inputs = RunInputs(particles=sim / "particles.star", sequence=fasta, model=model)
    return Example(folder, inputs, config_path)
