//! Parsing and verification of compact JWS tokens (JWT). Pure Rust, no PostgreSQL calls, so it
//! is unit- and property-tested without a server. Cryptography comes from `jsonwebtoken`
//! (RustCrypto backend); nothing here compares secrets by hand.

use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey};
use serde_json::{Map, Value};

/// Why a token was refused. The messages never say which part of a signature was wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenError {
    Empty,
    TooLarge(usize),
    Malformed,
    MissingKid,
    /// The header's `alg` is not the algorithm of the key named by `kid`.
    AlgorithmMismatch,
    BadSignature,
    MissingClaim(String),
    InvalidClaim(String),
    /// A member name appears twice in the header or the claims: parsers disagree on which one
    /// wins, so an issuer and pg_tenancy could read different tenants from one token.
    DuplicateMember,
    /// The header lists critical extensions (`crit`); pg_tenancy understands none.
    CriticalExtension,
}

impl TokenError {
    pub fn message(&self) -> String {
        match self {
            TokenError::Empty => "token is empty".into(),
            TokenError::TooLarge(n) => format!("token is too large ({n} bytes)"),
            TokenError::Malformed => {
                "token is malformed: expected a compact JWS (header.payload.signature)".into()
            }
            TokenError::MissingKid => "token header has no \"kid\"".into(),
            TokenError::AlgorithmMismatch => "token algorithm does not match its key".into(),
            TokenError::BadSignature => "token signature is invalid".into(),
            TokenError::MissingClaim(c) => format!("token has no \"{c}\" claim"),
            TokenError::InvalidClaim(c) => format!("token claim \"{c}\" is invalid"),
            TokenError::DuplicateMember => "token header or claims repeat a member name".into(),
            TokenError::CriticalExtension => {
                "token header lists critical extensions (\"crit\"), which are not supported".into()
            }
        }
    }
}

/// Claims of a token whose signature has been verified. Times are Unix seconds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedClaims {
    pub kid: String,
    pub tenant: String,
    pub subject: String,
    pub exp: i64,
    pub nbf: Option<i64>,
    pub iat: Option<i64>,
    pub roles: Option<Vec<String>>,
    pub jti: Option<String>,
}

/// The algorithms pg_tenancy accepts, by their JOSE names.
pub fn parse_algorithm(name: &str) -> Option<Algorithm> {
    match name {
        "HS256" => Some(Algorithm::HS256),
        "HS384" => Some(Algorithm::HS384),
        "HS512" => Some(Algorithm::HS512),
        "EdDSA" => Some(Algorithm::EdDSA),
        "ES256" => Some(Algorithm::ES256),
        "RS256" => Some(Algorithm::RS256),
        _ => None,
    }
}

/// Minimum HMAC secret length: shorter secrets can be brute-forced offline from one token.
pub const MIN_HMAC_SECRET_BYTES: usize = 32;

/// Build a verification key from its text: an HMAC secret (raw text, or `base64:` followed by the
/// standard base64 of the bytes), a PEM public key, or a JWK (JSON object).
pub fn parse_key(alg: Algorithm, material: &str) -> Result<DecodingKey, String> {
    let material = material.trim();
    if material.starts_with('{') {
        let jwk: jsonwebtoken::jwk::Jwk =
            serde_json::from_str(material).map_err(|_| "the key is not a valid JWK".to_string())?;
        let key = DecodingKey::from_jwk(&jwk).map_err(|_| "the JWK is not usable".to_string())?;
        if let jsonwebtoken::jwk::AlgorithmParameters::RSA(rsa) = &jwk.algorithm {
            use base64::Engine;
            let n = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(rsa.n.trim_end_matches('='))
                .map_err(|_| "the JWK's modulus does not decode".to_string())?;
            let first = n.iter().position(|b| *b != 0).unwrap_or(n.len());
            check_rsa_bits((n.len() - first) * 8)?;
        }
        let key = check_family(alg, key)?;
        if alg.family() == AlgorithmFamily::Hmac {
            check_hmac_len(&key)?;
        }
        return Ok(key);
    }
    let key = match alg.family() {
        AlgorithmFamily::Hmac => {
            let key = if let Some(b64) = material.strip_prefix("base64:") {
                DecodingKey::from_base64_secret(b64)
                    .map_err(|_| "the base64 secret does not decode".to_string())?
            } else {
                DecodingKey::from_secret(material.as_bytes())
            };
            check_hmac_len(&key)?;
            key
        }
        AlgorithmFamily::Rsa => {
            let key = DecodingKey::from_rsa_pem(material.as_bytes())
                .map_err(|_| "the key is not an RSA public key in PEM form".to_string())?;
            check_rsa_bits(rsa_pem_bits(material)?)?;
            key
        }
        AlgorithmFamily::Ec => DecodingKey::from_ec_pem(material.as_bytes())
            .map_err(|_| "the key is not an EC P-256 public key in PEM form".to_string())?,
        AlgorithmFamily::Ed => DecodingKey::from_ed_pem(material.as_bytes())
            .map_err(|_| "the key is not an Ed25519 public key in PEM form".to_string())?,
    };
    check_family(alg, key)
}

