"""``cryostack particles simulate``: a simulated particle dataset with ground truth (RELION + cryoSPARC)."""

from __future__ import annotations

from pathlib import Path

import typer


def _weights(text: str | None) -> tuple[tuple[str, float], ...]:
    from cryostack.errors import InputError

    if not text:
        return ()
    out = []
    for part in text.split(","):
        name, sep, value = part.partition("=")
        try:
            out.append((name.strip(), float(value)))
        except ValueError:
            raise InputError(None, f"junk weights must look like 'fragment=2,carbon_edge=1', got {text!r}") from None
        if not sep:
            raise InputError(None, f"junk weights must look like 'fragment=2,carbon_edge=1', got {text!r}")
    return tuple(out)


def simulate(
    out: Path = typer.Option(
        ..., "--out", help="Output folder (particles.star, .mrcs stacks, particles.cs, manifest)."
    ),
    model: Path | None = typer.Option(None, "--model", help="Source structure (PDB/mmCIF)."),
    map_path: Path | None = typer.Option(None, "--map", help="Source map (MRC); resampled to the pixel size in Å."),
    corpus: Path | None = typer.Option(None, "--corpus", help="Corpus folder: draw source chains from it."),
    corpus_chains: int = typer.Option(10, "--corpus-chains", help="Number of corpus chains (with --corpus)."),
    split: str = typer.Option("train", "--split", help="Corpus split (train or val)."),
    decoy: list[Path] = typer.Option(
        [], "--decoy", help="Other structures shown only as wrong-size junk (repeatable)."
    ),
    n: int = typer.Option(1000, "--n", help="Number of particle images."),
    box: int = typer.Option(128, "--box", help="Box edge in pixels (even)."),
    pixel_size: float = typer.Option(1.4, "--pixel-size", help="Pixel size in Å."),
    resolution: float | None = typer.Option(
        None, "--resolution", help="Source resolution blur in Å (default 2 × pixel)."
    ),
    snr: float = typer.Option(0.05, "--snr", help="Signal-to-noise ratio (see docs/particles.md; inf: no noise)."),
    junk: float = typer.Option(0.0, "--junk", help="Fraction of junk images (0-1)."),
    junk_weights: str | None = typer.Option(
        None, "--junk-weights", help="Relative junk type weights, e.g. 'fragment=2,carbon_edge=1'."
    ),
    preferred_orientation: bool = typer.Option(
        False, "--preferred-orientation", help="A few strong views plus a sparse uniform remainder."
    ),
    preferred_views: int = typer.Option(3, "--preferred-views", help="Number of dominant views."),
    defocus_range: tuple[float, float] = typer.Option(
        (8000.0, 25000.0), "--defocus-range", help="Defocus range in Å (underfocus positive)."
    ),
    astigmatism_range: tuple[float, float] = typer.Option(
        (0.0, 1000.0), "--astigmatism-range", help="Range of |U - V| in Å."
    ),
    b_factor_range: tuple[float, float] = typer.Option(
        (20.0, 120.0), "--b-factor-range", help="CTF B-factor envelope range in Å²."
    ),
    voltage: list[float] = typer.Option(
        [300.0], "--voltage", help="Voltage in kV (repeat for a choice per micrograph)."
    ),
    cs: list[float] = typer.Option([2.7], "--cs", help="Spherical aberration in mm (repeatable)."),
    amplitude_contrast: list[float] = typer.Option(
        [0.1], "--amplitude-contrast", help="Amplitude contrast fraction (repeatable)."
    ),
    shift_sd: float = typer.Option(3.0, "--shift-sd", help="SD of the centring error of good particles in Å."),
    per_micrograph: int = typer.Option(200, "--per-micrograph", help="Particles per micrograph (CTF group)."),
    ctf_padding: float = typer.Option(
        1.0, "--ctf-padding", help="Apply the CTF on a canvas this much larger than the box (1-3)."
    ),
    seed: int = typer.Option(0, "--seed", help="Random seed (the dataset is deterministic given it)."),
    device: str = typer.Option("cpu", "--device", help="cpu, cuda or cuda:N."),
    workers: int = typer.Option(1, "--workers", help="Worker processes of one thread each (CPU; same output)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a dataset already in --out."),
    no_cs: bool = typer.Option(False, "--no-cs", help="Do not write particles.cs."),
    no_progress: bool = typer.Option(False, "--no-progress", help="No progress bar."),
) -> None:
    """Simulate particle images (good and labelled junk) from a structure or map, with every truth recorded."""
    from cryostack.cli.options import check_device
    from cryostack.errors import InputError
    from cryostack.particles.simulate import SimulationConfig, check_output_folder, simulate_particles

    given = [x is not None for x in (model, map_path, corpus)]
    if sum(given) != 1:
        raise InputError(None, "give exactly one source: --model, --map or --corpus")
    config = SimulationConfig(
        n_particles=n,
        box_px=box,
        pixel_size_A=pixel_size,
        resolution_A=resolution,
        snr=snr,
        junk_fraction=junk,
        junk_weights=_weights(junk_weights),
        particles_per_micrograph=per_micrograph,
        defocus_range_A=(float(defocus_range[0]), float(defocus_range[1])),
        astigmatism_range_A=(float(astigmatism_range[0]), float(astigmatism_range[1])),
        b_factor_range_A2=(float(b_factor_range[0]), float(b_factor_range[1])),
        voltage_kV=tuple(voltage),
        cs_mm=tuple(cs),
        amplitude_contrast=tuple(amplitude_contrast),
        shift_sigma_A=shift_sd,
        orientation="preferred" if preferred_orientation else "uniform",
        preferred_views=preferred_views,
        ctf_padding=ctf_padding,
        device=check_device(device),
    )
    config.validate()
    if corpus is not None and not (1 <= corpus_chains <= 10_000):
        raise InputError(None, f"corpus_chains must be 1 to 10000, got {corpus_chains}")
    if not (1 <= workers <= 256):
        raise InputError(None, f"workers must be 1 to 256, got {workers}")
    if split not in ("train", "val"):
        raise InputError(None, f"split must be train or val (the test split is held out), got {split!r}")
    check_output_folder(out, overwrite)
    for p in (model, map_path, *decoy):
        if p is not None and not Path(p).is_file():
            raise InputError(p, "file not found" if not Path(p).exists() else "not a regular file")

    sources, protect, description = _load_sources(config, model, map_path, corpus, corpus_chains, split, seed)
    decoys = _load_decoys(config, decoy)
    result = simulate_particles(
        config,
        sources,
        out,
        seed=seed,
        decoys=decoys,
        overwrite=overwrite,
        progress=not no_progress,
        protect=(*protect, *decoy),
        write_cs=not no_cs,
        source_description=description,
        workers=workers,
    )
    counts = ", ".join(f"{k} {v}" for k, v in result.counts.items() if v)
    typer.echo(
        f"wrote {result.star_path}: {result.n_particles} particles ({counts}) in {result.seconds:.1f} s "
        f"({result.particles_per_second:.0f}/s); box {box} px at {pixel_size} Å"
    )


