"""cryostack: from cryo-EM particle images to a refined atomic model."""

from cryostack.errors import InputError
from cryostack.io.maps import DensityMap, GridSpec, read_map, write_map
from cryostack.io.models import Structure, read_structure
from cryostack.io.sequences import FastaEntry, read_fasta

__version__ = "0.1.0"

__all__ = [
    "DensityMap",
    "FastaEntry",
    "GridSpec",
    "InputError",
    "Structure",
    "read_fasta",
    "read_map",
    "read_structure",
    "write_map",
]
