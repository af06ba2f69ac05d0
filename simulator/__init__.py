"""The scanner simulator: synthetic studies (``phantom``), replay over MRD (``replay``) and
conversion of users' own DICOM/NIfTI studies to ISMRMRD (``convert``)."""
