//! Who is calling. The tenant comes from a credential only: a per-tenant API key (`bk_...`,
//! looked up by its SHA-256 in the database on every request, so a revoked key stops at once),
//! or a JWT this process verifies (HS256 with a shared secret, or RS256/ES256 from a JWKS file;
//! `exp` required, `nbf` and the audience checked), whose tenant sits at the same claim path as
//! the extension's `bulkhead.jwt_tenant_claim`. Never from the body or a plain header.

use axum::http::HeaderMap;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// The caller, as admission needs it.
#[derive(Debug, Clone)]
pub enum Caller {
    /// SHA-256 of a presented `bk_` key (the database decides whether it is valid).
    ApiKey([u8; 32]),
    /// The tenant a verified JWT names.
    Jwt(uuid::Uuid),
}

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("missing credentials: send the API key as Authorization: Bearer <key> or x-api-key")]
    Missing,
    #[error("malformed credentials")]
    Malformed,
    #[error("invalid token: {0}")]
    InvalidToken(String),
    #[error("the token names no tenant at claim {0}")]
    NoTenant(String),
}

/// What a token must also satisfy beyond its signature, `exp` and `nbf`.
#[derive(Debug, Default, Clone)]
pub struct JwtRules {
    /// `aud` must name it.
    pub audience: Option<String>,
    /// `iss` must be it.
    pub issuer: Option<String>,
    /// `exp - iat` at most this many seconds (`iat` then required): a stolen long-lived token is
    /// refused even before it expires.
    pub max_lifetime_secs: Option<u64>,
}

/// How JWTs are verified (none configured: only API keys are accepted).
pub struct JwtVerifier {
    keys: Vec<(Option<String>, Algorithm, DecodingKey)>,
    rules: JwtRules,
    claim_path: Vec<String>,
}

impl JwtVerifier {
    pub fn new(
        hs256_secret: Option<&str>,
        jwks_json: Option<&str>,
        rules: JwtRules,
        claim_path: &str,
    ) -> Result<Option<Self>, String> {
        let claim_path: Vec<String> = claim_path
            .split('.')
            .map(|part| part.trim().to_string())
            .collect();
        if claim_path.iter().any(|p| p.is_empty()) {
            return Err(format!(
                "the tenant claim path {claim_path:?} has an empty part"
            ));
        }
        if claim_path.iter().any(|p| p == "user_metadata") {
            return Err(
                "the tenant claim path must not go through user_metadata: end users edit it".into(),
            );
        }
        let mut keys = Vec::new();
        if let Some(secret) = hs256_secret.filter(|s| !s.is_empty()) {
            if secret.len() < 32 {
                return Err("the JWT secret must be at least 32 bytes".into());
            }
            keys.push((
                None,
                Algorithm::HS256,
                DecodingKey::from_secret(secret.as_bytes()),
            ));
        }
        if let Some(jwks) = jwks_json {
            let set: jsonwebtoken::jwk::JwkSet = serde_json::from_str(jwks)
                .map_err(|e| format!("the JWKS file is not a JWK set: {e}"))?;
            for jwk in &set.keys {
                let algorithm = match &jwk.algorithm {
                    jsonwebtoken::jwk::AlgorithmParameters::RSA(_) => Algorithm::RS256,
                    jsonwebtoken::jwk::AlgorithmParameters::EllipticCurve(_) => Algorithm::ES256,
                    _ => return Err("JWKS keys must be RSA (RS256) or EC P-256 (ES256)".into()),
                };
                let key = DecodingKey::from_jwk(jwk).map_err(|e| format!("unusable JWK: {e}"))?;
                keys.push((jwk.common.key_id.clone(), algorithm, key));
            }
        }
        if keys.is_empty() {
            return Ok(None);
        }
        Ok(Some(JwtVerifier {
            keys,
            rules,
            claim_path,
        }))
    }