/// Smallest RSA modulus accepted, in bits.
pub const MIN_RSA_BITS: usize = 2048;

fn check_hmac_len(key: &DecodingKey) -> Result<(), String> {
    let len = key.try_get_as_bytes().map(|b| b.len()).unwrap_or(0);
    if len < MIN_HMAC_SECRET_BYTES {
        return Err(format!(
            "HMAC secrets must be at least {MIN_HMAC_SECRET_BYTES} bytes long"
        ));
    }
    Ok(())
}

fn check_rsa_bits(bits: usize) -> Result<(), String> {
    if bits < MIN_RSA_BITS {
        return Err(format!(
            "RSA keys must have at least {MIN_RSA_BITS} bits, and this one has {bits}"
        ));
    }
    Ok(())
}

/// The modulus size of an RSA public key in PEM (SPKI or PKCS#1), in bits.
fn rsa_pem_bits(pem: &str) -> Result<usize, String> {
    use rsa::pkcs1::DecodeRsaPublicKey;
    use rsa::pkcs8::DecodePublicKey;
    use rsa::traits::PublicKeyParts;
    rsa::RsaPublicKey::from_public_key_pem(pem)
        .or_else(|_| rsa::RsaPublicKey::from_pkcs1_pem(pem))
        .map(|k| k.n().bits())
        .map_err(|_| "the key is not an RSA public key in PEM form".to_string())
}

fn check_family(alg: Algorithm, key: DecodingKey) -> Result<DecodingKey, String> {
    if key.family() != alg.family() {
        return Err(format!("the key is not a key for {alg:?}"));
    }
    Ok(key)
}

/// A token split, decoded and parsed once, before its signature is checked: nothing here may
/// be trusted until [`verify`] has checked the signature over `message`.
#[derive(Debug)]
pub struct Parsed<'a> {
    /// The header's `kid`, which names the key to verify with.
    pub kid: String,
    /// The header's `alg`, which must be the algorithm of that key.
    pub alg: Algorithm,
    /// The claims, parsed (a repeated member name has been refused).
    claims: Map<String, Value>,
    /// The signing input: the first two segments and the dot between them.
    message: &'a str,
    /// The third segment, still base64url.
    signature: &'a str,
}

/// Cheap structural checks, then each segment decoded and parsed once: the header's `kid` and
/// `alg`, so the caller can find the key, and the claims, for [`verify`].
pub fn parse(token: &str, max_bytes: usize) -> Result<Parsed<'_>, TokenError> {
    if token.is_empty() {
        return Err(TokenError::Empty);
    }
    if token.len() > max_bytes {
        return Err(TokenError::TooLarge(token.len()));
    }
    if !token
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
    {
        return Err(TokenError::Malformed);
    }
    let mut segments = token.split('.');
    let (Some(header_b64), Some(claims_b64), Some(signature), None) = (
        segments.next(),
        segments.next(),
        segments.next(),
        segments.next(),
    ) else {
        return Err(TokenError::Malformed);
    };
    let message = &token[..header_b64.len() + 1 + claims_b64.len()];
    let header_json = segment_json(header_b64)?;
    let claims_json = segment_json(claims_b64)?;
    let header = object_without_repeats(&header_json)?;
    let claims = object_without_repeats(&claims_json)?;
    if header.contains_key("crit") {
        return Err(TokenError::CriticalExtension);
    }
    // The header as jsonwebtoken reads it: an `alg` it does not know (`none` among them) or a
    // member of the wrong type makes the token malformed.
    let header: jsonwebtoken::Header =
        serde_json::from_value(Value::Object(header)).map_err(|_| TokenError::Malformed)?;
    let kid = header
        .kid
        .filter(|k| !k.is_empty())
        .ok_or(TokenError::MissingKid)?;
    Ok(Parsed {
        kid,
        alg: header.alg,
        claims,
        message,
        signature,
    })
}

