"""Do the lesion masks and anomaly maps the server returns find the phantom's true lesions?

Each model the pipeline can pick gets checked on the grid it answers on, with the truth masks
of the phantom (``studies.PHANTOM_ARGS``: two subcortical lesions, 2.7 and 3.3 mL). The floors
are the shipped models' measured figures with a margin (the models are experimental and weak:
they find both lesions but mark many times their volume); a better model should raise them.
``test_detection_checks_bite`` runs the same checks on an empty mask and map and sees them fail.
"""

from __future__ import annotations

import numpy as np
import pytest

from detection import SHIPPED_ANOMALY, SHIPPED_LESION, AnomalyFloors, LesionFloors, check_anomaly, check_lesions

pytestmark = pytest.mark.slow

def _check_connection(served, name, contrast):
    c = served.connections[name]
    lesion = c.volume("LESION")
    truth = served.truth(contrast)
    voxel_ml = float(np.prod(lesion.grid.spacing)) / 1000
    figures = check_lesions(truth, lesion.data, voxel_ml, SHIPPED_LESION, what=f"{name} connection LESION")
    anomaly = c.volume("ANOMALY")
    check_anomaly(truth, anomaly.data / 1000.0, served.truth(contrast, "brain"), anomaly.grid.spacing[::-1],
                  SHIPPED_ANOMALY, what=f"{name} connection ANOMALY")
    return figures


def test_t1_model_and_fusion_on_flair_find_the_lesions(served_t1_first):
    _check_connection(served_t1_first, "t1", "t1")
    _check_connection(served_t1_first, "flair", "flair")


def test_flair_model_and_fusion_on_t1_find_the_lesions(served_flair_first):
    _check_connection(served_flair_first, "flair", "flair")
    _check_connection(served_flair_first, "t1", "t1")


def test_detection_checks_bite(stroke_phantom):
    """The checks above fail on an all-zero mask and map, and on a mask of the whole brain; they
    pass on the truth itself (so the floors can be met)."""
    from studies import Served

    served = Served(stroke_phantom, {})
    truth, brain = served.truth("t1"), served.truth("t1", "brain")
    spacing = (1.0, 1.0, 1.0)  # the phantom's T1-w is 1 mm isotropic
    voxel_ml = 1e-3
    empty = np.zeros(truth.shape, np.uint8)
    with pytest.raises(AssertionError, match="recall 0.000"):
        check_lesions(truth, empty, voxel_ml, SHIPPED_LESION)
    with pytest.raises(AssertionError, match=r"predicted .* mL > 2.0 x true"):
        check_lesions(truth, brain, voxel_ml, SHIPPED_LESION)
    with pytest.raises(AssertionError, match="mean score in the true lesions 0 "):
        check_anomaly(truth, empty.astype(np.float32), brain, spacing, SHIPPED_ANOMALY)
    with pytest.raises(AssertionError, match="ratio 1,"):  # a flat map does not rank the lesions
        check_anomaly(truth, np.where(brain, 0.5, 0.0), brain, spacing, SHIPPED_ANOMALY)
    f = check_lesions(truth, truth, voxel_ml, SHIPPED_LESION)
    assert f["recall"] == 1.0 and f["dice"] == 1.0 and f["n_true"] == 2
    assert check_anomaly(truth, truth.astype(np.float32) + 0.1, brain, spacing, SHIPPED_ANOMALY)["ratio"] > 10
    with pytest.raises(ValueError, match="empty mask must fail"):
        LesionFloors(recall=0.0, dice=0.1, max_volume_ratio=10, source="x")
    with pytest.raises(ValueError, match="source"):
        AnomalyFloors(ratio=1.2, remote_mm=10, source="")
