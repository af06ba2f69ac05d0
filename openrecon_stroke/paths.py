"""Where the shipped models live, for a source checkout and for an installed package alike.

``OPENRECON_MODELS_DIR`` (set in the container image to ``/opt/openrecon-stroke/models``) wins;
otherwise the repository's ``models/`` folder beside the package (a source or editable
install). Each model is a sub-folder: ``models_dir() / "hdbet"``, ``models_dir() / "lesion" / NAME``.
"""

from __future__ import annotations

import os
from pathlib import Path

#: ``models/`` of the source tree this package was imported from.
REPO_MODELS_DIR = Path(__file__).resolve().parents[1] / "models"


def models_dir() -> Path:
    """The folder holding every model sub-folder (read at call time, so tests may set the env)."""
    env = os.environ.get("OPENRECON_MODELS_DIR")
    return Path(env) if env else REPO_MODELS_DIR