fn segment_json(segment: &str) -> Result<Vec<u8>, TokenError> {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(segment)
        .map_err(|_| TokenError::Malformed)
}

/// A JSON object parsed in one pass; a repeated top-level member name is refused (a plain
/// `Map` would keep the last one silently).
fn object_without_repeats(json: &[u8]) -> Result<Map<String, Value>, TokenError> {
    use serde::de::{Deserializer, MapAccess, Visitor};
    /// `None` when a name repeats.
    struct Object;
    impl<'de> Visitor<'de> for Object {
        type Value = Option<Map<String, Value>>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a JSON object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut object = Map::new();
            let mut repeated = false;
            while let Some(name) = map.next_key::<String>()? {
                let value = map.next_value::<Value>()?;
                repeated |= object.insert(name, value).is_some();
            }
            Ok((!repeated).then_some(object))
        }
    }
    let mut de = serde_json::Deserializer::from_slice(json);
    let object = de
        .deserialize_map(Object)
        .and_then(|o| de.end().map(|()| o))
        .map_err(|_| TokenError::Malformed)?;
    object.ok_or(TokenError::DuplicateMember)
}

/// Verify the signature of a parsed token with the key registered for its `kid` (whose
/// algorithm is `alg`), then read the claims. Time-based claims are returned, not judged: the
/// caller checks them on every bind, cached or not.
pub fn verify(
    parsed: Parsed<'_>,
    alg: Algorithm,
    key: &DecodingKey,
    tenant_claim: &str,
) -> Result<VerifiedClaims, TokenError> {
    if parsed.alg != alg {
        return Err(TokenError::AlgorithmMismatch);
    }
    // A key of another family than `alg` cannot make a verifier: that is a bad signature, as
    // is a signature that does not match. A signature that is not base64url is malformed.
    let valid = jsonwebtoken::crypto::verify(parsed.signature, parsed.message.as_bytes(), key, alg)
        .map_err(|e| {
            use jsonwebtoken::errors::ErrorKind;
            match e.kind() {
                ErrorKind::InvalidSignature
                | ErrorKind::InvalidEcdsaKey
                | ErrorKind::InvalidRsaKey(_)
                | ErrorKind::InvalidKeyFormat
                | ErrorKind::InvalidAlgorithm => TokenError::BadSignature,
                _ => TokenError::Malformed,
            }
        })?;
    if !valid {
        return Err(TokenError::BadSignature);
    }
    claims_from(&parsed.kid, parsed.claims, tenant_claim)
}

/// A claim's text as it may be bound, shown and stored: no control characters (a NUL would
/// cut it short where PostgreSQL's text ends, so a subject `alice\u0000mallory` showed and was
/// audited as `alice` while escaping alice's revocation, found by an attacker's pass) and no
/// characters that change how text is shown while showing nothing themselves (bidirectional
/// overrides, zero-width characters: [`crate::errors::is_invisible`], the set messages escape).
fn plain_text(s: &str) -> bool {
    !s.chars()
        .any(|c| c.is_control() || crate::errors::is_invisible(c))
}

fn claims_from(
    kid: &str,
    claims: Map<String, Value>,
    tenant_claim: &str,
) -> Result<VerifiedClaims, TokenError> {
    let tenant = match claims.get(tenant_claim) {
        None | Some(Value::Null) => return Err(TokenError::MissingClaim(tenant_claim.into())),
        Some(Value::String(s)) if !s.is_empty() && s.len() <= 200 && plain_text(s) => s.clone(),
        Some(_) => return Err(TokenError::InvalidClaim(tenant_claim.into())),
    };
    let subject = match claims.get("sub") {
        None | Some(Value::Null) => return Err(TokenError::MissingClaim("sub".into())),
        Some(Value::String(s)) if !s.is_empty() && s.len() <= 1000 && plain_text(s) => s.clone(),
        Some(_) => return Err(TokenError::InvalidClaim("sub".into())),
    };
    let exp = time_claim(&claims, "exp")?.ok_or_else(|| TokenError::MissingClaim("exp".into()))?;
    // A fractional nbf counts from its next whole second: never usable early.
    let nbf = time_claim_rounded(&claims, "nbf", f64::ceil)?;
    let iat = time_claim(&claims, "iat")?;
    let roles = match claims.get("roles") {
        None | Some(Value::Null) => None,
        Some(Value::Array(items)) => {
            let mut roles = Vec::with_capacity(items.len());
            for item in items {
                match item {
                    Value::String(s) if !s.is_empty() && s.len() <= 63 && plain_text(s) => {
                        roles.push(s.clone())
                    }
                    _ => return Err(TokenError::InvalidClaim("roles".into())),
                }
            }
            Some(roles)
        }
        Some(_) => return Err(TokenError::InvalidClaim("roles".into())),
    };
    let jti = match claims.get("jti") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if plain_text(s) => Some(s.clone()),
        Some(_) => return Err(TokenError::InvalidClaim("jti".into())),
    };
    Ok(VerifiedClaims {
        kid: kid.to_string(),
        tenant,
        subject,
        exp,
        nbf,
        iat,
        roles,
        jti,
    })
}

