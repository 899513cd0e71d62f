//! Verification keys for tokens: register and revoke, by key admins (`tenancy_key_admin`), never
//! by operators: whoever can register a key can mint tokens for any subject, so that duty is
//! kept apart from managing tenants' access. Key material is stored in a table only its owner
//! can read and never appears in an error message.

use crate::authz;
use crate::binding::token;
use crate::catalog::{self, to_pg_uuid};
use crate::errors::{self, DUPLICATE_OBJECT, INVALID_PARAMETER, UNDEFINED_OBJECT};
use pgrx::prelude::*;

#[pg_extern(volatile, parallel_unsafe)]
fn add_key(
    kid: &str,
    alg: &str,
    key: &str,
    tenant: default!(Option<&str>, "NULL"),
    not_after: default!(Option<pgrx::datum::TimestampWithTimeZone>, "NULL"),
) {
    authz::require_key_admin("add_key");
    if kid.is_empty() || kid.len() > 200 {
        errors::raise(
            INVALID_PARAMETER,
            "key ids (kid) are 1 to 200 characters",
            "Use the kid your token issuer puts in its headers.",
        );
    }
    let Some(algorithm) = token::parse_algorithm(alg) else {
        errors::raise(
            INVALID_PARAMETER,
            format!("unsupported algorithm \"{alg}\""),
            "Use one of HS256, HS384, HS512, EdDSA, ES256, RS256.",
        );
    };
    if let Err(why) = token::parse_key(algorithm, key) {
        errors::raise(
            INVALID_PARAMETER,
            format!("invalid {alg} key for kid \"{kid}\": {why}"),
            "HMAC keys are a secret of at least 32 bytes (or 'base64:' and its base64); EdDSA, ES256 and RS256 keys are a public key in PEM form or a JWK.",
        );
    }
    let past = not_after.is_some_and(|na| {
        catalog::read_one::<bool>("SELECT $1 <= pg_catalog.now()", &[na.into()]).unwrap_or(false)
    });
    if past {
        errors::raise(
            INVALID_PARAMETER,
            format!(
                "key \"{kid}\" would expire before it is registered (not_after is in the past)"
            ),
            "Pass a not_after in the future, or NULL for a key without one.",
        );
    }
    let tenant_id = tenant.map(|t| catalog::require_tenant(t).id);
    if catalog::key(kid, crate::binding::token::decode_key).is_some() {
        errors::raise(
            DUPLICATE_OBJECT,
            format!("key \"{kid}\" already exists"),
            "Key ids are never reused, even after revocation; register the new key under a new kid.",
        );
    }
    catalog::write(
        "INSERT INTO tenancy.signing_key (kid, alg, key_material, tenant_id, not_after, created_by) \
         VALUES ($1, $2, $3, $4, $5, session_user)",
        &[kid.into(), alg.into(), key.into(), tenant_id.map(to_pg_uuid).into(), not_after.into()],
    );
    crate::audit::admin(
        "add_key",
        tenant_id,
        serde_json::json!({"kid": kid, "alg": alg}),
    );
}

#[pg_extern(volatile, parallel_unsafe)]
fn revoke_key(kid: &str) {
    authz::require_key_admin("revoke_key");
    let Some(k) = catalog::key(kid, crate::binding::token::decode_key) else {
        errors::raise(
            UNDEFINED_OBJECT,
            format!("key \"{kid}\" does not exist"),
            "SELECT kid FROM tenancy.keys lists the registered keys.",
        );
    };
    catalog::write(
        "UPDATE tenancy.signing_key SET revoked_at = now() WHERE kid = $1 AND revoked_at IS NULL",
        &[kid.into()],
    );
    crate::audit::admin("revoke_key", k.tenant, serde_json::json!({"kid": kid}));
}
