"""Everything wfvae fetches from the network, in one place, and the offline switch.

How to use::

    from wfvae.downloads import REMOTE_FILES, fetch_file, fetch_torch_hub_checkpoint, hub_snapshot

    path = fetch_file(REMOTE_FILES["i3d_styleganv"])             # user cache dir, verified
    path = fetch_torch_hub_checkpoint(REMOTE_FILES["lpips_alex"])  # $TORCH_HOME/hub/checkpoints
    folder = hub_snapshot("chestnutlzj/WF-VAE-L-16Chn@main", files=("config.json", "diffusion_pytorch_model.safetensors"))

Three kinds of remote files:

* **URL downloads** (:func:`fetch_file`): the FVD detectors. The file goes to the user cache dir
  (``platformdirs.user_cache_path("wfvae")``, or ``$WFVAE_CACHE_DIR``), under a file lock so that
  several processes (DDP ranks) download it once. Bytes land in ``<name>.part``; a transfer that
  breaks is resumed with an HTTP ``Range`` request (within the same call, and by the next call if
  all attempts failed). When complete, the file is checked (SHA-256 when pinned, size when known,
  and an optional loader) and only then renamed into place, so a corrupt download is refused and
  never cached. A tqdm bar shows progress on stderr.
* **torchvision checkpoints** (:func:`fetch_torch_hub_checkpoint`): the LPIPS trunks, fetched
  the way torchvision's weight API does it (``torch.hub.download_url_to_file`` into
  ``$TORCH_HOME/hub/checkpoints``, SHA-256 prefix from the file name checked by torch).
* **Hugging Face Hub models** (:func:`hub_snapshot`): ``owner/name[@revision]`` is fetched with
  ``huggingface_hub`` into its own cache (``HF_HOME`` / ``HF_HUB_CACHE`` honoured), config and
  safetensors weights only, or the ``.ckpt`` when that is all the repository has.

Offline mode (:func:`offline_mode`): ``--offline``, ``WFVAE_OFFLINE=1`` or ``HF_HUB_OFFLINE=1``.
Nothing touches the network then; a file not already on disk raises
:class:`~wfvae.errors.MissingWeightsError` naming the file, the option to pass a local copy and
the variable that switched downloads off.

The table of remote files, :data:`REMOTE_FILES`, is a :class:`RemoteRegistry`: code that needs
other locations (a mirror, a test server) replaces entries for a block with
``REMOTE_FILES.replaced(...)`` instead of patching this module.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import logging
import os
import re
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

import huggingface_hub
import platformdirs
import torch.hub
from filelock import FileLock
from huggingface_hub.utils import (
    EntryNotFoundError,
    LocalEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from tqdm.auto import tqdm

from wfvae.errors import MissingWeightsError

logger = logging.getLogger(__name__)

#: Environment variables that switch downloads off (any of them set to 1/true/yes/on).
OFFLINE_ENV_VARS = ("WFVAE_OFFLINE", "HF_HUB_OFFLINE")
#: Environment variable naming the download cache folder (default: the platform's user cache dir).
CACHE_ENV_VAR = "WFVAE_CACHE_DIR"

_CHUNK = 1 << 20  # bytes read per step of a transfer


class DownloadError(MissingWeightsError):
    """A file could not be downloaded, or the download failed verification and was discarded."""


# ---------------------------------------------------------------------------------------------
# Offline mode and cache location
# ---------------------------------------------------------------------------------------------


def _truthy(value: str | None) -> bool:
    return value is not None and value.strip().lower() in {"1", "true", "yes", "on"}


def offline_mode(offline: bool | None = None) -> bool:
    """``offline`` when given (the ``--offline`` flag), else whether an offline variable is set."""
    if offline is not None:
        return bool(offline)
    return any(_truthy(os.environ.get(name)) for name in OFFLINE_ENV_VARS)


def _offline_reason(offline: bool | None) -> str:
    if offline:
        return "--offline was given"
    names = [name for name in OFFLINE_ENV_VARS if _truthy(os.environ.get(name))]
    return f"{names[0]}={os.environ[names[0]]} is set" if names else "offline mode is on"


def default_cache_dir() -> Path:
    """``$WFVAE_CACHE_DIR``, else the platform's user cache dir for wfvae (e.g. ``~/.cache/wfvae``)."""
    env_value = os.environ.get(CACHE_ENV_VAR)
    if env_value:
        return Path(env_value).expanduser()

    return platformdirs.user_cache_path("wfvae")


