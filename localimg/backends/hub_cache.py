"""Finding a repo's snapshot in the local Hugging Face cache, as `hf download` leaves it, without the network."""

from __future__ import annotations

import re
from pathlib import Path

from huggingface_hub import constants as hf_constants

from localimg.errors import ModelUnavailableError

_COMMIT_PREFIX = re.compile(r"^[0-9a-f]{7,40}$")  # 7: as short as git and the Hub's pages show a commit


def cached_snapshot(owner: str, repo: str, revision: str) -> Path:
    """The snapshot folder of repo@revision: a ref (branch or tag), a commit, or the start of one. Which files it
    must hold is the caller's business: a download filtered with --include may be all a pipeline needs, though
    huggingface_hub (from 2.4) refuses it offline as incomplete. `owner` starts the error message ("model 'x'")."""
    # Read at call time, so HF_HUB_CACHE/HF_HOME (and tests patching the constant) are honoured.
    cache = Path(hf_constants.HF_HUB_CACHE).expanduser()
    entry = cache / f"models--{repo.replace('/', '--')}"
    ref = entry / "refs" / revision
    commit = ref.read_text().strip() if ref.is_file() else revision
    snapshots = entry / "snapshots"
    found = sorted(snapshots.iterdir()) if snapshots.is_dir() and _COMMIT_PREFIX.match(commit) else []
    matches = [snapshot for snapshot in found if snapshot.name.startswith(commit) and snapshot.is_dir()]
    if len(matches) == 1:
        return matches[0]
    if matches:
        raise ModelUnavailableError(
            f"{owner}: revision {revision!r} of {repo} is the start of several cached commits "
            f"({', '.join(match.name for match in matches)}); give more of the commit.",
            code="model_weights_missing",
        )
    raise ModelUnavailableError(
        f"{owner}: {repo}@{revision} is not in the Hugging Face cache at {cache}. On a connected machine run "
        f"`hf download {repo} --revision {revision}` and copy its cache folder (models--{repo.replace('/', '--')}) "
        f"into {cache}, or set HF_HUB_CACHE/HF_HOME to where it lives, or point source.path at a local folder.",
        code="model_weights_missing",
    )
