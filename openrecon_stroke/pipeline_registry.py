"""Names of the pipelines a config may select (kept import-light: the parameter definitions
need the names, the stages need numpy and more)."""

DEFAULT_PIPELINE = "openrecon-stroke"
#: Fixed registry of config names. A config name is only ever looked up here: it is never used
#: to import code or build a path.
#: ``headmask`` returns a foreground mask only: a quick geometry check for a new installation.
PIPELINE_NAMES = (DEFAULT_PIPELINE, "headmask", "passthrough")
