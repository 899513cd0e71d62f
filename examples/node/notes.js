// A small multi-tenant notes service on pg_tenancy, the way an application wires it with
// node-postgres: one helper runs a request's work in one transaction bound to the request's
// token, on one client of the pool.

/**
 * Run `work(client)` in a transaction bound to `token`, on a client of `pool`.
 *
 * Never `pool.query('BEGIN')`: each `pool.query` may run on another client, and a pooled
 * client left inside a bound transaction would serve the next request with the first one's
 * tenant. Take one client, and always end the transaction before releasing it.
 *
 * Statements with parameters are sent unnamed, which is safe behind PgBouncer in transaction
 * mode; do not give queries a `name` (a named statement lives on one server connection).
 */
export async function withTenant(pool, token, work) {
  if (!token) {
    throw new Error('no token for this request');
  }
  const client = await pool.connect();
  try {
    await client.query('BEGIN');
    await client.query('SELECT tenancy.bind($1)', [token]);
    const result = await work(client);
    await client.query('COMMIT');
    return result;
  } catch (e) {
    await client.query('ROLLBACK').catch(() => {});
    throw e;
  } finally {
    client.release();
  }
}

/** One request: add a note, then list the notes the request may see. */
export async function request(pool, token, body) {
  return withTenant(pool, token, async (client) => {
    await client.query('INSERT INTO notes.notes (body) VALUES ($1)', [body]);
    const r = await client.query('SELECT body FROM notes.notes ORDER BY id');
    return r.rows.map((row) => row.body);
  });
}

// pg_tenancy's machine-readable codes (README, "Errors an application can map") as HTTP statuses.
const HTTP_STATUS = {
  ...Object.fromEntries(
    ['token_missing', 'token_invalid', 'token_expired', 'token_not_yet_valid', 'token_revoked',
      'key_unknown', 'key_expired', 'key_wrong_tenant', 'unknown_tenant', 'binding_expired'].map((c) => [c, 401]),
  ),
  ...Object.fromEntries(
    ['tenant_unavailable', 'membership_removed', 'mapping_removed', 'support_ended',
      'privilege_refused', 'cross_tenant_write_refused'].map((c) => [c, 403]),
  ),
  wrong_region: 421,
};

/** The code in a pg_tenancy refusal's DETAIL ("pg_tenancy: <code>"), or null. */
export function errorCode(err) {
  const line = (err.detail ?? '').split('\n').find((l) => l.startsWith('pg_tenancy: '));
  return line ? line.slice('pg_tenancy: '.length) : null;
}

/** The HTTP status to answer a request that failed with `err`: unmapped is the app's own bug. */
export function httpStatus(err) {
  return HTTP_STATUS[errorCode(err)] ?? 500;
}
