//! Deletion certificates that cannot be forged.
//!
//! decommission_tenant returns (and records in the tenant's chain) a certificate of what it
//! deleted, signed with Ed25519 under the platform's certificate key: a secret only the owner of
//! pg_tenancy's catalog reads, created at the first decommission and kept by pg_dump; its public
//! half is in `tenancy.certificate_keys` for anyone to check a certificate with, also outside
//! the database. The signed bytes are the certificate without `signature`, as JSON with its keys
//! sorted and no spaces (serde_json's output; jsonb keeps the same keys and values, so a
//! certificate read back from a jsonb column verifies).

use crate::catalog;
use crate::errors;
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use pgrx::prelude::*;
use pgrx::JsonB;

/// The platform's signing key: (key id, key), created on first use.
fn signing_key() -> (String, SigningKey) {
    let read = || {
        catalog::owner_rows(
            "tenancy.certificate_key",
            "SELECT key_id, secret FROM tenancy.certificate_key ORDER BY created_at DESC, key_id LIMIT 1",
            &[],
            |r| {
                Ok((
                    r.get::<String>(1)?.unwrap_or_default(),
                    r.get::<Vec<u8>>(2)?.unwrap_or_default(),
                ))
            },
        )
        .into_iter()
        .next()
    };
    let found = read().or_else(|| {
        let mut secret = [0u8; 32];
        // SAFETY: fills the buffer from the operating system's strong random source.
        if !unsafe { pgrx::pg_sys::pg_strong_random(secret.as_mut_ptr().cast(), secret.len()) } {
            pgrx::error!("pg_tenancy: no strong random source for the certificate key");
        }
        let key = SigningKey::from_bytes(&secret);
        let public = key.verifying_key().to_bytes();
        let key_id = hex::encode(&<sha2::Sha256 as sha2::Digest>::digest(public)[..8]);
        catalog::write(
            "INSERT INTO tenancy.certificate_key (key_id, secret, public_key) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
            &[key_id.as_str().into(), secret.to_vec().into(), public.to_vec().into()],
        );
        read()
    });
    let (key_id, secret) = found.unwrap_or_default();
    let bytes: [u8; 32] = secret.try_into().unwrap_or_else(|_| {
        errors::raise(
            errors::NOT_IN_PREREQUISITE_STATE,
            "the platform's certificate key is damaged",
            "Restore tenancy.certificate_key from a dump.",
        )
    });
    (key_id, SigningKey::from_bytes(&bytes))
}

/// The bytes a certificate's signature covers.
fn signed_bytes(cert: &serde_json::Value) -> Vec<u8> {
    let mut c = cert.clone();
    if let Some(o) = c.as_object_mut() {
        o.remove("signature");
    }
    c.to_string().into_bytes()
}

/// Sign the bytes of an assertion carried to Citus workers (`src/binding/carrier.rs`, whose
/// signed bytes begin with a context line, never with a certificate's `{`): the key id and
/// the signature.
pub fn sign_assertion(message: &[u8]) -> (String, Vec<u8>) {
    let (key_id, key) = signing_key();
    (key_id, key.sign(message).to_bytes().to_vec())
}

/// Create the platform's certificate key now if there is none (`citus_setup()`: the workers
/// verify what the coordinator signs with it, so it must be on every node before the first
/// decommission's transaction uses it).
pub fn ensure_key() {
    let _ = signing_key();
}

/// Whether the platform's certificate key exists (committed or made in this transaction).
pub fn has_key() -> bool {
    !catalog::owner_rows(
        "tenancy.certificate_key",
        "SELECT 1 FROM tenancy.certificate_key LIMIT 1",
        &[],
        |r| r.get::<i32>(1),
    )
    .is_empty()
}

/// Sign `cert` in place: adds `key_id` and `signature` (hex).
pub fn sign(cert: &mut serde_json::Value) {
    let (key_id, key) = signing_key();
    cert["signature_algorithm"] = "Ed25519".into();
    cert["key_id"] = key_id.into();
    let signature = key.sign(&signed_bytes(cert));
    cert["signature"] = hex::encode(signature.to_bytes()).into();
}

/// Whether `certificate` is a deletion certificate signed by this platform's certificate key,
/// unchanged since it was signed. Anyone may check one.
#[pg_extern(stable, parallel_safe)]
fn verify_certificate(certificate: JsonB) -> bool {
    let cert = certificate.0;
    let (Some(key_id), Some(sig)) = (
        cert.get("key_id").and_then(|v| v.as_str()),
        cert.get("signature").and_then(|v| v.as_str()),
    ) else {
        return false;
    };
    let Some(sig) = hex::decode(sig)
        .ok()
        .and_then(|b| <[u8; 64]>::try_from(b).ok())
        .map(|b| Signature::from_bytes(&b))
    else {
        return false;
    };
    let public = catalog::owner_rows(
        "tenancy.certificate_key",
        "SELECT public_key FROM tenancy.certificate_key WHERE key_id = $1",
        &[key_id.into()],
        |r| Ok(r.get::<Vec<u8>>(1)?.unwrap_or_default()),
    );
    let Some(key) = public
        .into_iter()
        .next()
        .and_then(|b| <[u8; 32]>::try_from(b).ok())
        .and_then(|b| VerifyingKey::from_bytes(&b).ok())
    else {
        return false;
    };
    cert.get("certificate").and_then(|v| v.as_str()) == Some("pg_tenancy deletion certificate")
        && key.verify(&signed_bytes(&cert), &sig).is_ok()
}
