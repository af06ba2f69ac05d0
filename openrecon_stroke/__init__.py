"""openrecon-stroke: a scanner-side inline stroke MRI plugin speaking MRD (ISMRMRD v1).

Data flows one way: stream (``protocol``) -> volumes (``geometry``, ``kspace``) ->
stages (``pipeline``, ``stages``) -> outputs (``outputs``) -> stream.
"""

__version__ = "0.1.0"
APP_NAME = "openrecon-stroke"
