"""Runs the notes service against PgBouncer in transaction mode, as the test suite does.

An identity provider's key pair (EdDSA, and RS256 for a second tenant) signs the tokens; the
public keys are registered with pg_tenancy; then 8 threads x 200 requests of two tenants go
through the pooler, and the script checks that no request saw or changed another tenant's
rows, that a forged write is refused, and that psycopg's pipeline mode binds in the same round
trip as the first query.

Environment: TENANCY_EXAMPLE_ADMIN (a superuser's connection string, direct),
TENANCY_EXAMPLE_POOLER (the application role's connection string through PgBouncer).
"""

import concurrent.futures
import os
import sys
import time
import uuid

import jwt
import psycopg
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

import notes

ADMIN = os.environ["TENANCY_EXAMPLE_ADMIN"]
POOLER = os.environ["TENANCY_EXAMPLE_POOLER"]
RUN = uuid.uuid4().hex[:8]
TENANTS = {"eddsa": f"py-a-{RUN}", "rs256": f"py-b-{RUN}"}
checks = []


def check(name: str, ok: bool, detail: str = "") -> None:
    checks.append(ok)
    print(f"  {'PASS' if ok else 'FAIL'}  {name}{': ' + detail if detail else ''}", flush=True)


def public_pem(key) -> str:
    return key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()


def main() -> int:
    # The identity provider's keys. `kid` is required: pg_tenancy finds the key by it.
    keys = {"eddsa": ed25519.Ed25519PrivateKey.generate(), "rs256": rsa.generate_private_key(public_exponent=65537, key_size=2048)}
    algs = {"eddsa": "EdDSA", "rs256": "RS256"}
    with psycopg.connect(ADMIN, autocommit=True) as c:
        for name, key in keys.items():
            c.execute("SELECT tenancy.add_key(%s, %s, %s)", (f"idp-{name}-{RUN}", algs[name], public_pem(key)))
        for slug in TENANTS.values():
            c.execute("SELECT tenancy.create_tenant(%s)", (slug,))
            # Every subject of the example is a member of its tenant.
            c.execute("SELECT tenancy.set_setting(%s, 'default_roles', '[\"member\"]')", (slug,))

    def token(name: str, sub: str) -> str:
        # `tid` may be the tenant's slug or its uuid.
        return jwt.encode(
            {"tid": TENANTS[name], "sub": sub, "iat": int(time.time()), "exp": int(time.time()) + 600},
            keys[name],
            algorithm=algs[name],
            headers={"kid": f"idp-{name}-{RUN}"},
        )

    sessions = notes.make_sessions(POOLER.replace("postgresql://", "postgresql+psycopg://", 1))
    tokens = {name: token(name, f"user-{name}") for name in TENANTS}

    def one(i: int) -> tuple[int, int]:
        name = "eddsa" if i % 2 == 0 else "rs256"
        seen = notes.request(sessions, tokens[name], f"{name}:{i}")
        foreign = sum(1 for b in seen if not b.startswith(name + ":"))
        return foreign, len(seen)

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        results = list(pool.map(one, range(1600)))
    check("requests served", len(results) == 1600, str(len(results)))
    check("foreign rows read", sum(f for f, _ in results) == 0, str(sum(f for f, _ in results)))

    # Every stored note is in its own tenant (no request changed another tenant's rows).
    with psycopg.connect(ADMIN) as c:
        misplaced = c.execute(
            "SELECT count(*) FROM notes.notes n JOIN tenancy.tenant t ON t.id = n.tenant_id "
            "WHERE t.slug = ANY(%s) AND split_part(n.body, ':', 1) <> CASE t.slug WHEN %s THEN 'eddsa' ELSE 'rs256' END",
            (list(TENANTS.values()), TENANTS["eddsa"]),
        ).fetchone()[0]
        other_id = c.execute("SELECT id FROM tenancy.tenant WHERE slug = %s", (TENANTS["rs256"],)).fetchone()[0]
    check("foreign rows written", misplaced == 0, str(misplaced))

    # A forged write: the request's tenant names the other tenant's id.
    with psycopg.connect(POOLER, prepare_threshold=None) as c:
        try:
            with c.transaction():
                c.execute("SELECT tenancy.bind(%s)", (tokens["eddsa"],))
                c.execute("INSERT INTO notes.notes (tenant_id, body) VALUES (%s, 'forged')", (other_id,))
            check("a forged write is refused", False, "it was written")
        except psycopg.errors.InsufficientPrivilege as e:
            check("a forged write is refused", True, e.sqlstate)
            check("its code maps to 403", (notes.error_code(e), notes.http_status(e)) == ("cross_tenant_write_refused", 403),
                  f"{notes.error_code(e)} -> {notes.http_status(e)}")

    # A request without a token: 28000 token_missing, answered 401.
    with psycopg.connect(POOLER, prepare_threshold=None) as c:
        try:
            with c.transaction():
                c.execute("SELECT tenancy.bind(%s)", (None,))
            check("a missing token is refused", False, "it bound")
        except psycopg.errors.InvalidAuthorizationSpecification as e:
            check("a missing token is refused with 401", notes.http_status(e) == 401, f"{notes.error_code(e)} -> {notes.http_status(e)}")

    # Fewer round trips: in pipeline mode, BEGIN, the bind and the first query leave together and
    # come back together.
    with psycopg.connect(POOLER, prepare_threshold=None) as c:
        with c.pipeline():
            with c.transaction():
                c.execute("SELECT tenancy.bind(%s)", (tokens["rs256"],))
                cur = c.execute("SELECT count(*) FILTER (WHERE body NOT LIKE 'rs256:%%'), count(*) FROM notes.notes")
                foreign, total = cur.fetchone()
    check("pipeline mode: bind and query in one round trip", foreign == 0 and total > 0, f"{foreign} foreign of {total}")

    failed = checks.count(False)
    status = "PASS" if failed == 0 else "FAIL"
    detail = f"{len(checks)} checks passed" if failed == 0 else f"{failed} of {len(checks)} checks failed"
    print(f"\033[1mexamples/python: {status} ({detail})\033[0m")
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