def torch_hub_checkpoint_dir() -> Path:
    """Where torchvision caches its weights: ``$TORCH_HOME/hub/checkpoints`` (torch's rule)."""
    return Path(torch.hub.get_dir()) / "checkpoints"


# ---------------------------------------------------------------------------------------------
# The table of remote files
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RemoteFile:
    """A file wfvae can fetch, and how a user can provide it by hand instead.

    Attributes:
        filename: name in the cache folder (also the name users know the file by).
        urls: download locations, tried in order.
        what: one-phrase description for messages ("the StyleGAN-V I3D detector").
        sha256: pinned hex digest, or None where none is published (see ``size`` and the
            ``verify`` argument of :func:`fetch_file`).
        size: exact size in bytes when known.
        option: the command-line option that takes a local copy (named in error messages).
        env_var: the environment variable that takes a local copy, if any.
    """

    filename: str
    urls: tuple[str, ...]
    what: str
    sha256: str | None = None
    size: int | None = None
    option: str | None = None
    env_var: str | None = None

    def manual_hint(self, target: Path) -> str:
        ways = [f"put the file at '{target}'"]
        if self.option:
            ways.append(f"pass {self.option} PATH")
        if self.env_var:
            ways.append(f"set ${self.env_var}=PATH")
        return ", or ".join(ways)


