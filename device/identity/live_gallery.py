"""The running unit's side of the gallery: the view the pipeline matches against, and last-seen.

``LiveGallery`` never raises for bad content: a wrong key, a failed GCM tag or a truncated file (a
``GalleryUnreadableError`` from ``device.identity.gallery_file``) becomes a "no gallery" state reported in
health instead of a crash.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np

from device.config import UnitConfig
from device.identity.gallery_file import active_templates, open_gallery
from device.identity.gallery_records import (
    TEMPLATE_DIM,
    GalleryError,
    GalleryUnreadableError,
    Templates,
    utc_now,
)
from device.identity.gallery_store import GalleryStore
from device.identity.keyring import keyring_path
from device.identity.masterkey import KeySource, MasterKeyError, load_master_key
from device.types import Decision, DecisionType

log = logging.getLogger(__name__)


class LastSeenRecorder:
    """The running unit's ``on_decision`` hook: the day each recognised subject was last seen.

    Day resolution keeps movement detail low and costs at most one gallery rewrite per subject per day.
    Only recognised decisions count, so a stranger never causes a write. A failure (key gone, gallery
    damaged) is logged and otherwise ignored: last-seen must never stop the unit.
    """

    def __init__(
        self,
        config: UnitConfig,
        *,
        then: Callable[[Decision], None] | None = None,
        today: Callable[[], date] = lambda: utc_now().date(),
    ) -> None:
        self._config = config
        self._then = then
        self._today = today
        self._noted: dict[str, date] = {}

    def __call__(self, decision: Decision) -> None:
        if decision.type is DecisionType.RECOGNIZED and decision.subject_id is not None:
            self._note(decision.subject_id)
        if self._then is not None:
            self._then(decision)

    def _note(self, subject_id: str) -> None:
        day = self._today()
        if self._noted.get(subject_id) == day:
            return
        self._noted[subject_id] = day
        try:
            GalleryStore.from_config(self._config).record_seen([subject_id], day)
        except (GalleryError, OSError) as error:
            log.warning("last-seen of %s not recorded: %s", subject_id, error)


FileStat = tuple[int, int, int, int]
StatKey = tuple[FileStat | None, FileStat | None, FileStat | None]


@dataclass
class _Loaded:
    stat_key: StatKey
    day: date
    version: str
    templates: Templates
    subject_ids: list[str]
    subjects: int
    expired: int
    error: str | None = None


def _file_stat(path: Path) -> FileStat | None:
    try:
        info = path.stat()
    except OSError:
        return None
    # ctime too: a chmod (fixing a key file's mode) changes nothing else
    return (info.st_ino, info.st_mtime_ns, info.st_ctime_ns, info.st_size)


class LiveGallery:
    """The pipeline's GalleryView: ``.version`` and ``.templates()``, reloaded when the file changes.

    Never raises for bad content: a missing or unreadable key or gallery leaves it in "no gallery"
    mode (no templates, ``state`` says why), so the unit keeps running and health reports the problem.
    Checking ``.version`` costs two ``stat`` calls; the files are read again only when the gallery or
    the key file changed (enrol, forget, purge from the CLI; a key restored) or the day changed
    (enrolments expire at midnight UTC).
    """

    def __init__(
        self,
        gallery_path: Path,
        master_key_path: Path,
        *,
        today: Callable[[], date] = lambda: utc_now().date(),
        key_source: KeySource = "file",
    ) -> None:
        self._path = gallery_path
        self._master_key_path = master_key_path
        self._key_source = key_source
        self._today = today
        self._lock = threading.Lock()
        self._loaded = self._load(self._stat_key())

    @classmethod
    def from_config(cls, config: UnitConfig) -> LiveGallery:
        return cls(config.gallery.path, config.gallery.master_key_path, key_source=config.gallery.key_source)

    def _stat_key(self) -> StatKey:
        keys = keyring_path(self._master_key_path)
        return (_file_stat(self._path), _file_stat(self._master_key_path), _file_stat(keys))

    def _empty(self, stat_key: StatKey, day: date, error: str | None) -> _Loaded:
        version = "none" if error else "0-empty"
        return _Loaded(stat_key, day, version, np.zeros((0, TEMPLATE_DIM), np.float32), [], 0, 0, error)

    def _load(self, stat_key: StatKey) -> _Loaded:
        day = self._today()
        try:
            master_key = load_master_key(self._master_key_path, self._key_source)
        except MasterKeyError as error:
            log.error("no gallery: %s", error)
            return self._empty(stat_key, day, str(error))
        try:
            contents, sealer = open_gallery(self._path, master_key, keyring_path(self._master_key_path))
            if not contents.digest:
                return self._empty(stat_key, day, None)
            templates, ids = active_templates(sealer, contents, day)
        except GalleryUnreadableError as error:
            log.error("no gallery: %s", error)
            return self._empty(stat_key, day, str(error))
        except OSError as error:
            log.error("no gallery: cannot read %s: %s", self._path, error.strerror)
            return self._empty(stat_key, day, f"cannot read {self._path}: {error.strerror}")
        expired = sum(1 for subject in contents.subjects if subject.info.is_expired(day))
        version = contents.version + (f"-x{expired}" if expired else "")
        log.info("gallery %s loaded: %d subjects, %d templates", version, len(contents.subjects), len(ids))
        return _Loaded(stat_key, day, version, templates, ids, len(contents.subjects) - expired, expired)

    def _refresh(self) -> _Loaded:
        with self._lock:
            stat_key = self._stat_key()
            if stat_key != self._loaded.stat_key or self._loaded.day != self._today():
                self._loaded = self._load(stat_key)
            return self._loaded

    @property
    def version(self) -> str:
        return self._refresh().version

    def templates(self) -> tuple[Templates, list[str]]:
        loaded = self._refresh()
        return loaded.templates, list(loaded.subject_ids)

    @property
    def state(self) -> str:
        """``ok``, ``empty`` or ``no_gallery`` (key or file unusable; ``health()`` says why)."""
        loaded = self._refresh()
        if loaded.error:
            return "no_gallery"
        return "ok" if loaded.subjects else "empty"

    def health(self) -> dict[str, Any]:
        loaded = self._refresh()
        return {
            "gallery_state": self.state,
            "gallery_error": loaded.error,
            "gallery_version": loaded.version,
            "gallery_subjects": loaded.subjects,
            "gallery_expired_pending_purge": loaded.expired,
            "gallery_key_source": self._key_source,
        }
