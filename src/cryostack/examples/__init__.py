"""Small example data bundled with cryostack (see each folder's README for source and licence)."""

from pathlib import Path

EXAMPLES = Path(__file__).parent
SPIKE_NTD_MAP = EXAMPLES / "spike_ntd" / "emd_21457_seg.mrc"
SPIKE_NTD_MODEL = EXAMPLES / "spike_ntd" / "6vyb_Ndom.pdb"
SPIKE_NTD_RESOLUTION_A = 3.2
