"""The registry: which stages each pipeline runs, in order (kept import-light: the parameter
definitions need the names, the stages need numpy and more).

A stage is named ``"module.Class"`` under :mod:`openrecon_stroke.stages`; adding one is one
file there plus one line here (see :mod:`openrecon_stroke.stages.base`).
"""

DEFAULT_PIPELINE = "openrecon-stroke"

#: Fixed registry of config names -> stages. A config name is only ever looked up here: it is
#: never used to import code or build a path.
#: ``headmask`` returns a foreground mask only: a quick geometry check for a new installation.
PIPELINES: dict[str, tuple[str, ...]] = {
    DEFAULT_PIPELINE: (
        "basic.InputCheck",
        "brain.Preprocess",
        "template.TemplateRegistrationStage",
        "lesion.LesionSegmentation",
        "anomaly.AnomalyDetection",  # alongside the lesion stage (it declares overlaps)
        "anomaly.AnomalyLoadSplit",
        "report.Overlay",
        "report.ReportPage",
    ),
    "headmask": ("basic.InputCheck", "basic.HeadMask"),
    "passthrough": (),
}

PIPELINE_NAMES = tuple(PIPELINES)
