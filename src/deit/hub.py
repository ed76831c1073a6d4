"""Weights by name: `hf-hub:ORG/NAME[@REVISION]` (a transformers DeiT/ViT repo, a timm repo, or a run of ours on
the Hugging Face hub) and `timm:NAME[.TAG]` (timm's pretrained weights, found through its pretrained_cfg's
hf_hub_id), resolved through huggingface_hub and its cache (HF_HOME, HF_HUB_CACHE, HF_HUB_OFFLINE) into a local
snapshot folder that the existing readers (deit.checkpoint, deit.finetune, deit.teacher) take as a directory.

Only what a name asks for is fetched: its config.json, then its weights (model.safetensors, else
pytorch_model.bin). With HF_HUB_OFFLINE set nothing is fetched at all. Every failure is one ValueError line:
a name or revision not in the cache (with the command that fetches it), a repo the hub does not have, a repo
whose config.json is no DeiT/ViT or timm model (checked before its weights are fetched).

Where a weights source is expected (--finetune, --teacher without --teacher-weights, --teacher-weights),
`timm:NAME` means timm's pretrained weights of NAME; where an architecture is expected (--model), it stays
the architecture without weights (deit.models.registry).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Optional

HUB_PREFIX = "hf-hub:"
TIMM_PREFIX = "timm:"
WEIGHTS_NAMES = ("model.safetensors", "pytorch_model.bin")  # as deit.checkpoint.HF_WEIGHTS_NAMES, in its order


def is_hub_source(text) -> bool:
    """A weights source named on the hub (hf-hub:ORG/NAME, timm:NAME) rather than a local path."""
    return isinstance(text, str) and text.startswith((HUB_PREFIX, TIMM_PREFIX))


@dataclass(frozen=True)
class HubWeights:
    """What a name resolved to: the snapshot folder the readers take, and its provenance for config.json."""

    source: str  # as given
    repo: str
    revision: str  # as asked: a branch, a tag or a commit
    commit: str
    directory: Path  # the cached snapshot: config.json and the weights file
    file: str
    sha256: str

    @property
    def path(self) -> Path:
        """What the readers take: the snapshot folder (config.json beside the weights), or a weights file of
        another name (a timm pretrained_cfg's hf_hub_filename) alone."""
        return self.directory if self.file in WEIGHTS_NAMES else self.directory / self.file

    def record(self) -> dict:
        return {"source": self.source, "repo": self.repo, "revision": self.revision, "commit": self.commit,
                "file": self.file, "sha256": self.sha256}



def fetch_beside(hub: HubWeights, filename: str) -> Optional[Path]:
    """Another file of the commit a name resolved to (an HF repo's preprocessor_config.json), through the same cache
    and offline switch; None when the repo does not have it."""
    return _fetch(hub.source, hub.repo, hub.commit, filename)


def describe(record: dict) -> str:
    """One line for a resolved name's record (HubWeights.record)."""
    return (f"{record['source']} -> {record['repo']}@{record['revision']} (commit {record['commit']}), "
            f"{record['file']}, sha256 {record['sha256']}")


def local_source(text) -> tuple[Path, Optional[HubWeights]]:
    """The local path a source names: a hub name resolved (with what it resolved to), any other text as a path."""
    if is_hub_source(text):
        hub = resolve(text)
        return hub.path, hub
    return Path(text), None


def resolve(text: str) -> HubWeights:
    """Resolve a hub name into the cache (fetching it only when it is missing and the hub may be reached)."""
    from huggingface_hub import constants

    # The cache and the offline switch are keys: a process that changes them gets a fresh resolution.
    return _resolve(text, constants.HF_HUB_CACHE, constants.HF_HUB_OFFLINE)


@lru_cache(maxsize=16)
def _resolve(text: str, cache: str, offline: bool) -> HubWeights:
    repo, revision, filename = _repo_of(text)
    config_file = _fetch(text, repo, revision, "config.json")
    if config_file is None:
        raise ValueError(f"{text}: {repo}@{revision} has no config.json, so nothing says what model it is")
    _check_kind(text, config_file)
    names = (filename,) if filename else WEIGHTS_NAMES
    weights = next((f for f in (_fetch(text, repo, revision, name) for name in names) if f is not None), None)
    if weights is None:
        raise ValueError(f"{text}: {repo}@{revision} has no {' or '.join(names)}"
                         + (f" in the cache: fetch it with `hf download {repo} {names[0]}`" if offline else ""))
    return HubWeights(text, repo, revision, weights.parent.name, weights.parent, weights.name, _sha256(weights))


def _repo_of(text: str) -> tuple[str, str, Optional[str]]:
    """(repo, revision, weights file or None for the default names) of a hub name."""
    if text.startswith(TIMM_PREFIX):
        return _timm_repo(text[len(TIMM_PREFIX):])
    name, _, revision = text[len(HUB_PREFIX):].partition("@")
    if name.count("/") != 1 or not all(name.split("/")):
        raise ValueError(f"{text}: a hub name is hf-hub:ORG/NAME[@REVISION], e.g. "
                         "hf-hub:facebook/deit-small-distilled-patch16-224")
    return name, revision or "main", None


def _timm_repo(name: str) -> tuple[str, str, Optional[str]]:
    """timm's hub repo for its pretrained weights NAME[.TAG] (its pretrained_cfg says where they live)."""
    import timm
    from timm.models import get_pretrained_cfg

    arch = name.split(".")[0]
    if not timm.is_model(arch):
        raise ValueError(f"timm:{name}: timm has no architecture {arch!r} (timm.list_models() names them)")
    try:
        cfg = get_pretrained_cfg(name)
    except RuntimeError:
        cfg = None
    if cfg is None or not cfg.hf_hub_id:
        raise ValueError(f"timm:{name}: timm has no pretrained weights of that name on the hub "
                         f"(timm.list_pretrained('{arch}*') names those it has)")
    repo, _, revision = cfg.hf_hub_id.partition("@")
    return repo, revision or "main", cfg.hf_hub_filename


def _fetch(text: str, repo: str, revision: str, filename: str) -> Optional[Path]:
    """The cached file (fetched if missing and allowed); None when the repo does not have it. Anything else that
    keeps the file from us is one line."""
    from huggingface_hub import constants, hf_hub_download
    from huggingface_hub.errors import (EntryNotFoundError, HFValidationError, LocalEntryNotFoundError,
                                        RepositoryNotFoundError, RevisionNotFoundError)

    try:
        return Path(hf_hub_download(repo, filename, revision=revision,
                                    local_files_only=constants.HF_HUB_OFFLINE))
    except RepositoryNotFoundError:  # gated and private repos included
        raise ValueError(f"{text}: the hub has no model repository {repo} (or it is private or gated: log in with "
                         "`hf auth login`)") from None
    except RevisionNotFoundError:
        raise ValueError(f"{text}: {repo} has no revision {revision!r} on the hub") from None
    except LocalEntryNotFoundError:  # before its base class: not in the cache, and the hub not asked
        return _not_cached(text, repo, revision)
    except EntryNotFoundError:  # the hub says the repo has no such file
        return None
    except HFValidationError as e:
        from .safe_read import first_line

        raise ValueError(f"{text}: {first_line(e)}") from None


def _not_cached(text: str, repo: str, revision: str) -> None:
    """One line saying what is missing from the cache and how to fetch it; None (file absent) when the revision is
    cached without that file."""
    from huggingface_hub import constants, scan_cache_dir
    from huggingface_hub.errors import CacheNotFound

    cache = constants.HF_HUB_CACHE
    try:
        repos = [r for r in scan_cache_dir(cache).repos if r.repo_id == repo and r.repo_type == "model"]
    except CacheNotFound:
        repos = []
    why = "HF_HUB_OFFLINE is set" if constants.HF_HUB_OFFLINE else "the hub cannot be reached"
    fetch = f"hf download {repo}" + (f" --revision {revision}" if revision != "main" else "")
    how = (f"fetch it on a machine with network (`{fetch}`), then copy that machine's hub cache "
           f"(~/.cache/huggingface/hub/models--{repo.replace('/', '--')}) into {cache}, or point HF_HUB_CACHE at a "
           "copied cache")
    if not repos:
        raise ValueError(f"{text}: {repo} is not in the Hugging Face cache ({cache}) and {why}: {how}")
    revisions = repos[0].revisions
    if not any(revision in r.refs or revision == r.commit_hash for r in revisions):
        have = sorted({ref for r in revisions for ref in r.refs} | {r.commit_hash[:12] for r in revisions})
        raise ValueError(f"{text}: revision {revision!r} of {repo} is not in the cache (it holds "
                         f"{', '.join(have)}) and {why}: {how}")
    return None


def _check_kind(text: str, config_file: Path) -> None:
    """Refuse, before its weights are fetched, a repo that is no DeiT/ViT (transformers), timm model or run of ours."""
    from .safe_read import read_json

    config = read_json(config_file)
    if config.get("model_type") in ("deit", "vit") or "model" in config:
        return
    if "architecture" in config:  # timm's hub layout
        import timm

        if timm.is_model(config["architecture"]):
            return
        raise ValueError(f"{text} is a timm model of architecture {config['architecture']!r}, which this timm "
                         f"{timm.__version__} does not have: upgrade timm")
    kind = config.get("model_type") or "unknown"
    archs = ", ".join(config.get("architectures") or []) or "no architectures"
    raise ValueError(f"{text} is a {kind!r} model ({archs}), not a DeiT/ViT (transformers model_type deit or vit) "
                     "or a timm model: it does not fit")


def _sha256(file: Path) -> str:
    digest = hashlib.sha256()
    with open(file, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