fn time_claim(claims: &Map<String, Value>, name: &'static str) -> Result<Option<i64>, TokenError> {
    time_claim_rounded(claims, name, f64::floor)
}

/// A NumericDate claim in whole seconds, a fraction rounded by `round` (down for `exp` and
/// `iat`: a token expires no later and counts as issued no later than it says; up for `nbf`).
fn time_claim_rounded(
    claims: &Map<String, Value>,
    name: &'static str,
    round: fn(f64) -> f64,
) -> Result<Option<i64>, TokenError> {
    match claims.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => {
            let v = n
                .as_i64()
                .or_else(|| {
                    n.as_f64()
                        .filter(|f| f.is_finite() && f.abs() < 1e15)
                        .map(|f| round(f) as i64)
                })
                .ok_or_else(|| TokenError::InvalidClaim(name.into()))?;
            if !(0..=253_402_300_799).contains(&v) {
                return Err(TokenError::InvalidClaim(name.into()));
            }
            Ok(Some(v))
        }
        Some(_) => Err(TokenError::InvalidClaim(name.into())),
    }
}

/// A stored key's algorithm and verification key (None when the material is unusable), for
/// the catalog's key cache ([`crate::catalog::KeyDecoder`]).
pub fn decode_key(
    alg: &str,
    material: &str,
) -> Option<(jsonwebtoken::Algorithm, Option<jsonwebtoken::DecodingKey>)> {
    let alg = parse_algorithm(alg)?;
    Some((alg, parse_key(alg, material).ok()))
}

#[cfg(test)]
mod unit {
    use super::*;
    use jsonwebtoken::{encode, EncodingKey, Header};
    use proptest::prelude::*;

    const SECRET: &str = "0123456789abcdef0123456789abcdef-unit";

