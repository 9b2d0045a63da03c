"""Readers and writers: maps (MRC/CCP4), models (PDB/mmCIF via gemmi), sequences (FASTA)."""
