"""Synthetic heads with chronic stroke lesions: labels, lesions, MR contrasts and scan planning.

A library of seeded, reusable functions (the ``phantom`` command is a thin wrapper round it),
meant also for making training and test data for lesion segmentation and anomaly models. One
module per concern; this package exports their public names:

* :mod:`.labels`: tissue labels, masks, random fields, voxel coordinates, hemispheres;
* :mod:`.heads`: MNI and SynthSeg / FreeSurfer heads as label maps;
* :mod:`.lesions`: stroke lesions and other abnormalities;
* :mod:`.contrast`: T1-w and FLAIR synthesis;
* :mod:`.acquisition`: scan planning and resampling.

Conventions (as in :mod:`openrecon_stroke.geometry`):

* Images are SimpleITK images in **LPS** millimetres (x towards the patient's Left, y Posterior,
  z Superior); numpy arrays taken from them are ``(nz, ny, nx)``.
* Heads from :func:`load_head` are 1 mm isotropic int16 label maps with identity direction.
* Every random choice draws from a ``numpy.random.Generator`` passed in by the caller: the same
  generator state gives byte-identical results.

Tissue labels (:class:`Tissue`)::

    0 BACKGROUND (air)          8 EXTRA_CSF (subarachnoid CSF)   14 SPINAL_CORD
    1 CSF (ventricles)          9 SKIN (scalp, skin)             20 LESION_CORE (chronic cavity)
    2 GM (cerebral cortex)     10 FAT (subcutaneous, orbital,    21 LESION_RIM (gliotic rim)
    3 WM (cerebral)                diploe and marrow)
    4 DEEP_GM (basal ganglia,  11 SKULL (cortical bone)
       thalamus, hippocampus)  12 MUSCLE (muscle and other soft
    5 CEREBELLUM_GM                tissue, vessels, nerves)
    6 CEREBELLUM_WM            13 EYES (vitreous)
    7 BRAINSTEM

The brain (what a brain mask should contain) is labels 1-7 plus the lesion labels 20 and 21;
the spinal cord (14) is not brain. Lesions are placed in the parenchyma only (labels 2-7).
"""

from __future__ import annotations

from .acquisition import (  # noqa: F401
    OBLIQUE_TILT_DEG,
    ORIENTATIONS,
    acquisition_grid,
    orientation_direction,
    resample,
)
from .contrast import (  # noqa: F401
    CONTRAST_MEANS,
    FLAIR_PERIVENTRICULAR,
    REFERENCE_TISSUE,
    TEXTURE,
    add_rician_noise,
    bias_field,
    contrast_parameters,
    synthesize,
)
from .heads import (  # noqa: F401
    FREESURFER_TO_TISSUE,
    is_mni,
    load_head,
    load_hemispheres,
    map_freesurfer_labels,
    mni_template_dir,
)
from .labels import (  # noqa: F401
    BRAIN_LABELS,
    CEREBRAL_LABELS,
    HEMISPHERE_NAMES,
    INTRACRANIAL_LABELS,
    LEFT,
    LESION_KINDS,
    LESION_LABELS,
    N_LABELS,
    PARENCHYMA_LABELS,
    RIGHT,
    Tissue,
    brain_mask,
    hemisphere_split,
    intracranial_mask,
    isin_labels,
    lps_axis_coords,
    lps_coords,
    rotation_deg,
    signed_distance,
    smooth_field,
)
from .lesions import (  # noqa: F401
    ABNORMALITIES,
    add_abnormality,
    enlarge_ventricles,
    insert_lesions,
)