def _load_sources(config, model, map_path, corpus, corpus_chains, split, seed):
    from cryostack.particles.sources import corpus_sources, source_from_map, source_from_structure

    res = config.effective_resolution_A
    if model is not None:
        from cryostack.io.models import read_structure

        return (
            [source_from_structure(read_structure(model), config.pixel_size_A, res, name=Path(model).stem)],
            (model,),
            {"model": str(model)},
        )
    if map_path is not None:
        from cryostack.io.maps import read_map

        return (
            [
                source_from_map(
                    read_map(map_path), config.pixel_size_A, name=Path(map_path).stem, resolution_A=config.resolution_A
                )
            ],
            (map_path,),
            {"map": str(map_path)},
        )
    from cryostack.data.corpus import Corpus

    max_radius = 0.45 * config.box_px * config.pixel_size_A
    sources = corpus_sources(
        Corpus(corpus), split, corpus_chains, config.pixel_size_A, res, seed=seed, max_radius_A=max_radius
    )
    return sources, (), {"corpus": str(corpus), "split": split, "chains": [s.name for s in sources]}


def _load_decoys(config, paths):
    from cryostack.io.models import read_structure
    from cryostack.particles.sources import source_from_structure

    return [
        source_from_structure(read_structure(p), config.pixel_size_A, config.effective_resolution_A, name=Path(p).stem)
        for p in paths
    ]
