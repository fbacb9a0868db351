"""Writes a fresh CA and a broker certificate for the secured local broker (`kafka.sh start --secure`).

Kafka 4.0 reads PEM stores directly (`ssl.keystore.type=PEM`), so no keytool is needed; its PEM
keystore wants the private key as unencrypted PKCS#8, which trustme does not write, hence the
conversion. The certificate names 127.0.0.1 and localhost: the broker listens on loopback only.

    python tls.py DIR   ->  DIR/ca.pem (clients trust it), DIR/broker.pem (key + chain, mode 600)
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import trustme
from cryptography.hazmat.primitives import serialization


def write(directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    ca = trustme.CA(organization_name="crm-sync local broker")
    cert = ca.issue_cert("127.0.0.1", "localhost")
    key = serialization.load_pem_private_key(cert.private_key_pem.bytes(), password=None)
    pkcs8 = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    keystore = directory / "broker.pem"
    keystore.touch(mode=0o600)
    keystore.write_bytes(pkcs8 + b"".join(blob.bytes() for blob in cert.cert_chain_pems))
    (directory / "ca.pem").write_bytes(ca.cert_pem.bytes())


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: tls.py DIR")
    os.umask(0o077)
    write(Path(sys.argv[1]))