class RemoteRegistry(Mapping[str, RemoteFile]):
    """Name -> :class:`RemoteFile`; entries can be replaced for a block with :meth:`replaced`."""

    def __init__(self, entries: dict[str, RemoteFile]):
        self._entries = dict(entries)

    def __getitem__(self, key: str) -> RemoteFile:
        return self._entries[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    @contextlib.contextmanager
    def replaced(self, **entries: RemoteFile) -> Iterator[RemoteRegistry]:
        """Use other entries (a mirror, a local test server) inside a ``with`` block."""
        unknown = sorted(set(entries) - set(self._entries))
        if unknown:
            raise KeyError(f"unknown remote files {unknown}; known: {sorted(self._entries)}")
        saved = dict(self._entries)
        self._entries.update(entries)
        try:
            yield self
        finally:
            self._entries = saved


def _torchvision_url(weights_enum: str, member: str, fallback: str) -> str:
    """The URL torchvision's weight API uses for a checkpoint (its own table stays the source)."""
    try:
        import torchvision.models as tvm  # lazy: slow import; only when a trunk is downloaded

        return getattr(getattr(tvm, weights_enum), member).url
    except (ImportError, AttributeError):  # very old torchvision: the long-standing URL
        return fallback


# No SHA-256 is published for either I3D detector (searched: StyleGAN-V, fvd-comparison,
# VideoGPT, common_metrics_on_video_quality, content-vae, Open-Sora-Plan; none ships a digest).
# They are verified by loading them as the detector they claim to be (see wfvae.networks.i3d),
# and the digest of the accepted file is logged and written beside it as '<name>.sha256'.
REMOTE_FILES = RemoteRegistry(
    {
        "i3d_styleganv": RemoteFile(
            filename="i3d_torchscript.pt",
            urls=(
                # StyleGAN-V's own link (also used by fvd-comparison and the original WF-VAE)
                "https://www.dropbox.com/s/ge9e5ujwgetktms/i3d_torchscript.pt?dl=1",
            ),
            what="the StyleGAN-V I3D detector (FVD, --fvd_variant styleganv)",
            option="--fvd_weights",
            env_var="WFVAE_I3D_PATH",
        ),
        "i3d_videogpt": RemoteFile(
            filename="i3d_pretrained_400.pt",
            urls=(
                # Open-Sora-Plan v1.0.0 (same group as WF-VAE), pinned to a commit
                "https://huggingface.co/spaces/LanguageBind/Open-Sora-Plan-v1.0.0/resolve/"
                "810fa8c4bdb3a4c8eec9bd57375c29bde6fb46de/opensora/eval/fvd/videogpt/i3d_pretrained_400.pt",
                # the OneDrive link published by common_metrics_on_video_quality
                "https://onedrive.live.com/download?cid=78EEF3EB6AE7DBCB&resid=78EEF3EB6AE7DBCB%21199"
                "&authkey=AApKdFHPXzWLNyI",
            ),
            what="the VideoGPT I3D detector (FVD, --fvd_variant videogpt)",
            option="--fvd_weights",
            env_var="WFVAE_I3D_PATH",
        ),
        "lpips_vgg": RemoteFile(
            filename="vgg16-397923af.pth",
            urls=(_torchvision_url("VGG16_Weights", "IMAGENET1K_V1",
                                   "https://download.pytorch.org/models/vgg16-397923af.pth"),),
            what="torchvision's ImageNet VGG16 (the LPIPS trunk of the training loss)",
            option="--lpips_backbone_path",
            env_var="WFVAE_LPIPS_BACKBONE",
        ),
        "lpips_alex": RemoteFile(
            filename="alexnet-owt-7be5be79.pth",
            urls=(_torchvision_url("AlexNet_Weights", "IMAGENET1K_V1",
                                   "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth"),),
            what="torchvision's ImageNet AlexNet (the LPIPS trunk of evaluation)",
            option="--lpips_backbone_path",
            env_var="WFVAE_LPIPS_BACKBONE",
        ),
    }
)


# ---------------------------------------------------------------------------------------------
# URL downloads
# ---------------------------------------------------------------------------------------------


def sha256_of(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def _offline_error(remote: RemoteFile, target: Path, offline: bool | None) -> MissingWeightsError:
    return MissingWeightsError(
        f"{remote.what} '{remote.filename}' is not on disk and downloads are off "
        f"({_offline_reason(offline)}; the switches are --offline, "
        f"{' and '.join(f'${v}' for v in OFFLINE_ENV_VARS)}). To provide it, {remote.manual_hint(target)}; "
        f"or allow downloads."
    )


class _IncompleteTransfer(OSError):
    pass


def _user_agent() -> str:
    try:
        return f"wfvae/{version('wfvae')}"
    except Exception:  # not installed as a distribution (PYTHONPATH checkout)
        return "wfvae"


def _transfer(url: str, part: Path, label: str, progress: bool, timeout: float) -> None:
    """Append the rest of ``url`` to ``part`` (a Range request when ``part`` has bytes already)."""
    have = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": _user_agent()}
    if have:
        headers["Range"] = f"bytes={have}-"
    request = urllib.request.Request(url, headers=headers)
    try:
        response = urllib.request.urlopen(request, timeout=timeout)  # noqa: S310 (https/http URLs from the table)
    except urllib.error.HTTPError as e:
        if e.code == 416 and have:  # our partial file is no prefix the server knows: start over
            part.unlink()
        raise
    with response:
        resumed = have > 0 and response.status == 206
        if have and not resumed:
            logger.info("%s: server ignored the Range request; downloading from the start", url)
            have = 0
        length = response.headers.get("Content-Length")
        expected = int(length) if length is not None and length.isdigit() else None
        total = have + expected if expected is not None else None
        written = 0
        with open(part, "ab" if resumed else "wb") as f, tqdm(
            total=total, initial=have, unit="B", unit_scale=True, unit_divisor=1024,
            desc=label, disable=not progress, leave=False,
        ) as bar:
            while True:
                block = response.read(_CHUNK)
                if not block:
                    break
                f.write(block)
                written += len(block)
                bar.update(len(block))
            f.flush()
            os.fsync(f.fileno())
    if expected is not None and written != expected:
        raise _IncompleteTransfer(f"connection ended after {written} of {expected} bytes")


def fetch_file(
    remote: RemoteFile,
    *,
    cache_dir: str | os.PathLike | None = None,
    offline: bool | None = None,
    verify: Callable[[Path], object] | None = None,
    progress: bool = True,
    attempts: int = 3,
    timeout: float = 60.0,
) -> Path:
    """The cached copy of ``remote``, downloaded and verified first if needed.

    Args:
        remote: entry of :data:`REMOTE_FILES` (or any :class:`RemoteFile`).
        cache_dir: folder of the cache (default :func:`default_cache_dir`).
        offline: ``--offline``; ``None`` reads the offline environment variables.
        verify: called with the downloaded file before it is accepted; raising refuses it
            (used to load the detector when no digest is published).
        progress: show a tqdm bar.
        attempts: transfers per URL; each one resumes where the previous one broke off.
        timeout: seconds without data before a transfer counts as broken.

    Returns:
        Path of the verified file in the cache.

    Raises:
        MissingWeightsError: offline and not cached.
        DownloadError: every URL failed (the partial file is kept for the next call to resume),
            or the file failed verification (it is deleted, nothing is cached).
    """
    target = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    target = target / remote.filename
    if target.is_file():
        return target
    if offline_mode(offline):
        raise _offline_error(remote, target, offline)

    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if target.is_file():  # another process finished it while we waited
            return target
        part = target.with_name(target.name + ".part")
        failures: list[str] = []
        for url in remote.urls:
            for attempt in range(1, attempts + 1):
                if attempt == 1 and not part.exists():
                    logger.warning("downloading %s from %s to %s", remote.what, url, target)
                elif part.exists():
                    logger.warning("resuming %s at byte %d (attempt %d of %d)", remote.filename,
                                   part.stat().st_size, attempt, attempts)
                try:
                    _transfer(url, part, remote.filename, progress, timeout)
                except urllib.error.HTTPError as e:
                    failures.append(f"{url}: HTTP {e.code} {e.reason}")
                    if e.code != 416:
                        break  # the server answered: retrying the same URL will not help
                except (urllib.error.URLError, http.client.HTTPException, OSError) as e:
                    failures.append(f"{url}: {type(e).__name__}: {e}")
                else:
                    return _accept(remote, part, target, verify)
        kept = f" The partial file '{part}' is kept; the next run resumes it." if part.exists() else ""
        raise DownloadError(
            f"could not download {remote.what} '{remote.filename}':\n  " + "\n  ".join(failures)
            + f"\n{kept} To provide the file yourself, {remote.manual_hint(target)}."
        )


def _accept(remote: RemoteFile, part: Path, target: Path, verify: Callable[[Path], object] | None) -> Path:
    """Check a complete download and move it into place, or delete it and raise."""
    size = part.stat().st_size
    digest = sha256_of(part)
    problem = None
    if remote.sha256 is not None and digest != remote.sha256.lower():
        problem = f"SHA-256 {digest} differs from the pinned {remote.sha256}"
    elif remote.size is not None and size != remote.size:
        problem = f"size {size} bytes differs from the expected {remote.size}"
    elif verify is not None:
        try:
            verify(part)
        except Exception as e:  # any failure to load means the file is not the one we want
            problem = f"it does not load as {remote.what}: {e}"
    if problem is not None:
        part.unlink()
        raise DownloadError(
            f"refused the download of '{remote.filename}' ({remote.urls[0]}): {problem}. "
            f"Nothing was cached; run again to retry, or {remote.manual_hint(target)}."
        )
    os.replace(part, target)
    target.with_name(target.name + ".sha256").write_text(f"{digest}  {remote.filename}\n")
    logger.warning("saved %s (%d bytes, sha256 %s) to %s", remote.filename, size, digest, target)
    return target


# ---------------------------------------------------------------------------------------------
# torchvision checkpoints (LPIPS trunks)
# ---------------------------------------------------------------------------------------------

_TORCH_HASH_IN_NAME = re.compile(r"-([a-f0-9]+)\.")  # torch.hub's rule: '<name>-<sha256 prefix>.<ext>'


def fetch_torch_hub_checkpoint(
    remote: RemoteFile, *, offline: bool | None = None, progress: bool = True
) -> Path:
    """``$TORCH_HOME/hub/checkpoints/<filename>``, downloaded as torchvision's weight API does.

    The SHA-256 prefix in the file name is checked by ``torch.hub.download_url_to_file``, which
    writes to a temporary file and renames it, so a corrupt download is never cached.
    """
    target = torch_hub_checkpoint_dir() / remote.filename
    if target.is_file():
        return target
    if offline_mode(offline):
        raise _offline_error(remote, target, offline)

    match = _TORCH_HASH_IN_NAME.search(remote.filename)
    hash_prefix = match.group(1) if match else None
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if target.is_file():
            return target
        failures = []
        for url in remote.urls:
            logger.warning("downloading %s from %s to %s", remote.what, url, target)
            try:
                torch.hub.download_url_to_file(url, str(target), hash_prefix=hash_prefix, progress=progress)
                return target
            except RuntimeError as e:  # torch's hash check
                raise DownloadError(
                    f"refused the download of '{remote.filename}' ({url}): {e}. Nothing was cached; "
                    f"run again to retry, or {remote.manual_hint(target)}."
                ) from e
            except (urllib.error.URLError, http.client.HTTPException, OSError) as e:
                failures.append(f"{url}: {type(e).__name__}: {e}")
        raise DownloadError(
            f"could not download {remote.what} '{remote.filename}':\n  " + "\n  ".join(failures)
            + f"\nTo provide the file yourself, {remote.manual_hint(target)}."
        )


# ---------------------------------------------------------------------------------------------
# Hugging Face Hub models
# ---------------------------------------------------------------------------------------------

#: ``owner/name`` or ``owner/name@revision`` (Hub repository names: letters, digits, ``-_.``).
_HUB_ID = re.compile(r"^(?P<repo>[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*)(?:@(?P<revision>[^\s@]+))?$")


def parse_hub_id(name: str) -> tuple[str, str | None] | None:
    """``(repo_id, revision)`` when ``name`` is written like a Hub id, else None.

    A string is a Hub id only if it is not an existing local path (callers check that first) and
    has the form ``owner/name[@revision]``: exactly one ``/``, no leading ``.``, ``/`` or ``~``,
    and no file suffix a local weights file would have.
    """
    match = _HUB_ID.match(name)
    if match is None or name.startswith((".", "~")):
        return None
    repo = match.group("repo")
    if repo.lower().endswith((".ckpt", ".safetensors", ".pt", ".pth", ".json", ".bin")):
        return None
    return repo, match.group("revision")


def hub_snapshot(
    name: str,
    revision: str | None = None,
    *,
    files: Sequence[str],
    offline: bool | None = None,
    allow_ckpt: bool = True,
    cache_dir: str | os.PathLike | None = None,
) -> Path:
    """A local folder with a Hub model's config and weights.

    Downloads ``files`` (the config first, then the safetensors weight names the loader accepts);
    only when the repository has none of those weights, its ``*.ckpt`` files (read later with
    ``weights_only=True``; ``allow_ckpt=False`` refuses them). Other files (pickled ``.bin``,
    images, ...) are never fetched. Offline, the folder comes from the Hub cache or not at all.

    Args:
        name: ``owner/name`` or ``owner/name@revision`` (branch, tag or commit).
        revision: the same as ``@revision``; giving both with different values is an error.
        files: ``(config file, weights file, ...)``, e.g. :data:`wfvae.models.loading.MODEL_FILES`.
        offline: ``--offline``; ``None`` reads ``WFVAE_OFFLINE`` / ``HF_HUB_OFFLINE``.
        cache_dir: Hub cache folder (default: huggingface_hub's, from ``HF_HOME``/``HF_HUB_CACHE``).

    Raises:
        ValueError: ``name`` is not a Hub id, or two different revisions were given.
        MissingWeightsError: offline and not cached, the repository or revision does not exist,
            or it has no weights wfvae can read.
    """
    parsed = parse_hub_id(name)
    if parsed is None:
        raise ValueError(f"'{name}' is neither an existing local path nor a Hub id 'owner/name[@revision]'")
    repo_id, at_revision = parsed
    if at_revision and revision and at_revision != revision:
        raise ValueError(f"two revisions for '{repo_id}': '@{at_revision}' and revision='{revision}'")
    revision = at_revision or revision
    is_offline = offline_mode(offline)
    label = f"'{repo_id}'" + (f" at revision '{revision}'" if revision else "")


    def snapshot(patterns: list[str]) -> Path:
        return Path(
            huggingface_hub.snapshot_download(
                repo_id, revision=revision, allow_patterns=patterns, local_files_only=is_offline,
                cache_dir=None if cache_dir is None else str(cache_dir),
            )
        )

    config_file, *weight_files = files
    try:
        folder = snapshot(list(files))
        if not any((folder / f).is_file() for f in weight_files) and not is_offline and allow_ckpt:
            folder = snapshot(["*.ckpt"])
    except LocalEntryNotFoundError as e:
        if is_offline:
            raise MissingWeightsError(
                f"model {label} is not a local path and is not in the Hugging Face cache, and "
                f"downloads are off ({_offline_reason(offline)}; the switches are --offline, "
                f"$WFVAE_OFFLINE and $HF_HUB_OFFLINE). Download it once online, or pass a local "
                f"folder with config.json and weights."
            ) from e
        raise MissingWeightsError(f"cannot reach the Hugging Face Hub for model {label}: {e}") from e
    except RevisionNotFoundError as e:
        raise MissingWeightsError(f"model '{repo_id}' has no revision '{revision}' on the Hub") from e
    except RepositoryNotFoundError as e:
        raise MissingWeightsError(
            f"'{name}' is not a local path, and no Hub repository '{repo_id}' was found (private "
            f"repositories need `hf auth login`)"
        ) from e
    except EntryNotFoundError as e:
        raise MissingWeightsError(f"model {label}: {e}") from e
    if not (folder / config_file).is_file():
        raise MissingWeightsError(f"model {label} on the Hub has no {config_file}")
    if not any((folder / f).is_file() for f in weight_files) and not (
        allow_ckpt and any(folder.glob("*.ckpt"))
    ):
        extra = "" if allow_ckpt else " (its .ckpt files were not fetched: allow_ckpt=False)"
        raise MissingWeightsError(
            f"model {label} has no weights wfvae reads: expected one of "
            f"{weight_files} or a *.ckpt file{extra}"
            + (" in the local Hugging Face cache" if is_offline else "")
        )
    return folder


__all__ = [
    "CACHE_ENV_VAR",
    "DownloadError",
    "OFFLINE_ENV_VARS",
    "REMOTE_FILES",
    "RemoteFile",
    "RemoteRegistry",
    "default_cache_dir",
    "fetch_file",
    "fetch_torch_hub_checkpoint",
    "hub_snapshot",
    "offline_mode",
    "parse_hub_id",
    "sha256_of",
    "torch_hub_checkpoint_dir",
]
