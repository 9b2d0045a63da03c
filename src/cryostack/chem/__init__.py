"""Reference chemistry every layer above consults: what residues and atoms are, and how they should look.

* :mod:`.residues` — the residue/atom vocabulary with aliases (one for every tool)
* :mod:`.conformers` — altloc conformers, peptide links and torsions read off a gemmi model
* :mod:`.monlib` — the CCP4 monomer library and gemmi topologies
* :mod:`.contacts` — van der Waals radii and clash rules
* :mod:`.cbeta` — ideal Cβ construction
* :mod:`.ramachandran`, :mod:`.rotamers` — MolProbity Top8000 reference tables and their scoring

Nothing here judges a model: the validators in :mod:`cryostack.validate` and the restraints in
:mod:`cryostack.geometry` both read from this layer, so they agree by construction.
"""