    /// The tenant of a valid token.
    pub fn tenant(&self, token: &str) -> Result<uuid::Uuid, AuthError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| AuthError::Malformed)?;
        let mut last =
            AuthError::InvalidToken("no key matches the token's algorithm and kid".into());
        for (kid, algorithm, key) in &self.keys {
            if *algorithm != header.alg
                || (header.kid.is_some() && kid.is_some() && header.kid != *kid)
            {
                continue;
            }
            let mut validation = Validation::new(*algorithm);
            validation.leeway = 0;
            validation.validate_nbf = true;
            validation.set_required_spec_claims(&["exp"]);
            match &self.rules.audience {
                Some(aud) => validation.set_audience(&[aud]),
                None => validation.validate_aud = false,
            }
            if let Some(issuer) = &self.rules.issuer {
                validation.set_issuer(&[issuer]);
            }
            match jsonwebtoken::decode::<Value>(token, key, &validation) {
                Ok(data) => {
                    if let Some(max) = self.rules.max_lifetime_secs {
                        let lifetime = data.claims["exp"]
                            .as_f64()
                            .zip(data.claims["iat"].as_f64())
                            .map(|(exp, iat)| exp - iat);
                        if !lifetime.is_some_and(|l| l <= max as f64) {
                            return Err(AuthError::InvalidToken(
                                "lives longer than this gateway accepts (or has no iat)".into(),
                            ));
                        }
                    }
                    let mut at = &data.claims;
                    for part in &self.claim_path {
                        at = &at[part.as_str()];
                    }
                    return at
                        .as_str()
                        .and_then(|s| uuid::Uuid::parse_str(s.trim()).ok())
                        .ok_or_else(|| AuthError::NoTenant(self.claim_path.join(".")));
                }
                Err(err) => last = AuthError::InvalidToken(err.kind_name()),
            }
        }
        Err(last)
    }
}

trait KindName {
    fn kind_name(&self) -> String;
}

impl KindName for jsonwebtoken::errors::Error {
    /// The kind only: the error's Display can quote token contents.
    fn kind_name(&self) -> String {
        use jsonwebtoken::errors::ErrorKind::*;
        match self.kind() {
            ExpiredSignature => "expired",
            ImmatureSignature => "not valid yet (nbf)",
            InvalidSignature => "bad signature",
            InvalidAudience => "wrong audience",
            InvalidIssuer => "wrong issuer",
            MissingRequiredClaim(_) => "a required claim is missing",
            InvalidAlgorithm => "algorithm not accepted",
            _ => "unreadable",
        }
        .to_string()
    }
}

