"""Kept versions of a bundle's adapters: what `bundle add --replace` keeps and `bundle rollback` restores.

An adapter's version is the sha256 of the adapter .safetensors it was exported from (AdapterEntry.sha256; the
bundle's NAME.adapter.safetensors is that file, byte for byte): `version_of` is the one place that says so. When
`bundle add --replace` replaces adapter NAME, the replaced one stays in the bundle as a kept version: its manifest
entry moves into the new entry's `versions` (most recently replaced first, at most `keep`), its files are hard links
under NAME.<first 16 hex digits of its version>.<role> (plain names, never an adapter's own: adapter names have no
dot), listed in the manifest's `files` with their sha256 like every other file, and its fidelity section moves to
report.json's `kept_versions`. A manifest without `versions` (every bundle written before) has no history.
Torch-free. Not here: writing bundles (crome_export.versions, crome_export.multi), the entry itself (adapter_entries).
"""
from __future__ import annotations

import dataclasses
import re
import time
from dataclasses import dataclass

from crome_runtime.adapter_entries import REQUIRED_ROLES, ROLES, AdapterEntry
from crome_runtime.limits import MAX_KEPT_VERSIONS
from crome_runtime.manifest import BundleError

DEFAULT_KEPT_VERSIONS = 3  # `bundle add --replace` keeps the last 3 replaced versions unless --keep says otherwise
FILE_TAG_DIGITS = 16  # hex digits of the version in a kept file's name
SHORT_DIGITS = 12  # hex digits a version is shown with
SHA256 = re.compile(r"[0-9a-f]{64}")
PREFIX = re.compile(r"[0-9a-fA-F]{1,64}")


def version_of(entry: AdapterEntry) -> str:
    """An adapter's version: the sha256 of the adapter file it was exported from."""
    return entry.sha256


def short(version: str) -> str:
    return version[:SHORT_DIGITS]


def kept_file_name(adapter: str, version: str, role: str) -> str:
    """The bundle file of a kept version's `role`: NAME.<16 hex digits of the version>.<the role's plain name>."""
    return f"{adapter}.{version[:FILE_TAG_DIGITS]}.{ROLES[role]}"


def utc_now() -> str:
    """The dates of a history: ISO 8601, UTC, to the second."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def check_keep(keep) -> int:
    """How many replaced versions to keep: a whole number 0..MAX_KEPT_VERSIONS (0 keeps none, as before history)."""
    if not isinstance(keep, int) or isinstance(keep, bool) or not 0 <= keep <= MAX_KEPT_VERSIONS:
        raise BundleError(f"--keep {keep!r:.40} is out of range: keep 0 to {MAX_KEPT_VERSIONS} replaced versions of an "
                          f"adapter (default {DEFAULT_KEPT_VERSIONS}; 0 keeps none)")
    return keep


@dataclass
class KeptVersion:
    """A replaced version of adapter `entry.name`, kept in the bundle: its manifest entry as it was (files: the kept
    names) and when it was replaced."""

    entry: AdapterEntry
    replaced: str

    @property
    def version(self) -> str:
        return version_of(self.entry)

    @property
    def files(self) -> dict[str, str]:
        """role -> its kept bundle file."""
        return self.entry.files or {}

    def to_dict(self) -> dict:
        data = self.entry.to_dict()
        del data["name"]  # the adapter's, written once
        return {**data, "replaced": self.replaced}

    @classmethod
    def from_dict(cls, data, adapter: str, source: str) -> "KeptVersion":
        if not isinstance(data, dict) or "files" not in data:
            raise BundleError(f"{source}: adapter {adapter!r:.40}: every kept version must be an object with its "
                              "files; fix the manifest or re-export the bundle")
        replaced = data.get("replaced")
        entry = AdapterEntry.from_dict({k: v for k, v in data.items() if k != "replaced"} | {"name": adapter}, source)
        what = f"{source}: adapter {adapter!r:.40}'s kept version {str(entry.sha256)[:SHORT_DIGITS]!r}"
        if not SHA256.fullmatch(entry.sha256) or not isinstance(replaced, str) or entry.versions:
            raise BundleError(f"{what} has malformed fields (sha256, replaced or versions); fix the manifest or "
                              "re-export the bundle")
        expected = {role: kept_file_name(adapter, entry.sha256, role) for role in entry.files or {}}
        if entry.files != expected or not set(REQUIRED_ROLES) <= set(expected):
            raise BundleError(f"{what} names files other than its own ({', '.join(expected.values())}); fix the "
                              "manifest or re-export the bundle")
        return cls(entry, replaced)


def read_versions(data, adapter: str, current_sha256: str, source: str) -> list[KeptVersion]:
    """A manifest entry's `versions` (absent: none): distinct versions, none of them the current one."""
    if data is None:
        return []
    if not isinstance(data, list) or len(data) > MAX_KEPT_VERSIONS:
        raise BundleError(f"{source}: adapter {adapter!r:.40}'s `versions` must be a list of at most "
                          f"{MAX_KEPT_VERSIONS} kept versions; fix the manifest or re-export the bundle")
    versions = [KeptVersion.from_dict(item, adapter, source) for item in data]
    seen = [v.version for v in versions] + [current_sha256]
    if len(set(seen)) != len(seen):
        raise BundleError(f"{source}: adapter {adapter!r:.40} keeps one version twice (or its current one); fix the "
                          "manifest or re-export the bundle")
    return versions


