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
