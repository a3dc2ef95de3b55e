"""An egress-edge handle minter written from docs/handle-format.md alone (no egress-edge code),
to show that another language can mint handles an edge accepts as an external issuer.

usage: handle_minter.py --key PRIVATE.pem --issuer ID --credential NAME [--credential NAME]
                        [--ttl SECONDS] [--iat-offset SECONDS] [--session S] [--sandbox S]
                        [--host H] [--method M]... [--path-prefix P]...
Prints the handle on stdout. Needs the `cryptography` package.
"""
import argparse
import base64
import hashlib
import os
import struct
import sys
import time

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

CONTEXT = b"eeh-v1\x00"


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def string(s: str) -> bytes:
    raw = s.encode("ascii")
    if not 1 <= len(raw) <= 255 or any(not 0x21 <= b <= 0x7E for b in raw):
        raise ValueError(f"not encodable as a handle string: {s!r}")
    return bytes([len(raw)]) + raw


def opt(value, encode) -> bytes:
    return b"\x00" if value is None else b"\x01" + encode(value)


def lst(items) -> bytes:
    if not 1 <= len(items) <= 255:
        raise ValueError("a list holds 1 to 255 items")
    return bytes([len(items)]) + b"".join(string(i) for i in items)


def mint(key: Ed25519PrivateKey, issuer: str, credentials, ttl: int, iat_offset: int = 0,
         session=None, sandbox=None, host=None, methods=None, path_prefixes=None) -> str:
    public = key.public_key().public_bytes(serialization.Encoding.Raw,
                                           serialization.PublicFormat.Raw)
    kid = hashlib.sha256(public).digest()[:8]
    iat = int(time.time()) + iat_offset
    payload = (
        b"\x01" + kid + os.urandom(16) + struct.pack(">QQ", iat, iat + ttl)
        + opt(session, string)
        + lst(credentials)
        + opt(host, string)
        + opt(methods or None, lst)
        + opt(path_prefixes or None, lst)
    )
    # Extension records in increasing tag order: 0x01 sandbox, 0x02 issuer.
    if sandbox is not None:
        payload += b"\x01" + string(sandbox)
    payload += b"\x02" + string(issuer)
    signature = key.sign(CONTEXT + payload)
    return "eeh_" + b64(payload) + "." + b64(signature)


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--key", required=True)
    p.add_argument("--issuer", required=True)
    p.add_argument("--credential", action="append", required=True)
    p.add_argument("--ttl", type=int, default=600)
    p.add_argument("--iat-offset", type=int, default=0)
    p.add_argument("--session")
    p.add_argument("--sandbox")
    p.add_argument("--host")
    p.add_argument("--method", action="append", default=[])
    p.add_argument("--path-prefix", action="append", default=[])
    a = p.parse_args()
    with open(a.key, "rb") as f:
        key = serialization.load_pem_private_key(f.read(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        print("not an Ed25519 private key", file=sys.stderr)
        return 1
    print(mint(key, a.issuer, a.credential, a.ttl, a.iat_offset, a.session, a.sandbox, a.host,
               a.method, a.path_prefix))
    return 0


if __name__ == "__main__":
    sys.exit(main())