def unkeepable(entry: AdapterEntry) -> str | None:
    """Why `entry` cannot become a kept version (None: it can): a version must be a sha256 and have the files a
    rollback needs (a version-1 bundle's adapter may lack its weights)."""
    if not SHA256.fullmatch(version_of(entry)):
        return f"its recorded version {version_of(entry)!r:.20} is not a sha256"
    missing = [role for role in REQUIRED_ROLES if role not in (entry.files or {})]
    return f"the bundle has no {', '.join(missing)} file of it" if missing else None


def retire(entry: AdapterEntry, replaced: str) -> KeptVersion:
    """The current `entry` as a kept version: its files under the kept names, its own history dropped (the new
    current entry carries the history)."""
    why = unkeepable(entry)
    if why:
        raise BundleError(f"adapter {entry.name} cannot be kept as a version: {why}; re-export the bundle")
    version = version_of(entry)
    files = {role: kept_file_name(entry.name, version, role) for role in entry.files or {}}
    return KeptVersion(dataclasses.replace(entry, files=files, versions=[]), replaced)


def restored(kept: KeptVersion) -> AdapterEntry:
    """A kept version back as the adapter's current entry (its files under the adapter's own names)."""
    return dataclasses.replace(kept.entry, files=None, versions=[])


def succession(current: AdapterEntry, new: AdapterEntry, keep: int, replaced: str) -> list[KeptVersion]:
    """The kept versions after `new` replaces `current`: current first (unless it cannot be kept: unkeepable), then
    current's kept ones, without `new`'s own version (it is current again) and without repeats, the last `keep`."""
    kept, seen = [], {version_of(new)}
    for version in ([] if unkeepable(current) else [retire(current, replaced)]) + list(current.versions):
        if version.version not in seen:
            seen.add(version.version)
            kept.append(version)
    return kept[:check_keep(keep)]


def find(entry: AdapterEntry, prefix: str | None) -> KeptVersion:
    """The kept version of `entry` whose version starts with `prefix` (unique), or the most recently replaced one
    when `prefix` is None; BundleError saying what is kept otherwise."""
    kept = entry.versions
    listing = ", ".join(short(v.version) for v in kept)
    if not kept:
        raise BundleError(f"adapter {entry.name} has no kept versions to roll back to (versions are kept by "
                          "`crome-edge bundle add --replace`); nothing was changed")
    if prefix is None:
        return kept[0]
    if not isinstance(prefix, str) or not PREFIX.fullmatch(prefix):
        raise BundleError(f"version {prefix!r:.80} is not a sha256 prefix (hex digits); give one of adapter "
                          f"{entry.name}'s kept versions: {listing} (`crome-edge bundle history`)")
    matches = [v for v in kept if v.version.startswith(prefix.lower())]
    if not matches:
        current = " (that is the current version)" if version_of(entry).startswith(prefix.lower()) else ""
        raise BundleError(f"adapter {entry.name} has no kept version {prefix}{current}; its kept versions are "
                          f"{listing} (`crome-edge bundle history`); nothing was changed")
    if len(matches) > 1:
        raise BundleError(f"version {prefix} is ambiguous: it starts {len(matches)} kept versions of {entry.name} "
                          f"({', '.join(short(v.version) for v in matches)}); give more digits; nothing was changed")
    return matches[0]
