"""HS256 compact JWS (JWT) signing with the standard library only, for the reliability
harnesses. As a module: sign(secret, kid, claims). As a program, reads lines
`n<TAB>tid<TAB>sub` on stdin and prints `n<TAB>token` (exp: now + TTL seconds, default a day).
"""
import base64
import hashlib
import hmac
import json
import sys
import time


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def sign(secret: str, kid: str, claims: dict) -> str:
    header = b64url(json.dumps({"alg": "HS256", "typ": "JWT", "kid": kid}, separators=(",", ":")).encode())
    payload = b64url(json.dumps(claims, separators=(",", ":")).encode())
    mac = hmac.new(secret.encode(), f"{header}.{payload}".encode(), hashlib.sha256).digest()
    return f"{header}.{payload}.{b64url(mac)}"


def token(secret: str, kid: str, tid: str, sub: str, ttl: int = 86400) -> str:
    now = int(time.time())
    return sign(secret, kid, {"tid": tid, "sub": sub, "iat": now, "exp": now + ttl})


if __name__ == "__main__":
    secret, kid = sys.argv[1], sys.argv[2]
    ttl = int(sys.argv[3]) if len(sys.argv) > 3 else 86400
    for line in sys.stdin:
        n, tid, sub = line.rstrip("\n").split("\t")
        print(f"{n}\t{token(secret, kid, tid, sub, ttl)}")
