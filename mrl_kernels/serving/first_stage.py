"""The FAISS first stages a :class:`~mrl_kernels.serving.NestedIndex` builds,
and their search parameters, checked before FAISS sees them: FAISS aborts the
process, crashes or loops forever on some factory strings and values it
accepts (``HNSW0`` fails an assertion in the graph build, ``HNSW1`` divides by
log(1) = 0 and segfaults, ``PQ<m>x0`` divides by zero, NSG's build can loop
forever attaching nodes when every candidate's degree is full, ``IVF0`` fails
only at search), and casts float parameters to int without a check (efSearch
1e30 searches nothing)."""
from __future__ import annotations

import re
from dataclasses import dataclass

from ..ops._checks import check_int

__all__ = ["FirstStage", "FORMS", "parse_first_stage"]

# HNSW's M: FAISS needs M >= 2 (HNSW::set_default_probas uses 1 / log(M)); its graph holds 2M
# neighbours an item at level 0, so a larger M only costs memory (512 ints an item at 256)
HNSW_M = (2, 256)
PQ_BITS = (1, 16)  # bits of a PQ code: 0 divides by zero in FAISS, 2^bits centroids a sub-quantizer
FORMS = ("Flat; HNSW<M> (M in [2, 256], HNSW alone is HNSW32); IVF<nlist>,<codes> with <codes> one of Flat, "
         "SQfp16, SQ8, PQ<m>[x<bits>] (m dividing the width, bits in [1, 16], default 8)")
PATTERN = re.compile(r"(?P<flat>Flat)|HNSW(?P<m>[0-9]*)|"
                     r"IVF(?P<nlist>[0-9]+),(?:(?P<codes>Flat|SQfp16|SQ8)|PQ(?P<pq>[0-9]+)(?:x(?P<bits>[0-9]+))?)")
# the search parameters each kind takes (FAISS ParameterSpace names)
PARAMETERS = {"Flat": (), "HNSW": ("efSearch",), "IVF": ("nprobe",)}


@dataclass(frozen=True)
class FirstStage:
    """A checked first stage: ``kind`` (Flat, HNSW or IVF), ``size`` (HNSW's M,
    an IVF's nlist; 0 for Flat) and the factory string FAISS builds it from."""

    text: str
    kind: str
    size: int

    def check_params(self, params: dict, n_items: int) -> dict[str, int]:
        """``params`` as ints, each a search parameter of this kind in its range:
        efSearch in [1, n_items], nprobe in [1, nlist] (a larger one searches no
        more); ValueError naming the one that is not."""
        checked = {}
        for name, value in params.items():
            if name not in PARAMETERS[self.kind]:
                takes = f"it takes {', '.join(PARAMETERS[self.kind])}" if PARAMETERS[self.kind] else "it takes none"
                raise ValueError(f"search parameter {name}={value!r} does not apply to a {self.text!r} first stage "
                                 f"({takes})")
            high, what = (self.size, "the index's nlist") if name == "nprobe" else (n_items, "the index's items")
            if check_int(name, value) > high:
                raise ValueError(f"{name} must be an int in [1, {high}] ({what}; a larger one searches no more), "
                                 f"got {value!r}")
            checked[name] = int(value)
        return checked


def parse_first_stage(text, width: int, n_items: int) -> FirstStage:
    """``text`` checked as one of :data:`FORMS` for an index of ``n_items``
    items at ``width``: ValueError listing the forms, or saying which number
    is out of range and why."""
    match = PATTERN.fullmatch(text) if isinstance(text, str) else None
    if match is None:
        raise ValueError(f"first_stage {text!r} is not a FAISS index_factory string of a supported form: {FORMS}")
    if match["flat"]:
        return FirstStage(text, "Flat", 0)
    if match["nlist"] is None:
        m = int(match["m"] or 32)
        if not HNSW_M[0] <= m <= HNSW_M[1]:
            raise ValueError(f"first_stage {text!r}: HNSW's M must lie in [{HNSW_M[0]}, {HNSW_M[1]}], got {m}")
        return FirstStage(text, "HNSW", m)
    nlist = int(match["nlist"])
    if nlist < 1:
        raise ValueError(f"first_stage {text!r}: IVF's nlist must be >= 1, got {nlist}")
    _trainable(text, n_items, nlist, "nlist")
    if match["pq"] is not None:
        m, bits = int(match["pq"]), int(match["bits"] or 8)
        if m < 1 or width % m:
            raise ValueError(f"first_stage {text!r}: PQ<m> needs m >= 1 dividing the width {width}, got {m}")
        if not PQ_BITS[0] <= bits <= PQ_BITS[1]:
            raise ValueError(f"first_stage {text!r}: PQ's bits must lie in [{PQ_BITS[0]}, {PQ_BITS[1]}], got {bits}")
        _trainable(text, n_items, 2 ** bits, f"2**bits = 2**{bits}")
    return FirstStage(text, "IVF", nlist)


def _trainable(text: str, n_items: int, clusters: int, what: str) -> None:
    if clusters > n_items:
        raise ValueError(f"first_stage {text!r} cannot be trained on the {n_items} items: its k-means makes "
                         f"{what} = {clusters} clusters, at least one item each")
