"""The CCP4 monomer library: restraint dictionaries and gemmi topologies of a model.

Restraints come from gemmi's topology built with a complete copy of the CCP4 monomer library
(the one shipped in the ``coot-headless-api`` wheel: Debian's copy lacks ``mon_lib_list.cif``
and has broken entries; ``$CRYOSTACK_MONLIB`` points elsewhere). Residues without a dictionary
and atoms a dictionary lacks are returned so callers can report them, never scored against nothing.
"""

from __future__ import annotations

import os
import re
from functools import lru_cache
from pathlib import Path

import gemmi

from cryostack.errors import InputError
from cryostack.io.models import Structure


def monomer_library_dir() -> Path:
    """The complete CCP4 monomer library: ``$CRYOSTACK_MONLIB``, else the coot-headless-api copy."""
    env = os.environ.get("CRYOSTACK_MONLIB")
    if env:
        return Path(env)
    import coot_headless_api

    return Path(coot_headless_api.__file__).parent / "share" / "coot" / "lib" / "data" / "monomers"


@lru_cache(maxsize=8)
def monomer_library(names: tuple[str, ...]) -> gemmi.MonLib:
    """The dictionaries of residue ``names`` (sorted tuple; cached), missing ones ignored."""
    return gemmi.read_monomer_lib(str(monomer_library_dir()), list(names), ignore_missing=True)


def topology(
    structure: Structure,
    h_change: gemmi.HydrogenChange = gemmi.HydrogenChange.NoChange,
    automatic_links: bool = False,
) -> tuple[gemmi.Structure, gemmi.Topo, list[str]]:
    """gemmi topology of the first model: ``(prepared copy, topology, missing)``.

    ``missing`` lists residue names without a dictionary (left out of the copy) and
    ``chain/RESnum/atom`` of atoms their dictionary lacks (removed from the copy). ``h_change``
    is gemmi's: the default keeps the model's hydrogens as they are; ``ReAddButWater`` gives
    riding hydrogens from the dictionaries (electron-cloud X–H distances). A copy that was
    prepared once cannot be prepared again with other hydrogens (gemmi keeps the links it
    matched), so each setting starts from ``structure``. ``automatic_links`` adds the links
    that the file does not declare but the monomer library's link definitions find by distance
    (disulfides and glycosylation in AlphaFold models and refinement outputs without LINK records).
    """
    names = tuple(sorted(structure.model.get_all_residue_names()))
    monlib = monomer_library(names)
    missing = [n for n in names if n not in monlib.monomers]
    dropped: list[tuple[str, str, str]] = []  # (chain, seqid, atom name) the dictionary does not know
    # Link ids the file names with its partners in the other order (gemmi writes them so after
    # matching e.g. ASN ND2 → NAG C1 as pyr-ASN); cleared, gemmi matches them again either way.
    unnamed_links: set[str] = set()

    def prepared() -> gemmi.Structure:
        st = structure.gemmi.clone()
        st.setup_entities()
        if missing:
            # Score what has a dictionary; report the rest.
            for chain in st[0]:
                for i in reversed(range(len(chain))):
                    if chain[i].name in missing:
                        del chain[i]
            st.remove_empty_chains()
        for chain_name, seqid, atom_name in dropped:
            res = st[0][chain_name][seqid][0]
            for i in reversed([i for i, a in enumerate(res) if a.name == atom_name]):
                del res[i]
        for conn in st.connections:
            if conn.link_id in unnamed_links:
                conn.link_id = ""
        if automatic_links:
            try:
                gemmi.add_automatic_links(st[0], st, monlib)
            except (ValueError, MemoryError, RuntimeError):
                # gemmi's neighbour grid cannot span absurd coordinates (e.g. 1e6 Å); such a
                # model is judged without the undeclared links rather than not at all
                pass
        return st

    # Atoms the dictionary does not know (e.g. a methyl on a HIS) are reported and left out. A
    # failed prepare_topology can leave links and serials half set up, so each try starts afresh.
    for _ in range(1000):
        st = prepared()
        try:
            topo = gemmi.prepare_topology(
                st,
                monlib,
                model_index=0,
                h_change=h_change,
                reorder=False,
                warnings=None,
                ignore_unknown_links=True,
            )
            return st, topo, missing
        except RuntimeError as exc:
            link = re.match(r"link from the monomer library does not match: (\S+)", str(exc))
            if link and link.group(1) not in unnamed_links:
                unnamed_links.add(link.group(1))
                continue
            m = re.match(r"definition not found for (\S+)/(\S+) +(-?\d+)(\S?)/(\S+)", str(exc))
            if not m:  # a model gemmi cannot make a topology of: an input problem, said in one line
                raise InputError(structure.source or "model", f"no restraint topology ({exc})") from None
            chain, resname, num, icode, atom_name = m.groups()
            missing.append(f"{chain}/{resname}{num}{icode}/{atom_name}")
            dropped.append((chain, f"{num}{icode}", atom_name))
    raise InputError(structure.source or "model", "too many atoms without a monomer-library definition")


def atom_key(atom: gemmi.Atom) -> tuple:
    """Identity of an atom across gemmi's wrapper copies (topology atoms are fresh objects)."""
    # Topology atoms are copies of the structure's atoms, so their coordinates compare exactly.
    p = atom.pos
    return (atom.name, atom.altloc, p.x, p.y, p.z)
