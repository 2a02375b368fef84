"""Helpers for testing against a real flo-server: certificates today.

Example:
    >>> from flo_server.testing import make_test_ca
    >>> pems = make_test_ca(Path("/tmp/ca"))                       # doctest: +SKIP
    >>> # flo-server --tls-cert pems["cert"] --tls-key pems["key"]
    >>> # FloClient("127.0.0.1:9000", ca_file=pems["ca"])
"""

from __future__ import annotations

import subprocess
from pathlib import Path


def make_test_ca(where: Path) -> dict[str, str]:
    """A throwaway CA and, signed by it, a server certificate for 127.0.0.1/localhost and a client
    certificate (openssl CLI). Returns the PEM paths: ca, cert, key, client_cert, client_key."""
    where.mkdir(parents=True, exist_ok=True)
    p = {k: str(where / f"{k}.pem") for k in ("ca", "ca_key", "cert", "key", "client_cert", "client_key")}

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=flo test CA",
        "-keyout", p["ca_key"], "-out", p["ca"])
    ext = where / "san.cnf"
    ext.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth,clientAuth\n")
    for cert, key, cn in (("cert", "key", "localhost"), ("client_cert", "client_key", "flo test client")):
        csr = where / f"{cert}.csr"
        run("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={cn}", "-keyout", p[key], "-out", str(csr))
        run("x509", "-req", "-in", str(csr), "-CA", p["ca"], "-CAkey", p["ca_key"], "-CAcreateserial",
            "-days", "2", "-extfile", str(ext), "-out", p[cert])
    return p
