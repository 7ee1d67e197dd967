"""Fetch a recipe's model files (Hub at a pinned revision, or a local directory) and check sha256."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from encoderfile.errors import ResolveError
from encoderfile.recipe import COMMIT, GraphSpec, HubSource, Recipe
from encoderfile.runtime.manifest import ModelSource


@dataclass(frozen=True)
class ResolvedGraph:
    files: dict[str, Path]  # recipe key -> file on disk
    sha256: dict[str, str]  # recipe key -> actual sha256
    source: dict[str, str]  # hub repo + commit, or local path
    graph: Path

    @property
    def model_source(self) -> ModelSource:
        """What the manifest records about where the model came from."""
        return ModelSource.from_dict({**self.source, "files": self.sha256})


@dataclass(frozen=True)
class ResolvedModel(ResolvedGraph):
    tokenizer: Path


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def resolve(
    recipe: Recipe,
    *,
    allow_unpinned: bool = False,
    check_hashes: bool = True,
) -> ResolvedModel:
    """Locate every file the recipe lists and check it against its pin."""
    spec = recipe.model
    if spec is None:
        raise ResolveError(f"{recipe.path}: the recipe has no text model. Add 'model'.")
    files, actual, source = _resolve_files(spec, recipe.path, allow_unpinned, check_hashes)
    return ResolvedModel(
        files=files,
        sha256=actual,
        source=source,
        graph=files[spec.graph],
        tokenizer=files[spec.tokenizer],
    )


def resolve_image(
    recipe: Recipe,
    *,
    allow_unpinned: bool = False,
    check_hashes: bool = True,
) -> ResolvedGraph | None:
    """The recipe's image model files, checked like the text model's; None without one."""
    if recipe.image is None:
        return None
    spec = recipe.image.model
    files, actual, source = _resolve_files(
        spec, recipe.path, allow_unpinned, check_hashes, section="image.model"
    )
    return ResolvedGraph(files, actual, source, files[spec.graph])


def _resolve_files(
    spec: GraphSpec,
    recipe_path: Path,
    allow_unpinned: bool,
    check_hashes: bool,
    section: str = "model",
) -> tuple[dict[str, Path], dict[str, str], dict[str, str]]:
    if spec.hub is not None:
        files, source = _from_hub(spec.hub, recipe_path, allow_unpinned, section)
    else:
        assert spec.local is not None
        files, source = _from_local(spec.local.path, spec.local.files, recipe_path, section)
    actual = {key: sha256_file(path) for key, path in files.items()}
    if check_hashes:
        pins = spec.source.files
        for key, pin in pins.items():
            if pin is None and spec.hub is not None:
                raise ResolveError(
                    f"{recipe_path}: {key} has no sha256 pin. "
                    f"Run 'encoderfile pin {recipe_path}' to record it."
                )
            if pin is not None and pin != actual[key]:
                raise ResolveError(
                    f"{key} sha256 is {actual[key][:12]}…, the recipe pins {pin[:12]}…. "
                    f"If the new file is intended, run 'encoderfile pin {recipe_path}'."
                )
    return files, actual, source


def _from_local(
    path: str, wanted: dict[str, str | None], recipe_path: Path, section: str = "model"
) -> tuple[dict[str, Path], dict[str, str]]:
    root = Path(path) if Path(path).is_absolute() else recipe_path.parent / path
    if not root.is_dir():
        raise ResolveError(
            f"{recipe_path}: {section}.local.path {path!r} is not a directory ({root}). "
            "Fix the path (relative paths are relative to the recipe file)."
        )
    files = {}
    for key in wanted:
        file = root / key
        if not file.is_file():
            raise ResolveError(
                f"{recipe_path}: file {key!r} is missing from {root}. "
                f"Add it there or fix {section}.local.files."
            )
        files[key] = file
    return files, {"source": "local", "path": path}


def _from_hub(
    hub: HubSource, recipe_path: Path, allow_unpinned: bool, section: str = "model"
) -> tuple[dict[str, Path], dict[str, str]]:
    if not hub.pinned and not allow_unpinned:
        raise ResolveError(
            f"{recipe_path}: {section}.hub.revision {hub.revision!r} is not a 40-hex commit. "
            "Pin a commit for a reproducible build, or pass --allow-unpinned."
        )
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import (
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RemoteEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    files = {}
    for key in hub.files:
        try:
            files[key] = Path(hf_hub_download(hub.repo, key, revision=hub.revision))
        except LocalEntryNotFoundError as e:
            raise ResolveError(
                f"{hub.repo}@{hub.revision}: {key} is not in the local cache and the Hub is "
                "unreachable or offline mode is on. Connect once, or use a 'local' source."
            ) from e
        except RevisionNotFoundError as e:
            raise ResolveError(
                f"{recipe_path}: {hub.repo} has no revision {hub.revision}. "
                f"Fix {section}.hub.revision (a commit of the repo)."
            ) from e
        except RepositoryNotFoundError as e:
            raise ResolveError(
                f"{recipe_path}: the Hub has no repo {hub.repo} (or it needs a token: set HF_TOKEN). "
                f"Fix {section}.hub.repo."
            ) from e
        except RemoteEntryNotFoundError as e:
            raise ResolveError(
                f"{recipe_path}: {hub.repo}@{hub.revision} has no file {key}. "
                f"Fix {section}.hub.files."
            ) from e
        except (HfHubHTTPError, OSError) as e:
            reason = " ".join(str(e).split())  # one line
            raise ResolveError(
                f"{hub.repo}@{hub.revision}: downloading {key} failed ({reason}). "
                "Check the repo id, revision and file path, and your network."
            ) from e
    # Hub cache paths are .../snapshots/<commit>/<file>: the commit actually used.
    commit = next(iter(files.values())).parents[len(Path(next(iter(files))).parts) - 1].name
    revision = commit if COMMIT.match(commit) else hub.revision
    return files, {"source": "hub", "repo": hub.repo, "revision": revision}
