"""The secret key of a checkout that was given none: random, made once, kept out of the repository."""

import os
import secrets
import tempfile
from pathlib import Path


def local_secret_key(path: Path) -> str:
    """Read the key kept at `path`, or make one there (readable by this user only) and return it."""
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    key = secrets.token_urlsafe(50)
    # Written whole to a temporary file (mkstemp: mode 0600) and linked into place: processes starting at once all
    # end up with the first one's key, and none reads a half-written file.
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=".secret-key-")
    try:
        with os.fdopen(fd, "w") as out:
            out.write(key + "\n")
        try:
            os.link(temporary, path)
        except FileExistsError:
            return path.read_text().strip()
    finally:
        os.unlink(temporary)
    return key
