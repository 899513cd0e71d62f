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
    let tenant_id = tenant.map(|t| catalog::require_tenant(t).id);
    check_key(kid, alg, key, not_after);
    if catalog::key(kid, crate::binding::token::decode_key).is_some() {
        errors::raise(
            DUPLICATE_OBJECT,
            format!("key \"{kid}\" already exists"),
            "Key ids are never reused, even after revocation; register the new key under a new kid.",
        );
    }
    insert_key(kid, alg, key, tenant_id, not_after);
}

/// Refuse a key that could not verify a token: a bad kid, an unsupported algorithm, material
/// that is not a key of that algorithm, a not_after already past.
fn check_key(
    kid: &str,
    alg: &str,
    key: &str,
    not_after: Option<pgrx::datum::TimestampWithTimeZone>,
) {
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
        let jwks = serde_json::from_str::<serde_json::Value>(key)
            .is_ok_and(|v| v.get("keys").is_some_and(|k| k.is_array()));
        let hint = if jwks {
            "This is a JWKS document (a set of keys): import it with tenancy.add_keys(jwks), which registers each key under its kid."
        } else if alg.starts_with("HS") {
            "HMAC keys are a secret of at least 32 bytes (or 'base64:' and its base64), or an oct JWK."
        } else {
            "EdDSA, ES256 and RS256 keys are a public key in PEM form (-----BEGIN PUBLIC KEY-----) or one JWK (a JSON object with kty)."
        };
        errors::raise(
            INVALID_PARAMETER,
            format!("invalid {alg} key for kid \"{kid}\": {why}"),
            hint,
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
}

fn insert_key(
    kid: &str,
    alg: &str,
    key: &str,
    tenant_id: Option<uuid::Uuid>,
    not_after: Option<pgrx::datum::TimestampWithTimeZone>,
) {
    // A tenant's key is added under the tenant's lock, to a tenant found not decommissioned
    // after it (a key admin added keys to a decommissioned tenant, whose certificate had listed
    // them removed: an attacker's pass).
    if let Some(t) = tenant_id.and_then(catalog::tenant_by_id) {
        catalog::lock_live_tenant(&t);
    }
    catalog::write(
        "INSERT INTO tenancy.signing_key (kid, alg, key_material, tenant_id, not_after, created_by) \
         VALUES ($1, $2, $3, $4, $5, $6::name)",
        // The session's user as a value: on Citus, `session_user` in the statement was
        // evaluated on each node, where the connection's user (the superuser) was recorded
        // (a reviewer's pass).
        &[
            kid.into(),
            alg.into(),
            key.into(),
            tenant_id.map(to_pg_uuid).into(),
            not_after.into(),
            crate::authz::role_name(crate::pg::unguarded::session_user_id()).into(),
        ],
    );
    crate::audit::admin(
        "add_key",
        tenant_id,
        serde_json::json!({"kid": kid, "alg": alg}),
    );
}

/// The algorithm of a JWK from a JWKS: its `alg` if it names one, else the one algorithm
/// pg_tenancy verifies for its key type (RSA: RS256, EC P-256: ES256, OKP Ed25519: EdDSA).
/// Symmetric (oct) keys must name their algorithm.
fn jwk_algorithm(jwk: &serde_json::Map<String, serde_json::Value>) -> Result<String, String> {
    let s = |k: &str| jwk.get(k).and_then(|v| v.as_str());
    let implied = match (s("kty"), s("crv")) {
        (Some("RSA"), _) => Some("RS256"),
        (Some("EC"), Some("P-256")) => Some("ES256"),
        (Some("OKP"), Some("Ed25519")) => Some("EdDSA"),
        (Some("oct"), _) => None,
        (Some(kty), crv) => {
            return Err(format!(
                "key type {kty}{} is not supported",
                crv.map(|c| format!(" ({c})")).unwrap_or_default()
            ))
        }
        (None, _) => return Err("it has no kty".into()),
    };
    match (s("alg"), implied) {
        (Some(alg), Some(implied)) if alg != implied => Err(format!(
            "its alg {alg} does not match its key type (pg_tenancy verifies {implied} with it)"
        )),
        (Some(alg), _) => Ok(alg.to_string()),
        (None, Some(implied)) => Ok(implied.to_string()),
        (None, None) => Err("a symmetric (oct) key must name its alg".into()),
    }
}

/// Import the signing keys of a JWKS document (`{"keys": [...]}`), as identity providers
/// publish them, each under its `kid`. Keys for encryption (`"use": "enc"`) are skipped. A kid
/// already registered with the same key is left as it is (so the document can be imported
/// again after the provider adds a key); a kid registered with another key is refused. All or
/// nothing: every key is checked before any is registered.
#[pg_extern(volatile, parallel_unsafe)]
fn add_keys(
    jwks: pgrx::JsonB,
    tenant: default!(Option<&str>, "NULL"),
    not_after: default!(Option<pgrx::datum::TimestampWithTimeZone>, "NULL"),
) -> TableIterator<
    'static,
    (
        name!(kid, String),
        name!(alg, Option<String>),
        name!(status, String),
    ),
> {
    authz::require_key_admin("add_keys");
    let tenant_id = tenant.map(|t| catalog::require_tenant(t).id);
    let keys = match jwks.0.get("keys").and_then(|k| k.as_array()) {
        Some(keys) if !keys.is_empty() && keys.len() <= 100 => keys.clone(),
        Some(keys) if keys.len() > 100 => errors::raise(
            INVALID_PARAMETER,
            format!("the JWKS holds {} keys, more than 100", keys.len()),
            "Import the keys your tokens are signed with.",
        ),
        _ => errors::raise(
            INVALID_PARAMETER,
            "not a JWKS document: expected an object with a non-empty array \"keys\"",
            "Pass the document your identity provider publishes (its jwks_uri), or register one key with tenancy.add_key().",
        ),
    };
    let mut rows = Vec::new();
    let mut to_add = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for (i, k) in keys.iter().enumerate() {
        let Some(jwk) = k.as_object() else {
            errors::raise(
                INVALID_PARAMETER,
                format!("key {} of the JWKS is not an object", i + 1),
                "Each entry of \"keys\" is a JWK.",
            );
        };
        let Some(kid) = jwk.get("kid").and_then(|v| v.as_str()).map(str::to_string) else {
            errors::raise(
                INVALID_PARAMETER,
                format!("key {} of the JWKS has no kid", i + 1),
                "Tokens name their key by kid: pg_tenancy registers only keys with a kid.",
            );
        };
        if !seen.insert(kid.clone()) {
            errors::raise(
                INVALID_PARAMETER,
                format!("the JWKS holds kid \"{kid}\" twice"),
                "Each key of a JWKS has a kid of its own.",
            );
        }
        if jwk.get("use").and_then(|v| v.as_str()) == Some("enc") {
            rows.push((kid, None, "skipped: an encryption key".to_string()));
            continue;
        }
        let alg = jwk_algorithm(jwk).unwrap_or_else(|why| {
            errors::raise(
                INVALID_PARAMETER,
                format!("key \"{kid}\" of the JWKS cannot be imported: {why}"),
                "pg_tenancy verifies HS256, HS384, HS512, EdDSA (Ed25519), ES256 (P-256) and RS256.",
            )
        });
        let material = serde_json::Value::Object(jwk.clone()).to_string();
        check_key(&kid, &alg, &material, not_after);
        let existing = catalog::owner_rows(
            "a signing key",
            "SELECT key_material, revoked_at IS NOT NULL FROM tenancy.signing_key WHERE kid = $1",
            &[kid.as_str().into()],
            |r| {
                Ok((
                    r.get::<String>(1)?.unwrap_or_default(),
                    r.get::<bool>(2)?.unwrap_or(false),
                ))
            },
        );
        match existing.first() {
            None => {
                rows.push((kid.clone(), Some(alg.clone()), "added".to_string()));
                to_add.push((kid, alg, material));
            }
            Some((stored, revoked)) => {
                let same = serde_json::from_str::<serde_json::Value>(stored)
                    .is_ok_and(|v| v == serde_json::Value::Object(jwk.clone()));
                if !same {
                    errors::raise(
                        DUPLICATE_OBJECT,
                        format!("key \"{kid}\" is already registered with another key"),
                        "Key ids are never reused, even after revocation: the provider must publish a new key under a new kid.",
                    );
                }
                let status = if *revoked {
                    "revoked: left revoked"
                } else {
                    "unchanged"
                };
                rows.push((kid, Some(alg), status.to_string()));
            }
        }
    }
    for (kid, alg, material) in &to_add {
        insert_key(kid, alg, material, tenant_id, not_after);
    }
    TableIterator::new(rows)
}

#[pg_extern(volatile, parallel_unsafe)]
fn revoke_key(kid: Option<&str>) {
    authz::require_key_admin("revoke_key");
    let kid = errors::not_null("revoke_key", "kid", kid);
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
