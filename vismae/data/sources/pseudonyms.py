"""Salted pseudonyms for identifiers read from DICOM headers.

A manifest built from a folder of clinical DICOMs must group images by patient and study
without carrying PatientID or the study and instance UIDs themselves. Each id becomes a keyed
hash (HMAC-SHA256 with a secret salt): the same id and salt always give the same pseudonym,
so reruns and later additions keep their ids, while without the salt nobody can test a list
of candidate ids against the manifest. The salt is a secret: keep its file out of anything
shared with the manifest.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
from pathlib import Path

from vismae.io import atomic_path

log = logging.getLogger(__name__)

LENGTH = 16  # hex digits: 64 bits, no collision to fear among millions of ids


def pseudonym(salt: str, kind: str, value: str) -> str:
    """The pseudonym of ``value``; ``kind`` (patient, study, image) keeps equal ids of
    different kinds apart."""
    message = f"{kind}\0{value}".encode()
    return hmac.new(salt.encode(), message, hashlib.sha256).hexdigest()[:LENGTH]


def salt_from_file(path: Path) -> str:
    """The salt stored in ``path``; a new random one is written there (owner-only) if absent."""
    path = Path(path)
    if path.is_file():
        salt = path.read_text().strip()
        if not salt:
            raise ValueError(f"{path}: the salt file is empty; delete it to draw a new salt")
        return salt
    salt = secrets.token_hex(32)
    with atomic_path(path) as temporary:
        temporary.write_text(salt + "\n")
        os.chmod(temporary, 0o600)
    log.info("drew a new salt into %s: keep that file private, and keep it for the same ids on rerun", path)
    return salt


def choose_salt(salt: str | None, salt_file: Path | None) -> str:
    """The salt given, else the one stored in (or first written to) ``salt_file``."""
    if salt is not None:
        if not salt.strip():
            raise ValueError("the salt is empty; give a non-empty secret text")
        return salt.strip()
    if salt_file is None:
        raise ValueError("pseudonymous ids need a salt: give one, or a salt file to read or create")
    return salt_from_file(salt_file)
