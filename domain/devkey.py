"""The development signing key: an RSA key pair made once on a developer's machine.

It lets ``helpdesk token`` mint tokens that the service accepts when ``APP_ENV=development`` and
no real key is configured. It lives outside the repository (``HELPDESK_DEV_KEY_DIR``, default
``.devkeys/`` in the working directory, which git ignores).
"""

from __future__ import annotations

import os
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

PRIVATE_NAME = "dev-private.pem"
PUBLIC_NAME = "dev-public.pem"


def dev_key_dir() -> Path:
    return Path(os.environ.get("HELPDESK_DEV_KEY_DIR", ".devkeys"))


def ensure_dev_keypair(directory: Path | None = None) -> tuple[bytes, bytes]:
    """Return (private PEM, public PEM), generating and saving the pair on first use."""
    directory = directory or dev_key_dir()
    private_path, public_path = directory / PRIVATE_NAME, directory / PUBLIC_NAME
    if private_path.exists() and public_path.exists():
        return private_path.read_bytes(), public_path.read_bytes()
    directory.mkdir(parents=True, exist_ok=True)
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    # Write to a temporary name first so a concurrent reader never sees half a key.
    tmp = private_path.with_suffix(".tmp")
    tmp.write_bytes(private_pem)
    tmp.chmod(0o600)
    tmp.replace(private_path)
    public_path.write_bytes(public_pem)
    return private_pem, public_pem