/// The presented credential: `Authorization: Bearer` (OpenAI SDKs) or `x-api-key` (Anthropic
/// SDKs). A `bk_` key is hashed here; anything else must be a JWT this gateway can verify.
pub fn caller(headers: &HeaderMap, jwt: Option<&JwtVerifier>) -> Result<Caller, AuthError> {
    // Two of a header: which one a proxy in front would have read is anyone's guess.
    if headers
        .get_all(axum::http::header::AUTHORIZATION)
        .iter()
        .count()
        > 1
        || headers.get_all("x-api-key").iter().count() > 1
    {
        return Err(AuthError::Malformed);
    }
    let bearer = headers
        .get(axum::http::header::AUTHORIZATION)
        .map(|v| v.to_str().map_err(|_| AuthError::Malformed))
        .transpose()?
        .map(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
                .ok_or(AuthError::Malformed)
        })
        .transpose()?;
    let api_key = headers
        .get("x-api-key")
        .map(|v| v.to_str().map_err(|_| AuthError::Malformed))
        .transpose()?;
    let token = match (bearer, api_key) {
        (Some(a), Some(b)) if a.trim() != b.trim() => return Err(AuthError::Malformed),
        (Some(t), _) | (None, Some(t)) => t.trim(),
        (None, None) => return Err(AuthError::Missing),
    };
    if token.is_empty() {
        return Err(AuthError::Missing);
    }
    if token.starts_with("bk_") {
        if token.len() > 200 {
            return Err(AuthError::Malformed);
        }
        return Ok(Caller::ApiKey(Sha256::digest(token.as_bytes()).into()));
    }
    match jwt {
        Some(verifier) if token.len() <= 16 * 1024 => verifier.tenant(token).map(Caller::Jwt),
        Some(_) => Err(AuthError::Malformed),
        None => Err(AuthError::InvalidToken(
            "this gateway accepts bk_ API keys only".into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{encode, EncodingKey, Header};
    use serde_json::json;

    const SECRET: &str = "a-test-secret-of-at-least-32-bytes!!";

    fn token(claims: Value) -> String {
        encode(
            &Header::default(),
            &claims,
            &EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .unwrap()
    }

    fn now() -> i64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64
    }

    #[test]
    fn the_tenant_comes_from_the_configured_claim_only() {
        let v = JwtVerifier::new(
            Some(SECRET),
            None,
            JwtRules::default(),
            "app_metadata.tenant_id",
        )
        .unwrap()
        .unwrap();
        let tenant = uuid::Uuid::new_v4();
        let good =
            token(json!({"exp": now() + 60, "app_metadata": {"tenant_id": tenant.to_string()}}));
        assert_eq!(v.tenant(&good).unwrap(), tenant);
        let user_metadata =
            token(json!({"exp": now() + 60, "user_metadata": {"tenant_id": tenant.to_string()}}));
        assert!(matches!(
            v.tenant(&user_metadata),
            Err(AuthError::NoTenant(_))
        ));
        let expired =
            token(json!({"exp": now() - 1, "app_metadata": {"tenant_id": tenant.to_string()}}));
        assert!(matches!(
            v.tenant(&expired),
            Err(AuthError::InvalidToken(_))
        ));
        let no_exp = token(json!({"app_metadata": {"tenant_id": tenant.to_string()}}));
        assert!(v.tenant(&no_exp).is_err());
        let early = token(
            json!({"exp": now() + 60, "nbf": now() + 30, "app_metadata": {"tenant_id": tenant.to_string()}}),
        );
        assert!(v.tenant(&early).is_err());
        let forged = encode(
            &Header::default(),
            &json!({"exp": now() + 60, "app_metadata": {"tenant_id": tenant.to_string()}}),
            &EncodingKey::from_secret(b"another-secret-of-at-least-32-bytes!!"),
        )
        .unwrap();
        assert!(v.tenant(&forged).is_err());
        assert!(JwtVerifier::new(
            Some(SECRET),
            None,
            JwtRules::default(),
            "user_metadata.tenant_id"
        )
        .is_err());
    }

    #[test]
    fn issuer_and_lifetime_rules_hold() {
        let rules = JwtRules {
            audience: None,
            issuer: Some("https://auth.example".into()),
            max_lifetime_secs: Some(3600),
        };
        let v = JwtVerifier::new(Some(SECRET), None, rules, "app_metadata.tenant_id")
            .unwrap()
            .unwrap();
        let tenant = uuid::Uuid::new_v4().to_string();
        let claims = |iss: &str, iat: i64, exp: i64| {
            token(
                json!({"iss": iss, "iat": iat, "exp": exp, "app_metadata": {"tenant_id": tenant}}),
            )
        };
        assert!(v
            .tenant(&claims("https://auth.example", now(), now() + 600))
            .is_ok());
        assert!(
            v.tenant(&claims("https://evil.example", now(), now() + 600))
                .is_err(),
            "another issuer"
        );
        assert!(
            v.tenant(&claims("https://auth.example", now(), now() + 86_400))
                .is_err(),
            "a day-long token"
        );
        let no_iat = token(
            json!({"iss": "https://auth.example", "exp": now() + 60, "app_metadata": {"tenant_id": tenant}}),
        );
        assert!(
            v.tenant(&no_iat).is_err(),
            "no iat: its lifetime is unknown"
        );
    }

    #[test]
    fn keys_are_hashed_and_headers_must_agree() {
        let mut headers = HeaderMap::new();
        assert!(matches!(caller(&headers, None), Err(AuthError::Missing)));
        headers.insert("authorization", "Bearer bk_abc".parse().unwrap());
        let Caller::ApiKey(hash) = caller(&headers, None).unwrap() else {
            panic!("a bk_ key is an API key")
        };
        assert_eq!(hash, <[u8; 32]>::from(Sha256::digest(b"bk_abc")));
        headers.insert("x-api-key", "bk_other".parse().unwrap());
        assert!(matches!(caller(&headers, None), Err(AuthError::Malformed)));
        let mut jwt_only = HeaderMap::new();
        jwt_only.insert("authorization", "Bearer eyJ.x.y".parse().unwrap());
        assert!(caller(&jwt_only, None).is_err(), "no verifier: no JWTs");
    }
}
