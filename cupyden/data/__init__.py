"""The embedded default: a 2048 x 2048 crop of a real K2 counting-mode micrograph.

See PROVENANCE.md beside this file.
"""

import json
import os

from ..io.mrc import read_mrc

HERE = os.path.dirname(os.path.abspath(__file__))
K2_CROP = os.path.join(HERE, "k2_crop.mrc.gz")


def k2_crop():
    """The embedded micrograph crop.

    Returns
    -------
    cupyden.io.mrc.Micrograph
        data (2048, 2048) uint16; pixel size 0.8538 Å/px; dose 47.6 e⁻/Å² (from the
        sidecar JSON, since the crop has no FEI extended header).
    """
    mic = read_mrc(K2_CROP, ndim=2)
    with open(os.path.join(HERE, "k2_crop.json")) as f:
        meta = json.load(f)
    return mic._replace(dose=meta["dose_e_per_A2"])
