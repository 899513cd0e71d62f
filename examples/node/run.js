// Runs the notes service against PgBouncer in transaction mode, as the test suite does: an
// identity provider's keys (EdDSA and RS256) sign the tokens, their public halves are
// registered with pg_tenancy, 100 requests of two tenants run concurrently through the pooler,
// and the script checks that no request saw or changed another tenant's rows and that a forged
// write is refused.
//
// Environment: TENANCY_EXAMPLE_ADMIN (a superuser's connection string, direct),
// TENANCY_EXAMPLE_POOLER (the application role's connection string through PgBouncer).
import crypto from 'node:crypto';
import pg from 'pg';
import { SignJWT, exportSPKI, generateKeyPair } from 'jose';
import { errorCode, httpStatus, request, withTenant } from './notes.js';

const run = crypto.randomBytes(4).toString('hex');
const tenants = { eddsa: `node-a-${run}`, rs256: `node-b-${run}` };
const algs = { eddsa: 'EdDSA', rs256: 'RS256' };
const checks = [];
function check(name, ok, detail = '') {
  checks.push(ok);
  console.log(`  ${ok ? 'PASS' : 'FAIL'}  ${name}${detail === '' ? '' : ': ' + detail}`);
}

const admin = new pg.Client({ connectionString: process.env.TENANCY_EXAMPLE_ADMIN });
await admin.connect();
const keys = {};
for (const name of Object.keys(tenants)) {
  keys[name] = await generateKeyPair(algs[name], { crv: 'Ed25519', modulusLength: 2048 });
  // `kid` is required: pg_tenancy finds the key by it.
  await admin.query('SELECT tenancy.add_key($1, $2, $3)', [`idp-${name}-${run}`, algs[name], await exportSPKI(keys[name].publicKey)]);
  await admin.query('SELECT tenancy.create_tenant($1)', [tenants[name]]);
  await admin.query(`SELECT tenancy.set_setting($1, 'default_roles', '["member"]')`, [tenants[name]]);
}

async function token(name, sub) {
  // `tid` may be the tenant's slug or its uuid.
  return new SignJWT({ tid: tenants[name], sub })
    .setProtectedHeader({ alg: algs[name], kid: `idp-${name}-${run}` })
    .setIssuedAt()
    .setExpirationTime('10m')
    .sign(keys[name].privateKey);
}
const tokens = { eddsa: await token('eddsa', 'user-eddsa'), rs256: await token('rs256', 'user-rs256') };

const pool = new pg.Pool({ connectionString: process.env.TENANCY_EXAMPLE_POOLER, max: 8 });
const results = await Promise.all(
  Array.from({ length: 100 }, async (_, i) => {
    const name = i % 2 === 0 ? 'eddsa' : 'rs256';
    const seen = await request(pool, tokens[name], `${name}:${i}`);
    return seen.filter((b) => !b.startsWith(`${name}:`)).length;
  }),
);
check('requests served', results.length === 100, String(results.length));
const foreignRead = results.reduce((a, b) => a + b, 0);
check('foreign rows read', foreignRead === 0, String(foreignRead));

const misplaced = await admin.query(
  `SELECT count(*)::int AS n FROM notes.notes n JOIN tenancy.tenant t ON t.id = n.tenant_id
    WHERE t.slug = ANY($1) AND split_part(n.body, ':', 1) <> CASE t.slug WHEN $2 THEN 'eddsa' ELSE 'rs256' END`,
  [Object.values(tenants), tenants.eddsa],
);
check('foreign rows written', misplaced.rows[0].n === 0, String(misplaced.rows[0].n));

const other = await admin.query('SELECT id FROM tenancy.tenant WHERE slug = $1', [tenants.rs256]);
try {
  await withTenant(pool, tokens.eddsa, (c) => c.query("INSERT INTO notes.notes (tenant_id, body) VALUES ($1, 'forged')", [other.rows[0].id]));
  check('a forged write is refused', false, 'it was written');
} catch (e) {
  check('a forged write is refused', e.code === '42501', e.code);
  check('its code maps to 403', errorCode(e) === 'cross_tenant_write_refused' && httpStatus(e) === 403, `${errorCode(e)} -> ${httpStatus(e)}`);
}

// A request without a token: 28000 token_missing, answered 401.
{
  const client = await pool.connect();
  try {
    await client.query('BEGIN');
    await client.query('SELECT tenancy.bind($1)', [null]);
    check('a missing token is refused', false, 'it bound');
  } catch (e) {
    check('a missing token is refused with 401', errorCode(e) === 'token_missing' && httpStatus(e) === 401, `${e.code} ${errorCode(e)} -> ${httpStatus(e)}`);
  } finally {
    await client.query('ROLLBACK').catch(() => {});
    client.release();
  }
}

await pool.end();
await admin.end();
const failed = checks.filter((c) => !c).length;
console.log(
  `\u001b[1mexamples/node: ${failed === 0 ? 'PASS' : 'FAIL'} (${failed === 0 ? `${checks.length} checks passed` : `${failed} of ${checks.length} checks failed`})\u001b[0m`,
);
process.exit(failed === 0 ? 0 : 1);