    fn hs_token(claims: serde_json::Value, kid: &str) -> String {
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some(kid.into());
        encode(
            &header,
            &claims,
            &EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .unwrap()
    }

    fn check(token: &str) -> Result<VerifiedClaims, TokenError> {
        let key = parse_key(Algorithm::HS256, SECRET).unwrap();
        verify(parse(token, 8192)?, Algorithm::HS256, &key, "tid")
    }

    #[test]
    fn good_token_verifies() {
        let t = hs_token(
            serde_json::json!({"tid":"acme","sub":"u1","exp":4_000_000_000i64,"roles":["viewer"]}),
            "k1",
        );
        let c = check(&t).unwrap();
        assert_eq!(c.tenant, "acme");
        assert_eq!(c.subject, "u1");
        assert_eq!(c.roles, Some(vec!["viewer".to_string()]));
    }

    #[test]
    fn tampered_payload_is_refused() {
        let t = hs_token(
            serde_json::json!({"tid":"acme","sub":"u1","exp":4_000_000_000i64}),
            "k1",
        );
        let other = hs_token(
            serde_json::json!({"tid":"evil","sub":"u1","exp":4_000_000_000i64}),
            "k1",
        );
        let parts: Vec<&str> = t.split('.').collect();
        let other_parts: Vec<&str> = other.split('.').collect();
        let forged = format!("{}.{}.{}", parts[0], other_parts[1], parts[2]);
        assert_eq!(check(&forged), Err(TokenError::BadSignature));
    }

    #[test]
    fn alg_none_is_refused() {
        use base64::Engine;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let h = b64.encode(br#"{"alg":"none","kid":"k1"}"#);
        let p = b64.encode(br#"{"tid":"acme","sub":"u","exp":4000000000}"#);
        assert_eq!(check(&format!("{h}.{p}.")), Err(TokenError::Malformed));
    }

    #[test]
    fn missing_claims_are_refused() {
        let t = hs_token(serde_json::json!({"sub":"u1","exp":4_000_000_000i64}), "k1");
        assert!(matches!(check(&t), Err(TokenError::MissingClaim(_))));
        let t = hs_token(serde_json::json!({"tid":"a","sub":"u1"}), "k1");
        assert_eq!(check(&t), Err(TokenError::MissingClaim("exp".into())));
        let t = hs_token(serde_json::json!({"tid":"a","exp":4_000_000_000i64}), "k1");
        assert_eq!(check(&t), Err(TokenError::MissingClaim("sub".into())));
        let t = hs_token(serde_json::json!({"tid":"a","sub":"u","exp":"soon"}), "k1");
        assert_eq!(check(&t), Err(TokenError::InvalidClaim("exp".into())));
    }

    #[test]
    fn short_hmac_secret_is_refused() {
        assert!(parse_key(Algorithm::HS256, "short").is_err());
    }

    /// An HMAC key is 32 bytes at least in every form: raw, base64, and a JWK's `k`.
    #[test]
    fn short_hmac_keys_are_refused_in_every_form() {
        for material in [
            "short".to_string(),
            "base64:c2hvcnQ=".to_string(),
            r#"{"kty": "oct", "k": ""}"#.to_string(),
            r#"{"kty": "oct", "k": "c2hvcnQ"}"#.to_string(),
        ] {
            let e = parse_key(Algorithm::HS256, &material).err();
            assert!(
                e.is_some_and(|e| e.contains("at least 32 bytes")),
                "{material}"
            );
        }
        let long = format!(r#"{{"kty": "oct", "k": "{}"}}"#, "A".repeat(43));
        assert!(parse_key(Algorithm::HS256, &long).is_ok());
    }

    /// A 1024-bit RSA key, as SPKI and PKCS#1 PEM and as a JWK, is refused.
    #[test]
    fn rsa_keys_under_2048_bits_are_refused() {
        const SPKI: &str = "-----BEGIN PUBLIC KEY-----
MIGfMA0GCSqGSIb3DQEBAQUAA4GNADCBiQKBgQCZNfRWT5iFbPKa9PJn20plms+i
cTwPMoj5NeDvUtGbsmGG5JcO2oDUAt1cK7ZO+NjjkRxf7Psgm1NkJgC6G6wXmmvv
f7KN0cwmyRsykQdNfzvtFBED+qgGzK5nE3Jd5MPAQiz5uXfl7MLwW5Ya/N/WjZh9
aJVxW4b/m0RyiBPcpwIDAQAB
-----END PUBLIC KEY-----";
        const PKCS1: &str = "-----BEGIN RSA PUBLIC KEY-----
MIGJAoGBAJk19FZPmIVs8pr08mfbSmWaz6JxPA8yiPk14O9S0ZuyYYbklw7agNQC
3Vwrtk742OORHF/s+yCbU2QmALobrBeaa+9/so3RzCbJGzKRB01/O+0UEQP6qAbM
rmcTcl3kw8BCLPm5d+XswvBblhr839aNmH1olXFbhv+bRHKIE9ynAgMBAAE=
-----END RSA PUBLIC KEY-----";
        let jwk = r#"{"kty": "RSA", "n": "mTX0Vk-YhWzymvTyZ9tKZZrPonE8DzKI-TXg71LRm7JhhuSXDtqA1ALdXCu2TvjY45EcX-z7IJtTZCYAuhusF5pr73-yjdHMJskbMpEHTX877RQRA_qoBsyuZxNyXeTDwEIs-bl35ezC8FuWGvzf1o2YfWiVcVuG_5tEcogT3Kc", "e": "AQAB"}"#.to_string();
        for material in [SPKI, PKCS1, jwk.as_str()] {
            let e = parse_key(Algorithm::RS256, material).err();
            assert!(
                e.as_deref()
                    .is_some_and(|e| e.contains("at least 2048 bits") || e.contains("PEM")),
                "{e:?}"
            );
        }
        let e = parse_key(Algorithm::RS256, SPKI).unwrap_err();
        assert!(e.contains("has 1024"), "{e}");
        assert!(parse_key(Algorithm::RS256, &jwk)
            .unwrap_err()
            .contains("has 1024"));
    }

    /// A fractional nbf counts from the next second.
    #[test]
    fn a_fractional_nbf_is_rounded_up() {
        let claims: Map<String, Value> =
            serde_json::from_str(r#"{"nbf": 100.01, "exp": 200.99}"#).unwrap();
        assert_eq!(
            time_claim_rounded(&claims, "nbf", f64::ceil).unwrap(),
            Some(101)
        );
        assert_eq!(time_claim(&claims, "exp").unwrap(), Some(200));
    }

    /// parse() of a token with exactly these header and claims texts (signature not checked):
    /// its kid and alg.
    fn peek_raw(header: &str, claims: &str) -> Result<(String, Algorithm), TokenError> {
        use base64::Engine;
        let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        parse(&format!("{}.{}.c2ln", b64(header), b64(claims)), 100_000).map(|p| (p.kid, p.alg))
    }

    #[test]
    fn repeated_member_names_are_refused() {
        let header = r#"{"alg":"HS256","kid":"k1"}"#;
        let claims = r#"{"tid":"a","sub":"u","exp":4000000000}"#;
        assert!(peek_raw(header, claims).is_ok());
        assert_eq!(
            peek_raw(
                header,
                r#"{"tid":"a","tid":"b","sub":"u","exp":4000000000}"#
            ),
            Err(TokenError::DuplicateMember)
        );
        assert_eq!(
            peek_raw(r#"{"alg":"HS256","kid":"k1","kid":"k2"}"#, claims),
            Err(TokenError::DuplicateMember)
        );
        // Nested objects may repeat names of the top level.
        assert!(peek_raw(
            header,
            r#"{"tid":"a","sub":"u","exp":4000000000,"x":{"tid":"b"}}"#
        )
        .is_ok());
    }

    #[test]
    fn critical_header_extensions_are_refused() {
        assert_eq!(
            peek_raw(
                r#"{"alg":"HS256","kid":"k1","crit":["exp"]}"#,
                r#"{"tid":"a","sub":"u","exp":4000000000}"#
            ),
            Err(TokenError::CriticalExtension)
        );
    }

    #[test]
    fn deeply_nested_header_does_not_panic() {
        use base64::Engine;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let nested = "[".repeat(5000) + &"]".repeat(5000);
        let h = b64.encode(format!(r#"{{"alg":"HS256","kid":"k1","x":{nested}}}"#));
        let t = format!("{h}.e30.AAAA");
        assert!(check(&t).is_err());
    }

    #[test]
    fn a_token_is_three_segments_of_json_objects() {
        use base64::Engine;
        let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        let good = hs_token(
            serde_json::json!({"tid":"acme","sub":"u1","exp":4_000_000_000i64}),
            "k1",
        );
        let parts: Vec<&str> = good.split('.').collect();
        let header = parts[0];
        let claims = parts[1];
        for bad in [
            format!("{header}.{claims}"),
            format!("{good}.{}", parts[2]),
            format!("{header}.{}.{}", b64("[1,2]"), parts[2]),
            format!("{header}.{}.{}", b64(r#"{"tid":"a"} x"#), parts[2]),
            format!("{header}.{}.{}", b64(r#"{"tid":"a""#), parts[2]),
            format!(
                "{}.{claims}.{}",
                b64(r#"{"alg":"HS256","kid":"k1"}}"#),
                parts[2]
            ),
            // A signature that is not base64url (one character cannot be).
            format!("{header}.{claims}.A"),
            format!("{header}.{claims}.{}=", parts[2]),
        ] {
            assert_eq!(check(&bad), Err(TokenError::Malformed), "{bad}");
        }
        assert_eq!(
            peek_raw(r#"{"alg":"HS256"}"#, "{}"),
            Err(TokenError::MissingKid)
        );
        assert_eq!(
            peek_raw(r#"{"alg":"HS256","kid":""}"#, "{}"),
            Err(TokenError::MissingKid)
        );
        assert_eq!(
            peek_raw(r#"{"alg":"HS256","kid":7}"#, "{}"),
            Err(TokenError::Malformed)
        );
        assert_eq!(
            peek_raw(r#"{"alg":"RS256","kid":"k9"}"#, "{}"),
            Ok(("k9".to_string(), Algorithm::RS256))
        );
    }

    #[test]
    fn the_signature_covers_the_header_and_the_claims_as_sent() {
        let t = hs_token(
            serde_json::json!({"tid":"acme","sub":"u1","exp":4_000_000_000i64}),
            "k1",
        );
        let parts: Vec<&str> = t.split('.').collect();
        // Another header with the same kid and alg: the signature no longer matches.
        let other = hs_token(
            serde_json::json!({"tid":"acme","sub":"u1","exp":4_000_000_000i64}),
            "k1 ",
        );
        let other_header = other.split('.').next().unwrap();
        let forged = format!("{other_header}.{}.{}", parts[1], parts[2]);
        assert_eq!(check(&forged), Err(TokenError::BadSignature));
        // The right signature of another token.
        let forged = format!(
            "{}.{}.{}",
            parts[0],
            parts[1],
            other.split('.').nth(2).unwrap()
        );
        assert_eq!(check(&forged), Err(TokenError::BadSignature));
        // An empty signature.
        assert_eq!(
            check(&format!("{}.{}.", parts[0], parts[1])),
            Err(TokenError::BadSignature)
        );
        // A key registered for another algorithm.
        let key = parse_key(Algorithm::HS384, SECRET).unwrap();
        assert_eq!(
            verify(parse(&t, 8192).unwrap(), Algorithm::HS384, &key, "tid"),
            Err(TokenError::AlgorithmMismatch)
        );
    }

    /// What `jsonwebtoken::decode` makes of a token, with pg_tenancy's claim rules: the
    /// reference the one-pass parse and verification must agree with.
    fn reference(token: &str) -> Result<VerifiedClaims, TokenError> {
        let key = parse_key(Algorithm::HS256, SECRET).unwrap();
        let mut validation = jsonwebtoken::Validation::new(Algorithm::HS256);
        validation.required_spec_claims.clear();
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.validate_aud = false;
        let header = jsonwebtoken::decode_header(token).map_err(|_| TokenError::Malformed)?;
        let data = jsonwebtoken::decode::<Map<String, Value>>(token, &key, &validation)
            .map_err(|_| TokenError::BadSignature)?;
        claims_from(&header.kid.unwrap_or_default(), data.claims, "tid")
    }

    proptest! {
        /// A token changed in one place, cut short or extended is accepted by the one-pass
        /// verification exactly when jsonwebtoken accepts it, with the same claims.
        #[test]
        fn verification_agrees_with_jsonwebtoken_decode(
            pos in 0usize..400,
            with in "[A-Za-z0-9_.-]",
            how in 0u8..3,
            sub in "[a-z\\\"é]{1,8}",
        ) {
            let t = hs_token(
                serde_json::json!({"tid":"acme","sub":sub,"exp":4_000_000_000i64,"roles":["viewer"]}),
                "k1",
            );
            let pos = pos % (t.len() + 1);
            let mutated = match how {
                0 if pos < t.len() => format!("{}{with}{}", &t[..pos], &t[pos + 1..]),
                1 => t[..pos].to_string(),
                _ => format!("{}{with}{}", &t[..pos], &t[pos..]),
            };
            let ours = check(&mutated);
            let theirs = reference(&mutated);
            match (&ours, &theirs) {
                (Ok(a), Ok(b)) => prop_assert_eq!(a, b),
                (Ok(_), Err(_)) => prop_assert!(false, "accepted what jsonwebtoken refuses: {}", mutated),
                (Err(_), Ok(_)) => prop_assert!(false, "refused what jsonwebtoken accepts: {}", mutated),
                (Err(_), Err(_)) => {}
            }
            if mutated == t {
                prop_assert!(ours.is_ok());
            }
        }
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let s = String::from_utf8_lossy(&bytes);
            let _ = check(&s);
        }

        #[test]
        fn random_dotted_segments_never_panic(a in "[A-Za-z0-9_-]{0,200}", b in "[A-Za-z0-9_-]{0,200}", c in "[A-Za-z0-9_-]{0,100}") {
            let _ = check(&format!("{a}.{b}.{c}"));
        }

        #[test]
        fn truncated_tokens_never_verify(cut in 0usize..200) {
            let t = hs_token(serde_json::json!({"tid":"acme","sub":"u1","exp":4_000_000_000i64}), "k1");
            let cut = cut.min(t.len() - 1);
            prop_assert!(check(&t[..cut]).is_err());
        }
    }
}
