//! OAuth2 client credentials: app-only access tokens for EWS from a token endpoint (the
//! Microsoft identity platform, or a stand-in), proven with a client secret or with a
//! certificate (a signed client assertion).
//!
//! A certificate credential is an RS256 JSON Web Token signed with the certificate's private
//! key, its header naming the certificate by `x5t` (the base64url SHA-1 thumbprint), its claims
//! `aud` (the token URL), `iss` = `sub` (the client id), `jti` (random, once), `nbf`, `iat` and
//! `exp` (ten minutes on). Tokens are cached until shortly before they expire; whatever
//! lifetime the endpoint states is bounded ([`MAX_TOKEN_LIFETIME`]), and its answer is read up
//! to [`MAX_TOKEN_RESPONSE_BYTES`]. The token request follows no redirect.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use reqwest::StatusCode;

use crate::client::{check_redirect, read_capped, transport_error};
use crate::Error;

/// Tokens are refreshed this long before they expire (or at half their life if shorter).
pub const TOKEN_REFRESH_MARGIN: Duration = Duration::from_secs(300);
/// The longest a token is cached, whatever `expires_in` says (Microsoft issues 60 to 90
/// minutes).
pub const MAX_TOKEN_LIFETIME: Duration = Duration::from_secs(24 * 3600);
/// Lifetime assumed when the answer states none.
pub const DEFAULT_TOKEN_LIFETIME: Duration = Duration::from_secs(3600);
/// The largest token endpoint answer read.
pub const MAX_TOKEN_RESPONSE_BYTES: u64 = 1024 * 1024;
/// How long a client assertion is valid.
pub const ASSERTION_LIFETIME: Duration = Duration::from_secs(600);
/// `client_assertion_type` of a JWT client assertion (RFC 7523).
pub const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// How the app proves who it is.
#[derive(Clone)]
pub enum ClientCredential {
    /// A client secret.
    Secret(String),
    /// A certificate registered with the app, and its private key.
    Certificate(Arc<ClientCertificate>),
}

impl std::fmt::Debug for ClientCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClientCredential::Secret(_) => f.write_str("Secret(***)"),
            ClientCredential::Certificate(c) => write!(f, "Certificate(x5t {})", c.thumbprint()),
        }
    }
}

/// A certificate credential: the key that signs client assertions and the thumbprint that
/// names the certificate.
pub struct ClientCertificate {
    /// The RSA private key belonging to the certificate.
    key: ring::signature::RsaKeyPair,
    /// base64url (unpadded) SHA-1 of the certificate's DER: the `x5t` header.
    x5t: String,
}

impl std::fmt::Debug for ClientCertificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ClientCertificate(x5t {}, key ***)", self.x5t)
    }
}

fn b64url(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

impl ClientCertificate {
    /// Reads a PEM certificate (the first one of the file) and its PEM private key (PKCS#8 or
    /// PKCS#1 RSA), and checks that the key belongs to the certificate. Errors say what is
    /// wrong without showing key material.
    pub fn from_pem(certificate_pem: &[u8], private_key_pem: &[u8]) -> Result<Self, Error> {
        let bad = |m: String| Error::Request(m);
        let cert = rustls_pemfile::certs(&mut &certificate_pem[..])
            .next()
            .ok_or_else(|| bad("the certificate file holds no PEM certificate".into()))?
            .map_err(|e| bad(format!("the certificate file is not valid PEM: {e}")))?;
        let parsed = webpki::EndEntityCert::try_from(&cert)
            .map_err(|e| bad(format!("the certificate cannot be read as X.509: {e:?}")))?;
        let key_der = rustls_pemfile::private_key(&mut &private_key_pem[..])
            .map_err(|e| bad(format!("the private key file is not valid PEM: {e}")))?
            .ok_or_else(|| bad("the private key file holds no PEM private key".into()))?;
        let key = match &key_der {
            rustls_pki_types::PrivateKeyDer::Pkcs8(k) => {
                ring::signature::RsaKeyPair::from_pkcs8(k.secret_pkcs8_der())
            }
            rustls_pki_types::PrivateKeyDer::Pkcs1(k) => {
                ring::signature::RsaKeyPair::from_der(k.secret_pkcs1_der())
            }
            _ => {
                return Err(bad(
                    "the private key is not an RSA key; certificate credentials are signed with RS256"
                        .into(),
                ))
            }
        }
        .map_err(|e| {
            if e.to_string() == "WrongAlgorithm" {
                bad("the private key is not an RSA key; certificate credentials are signed with RS256".into())
            } else {
                bad(format!("the private key is not a usable RSA key ({e})"))
            }
        })?;
        let x5t = b64url(
            ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, cert.as_ref()).as_ref(),
        );
        let credential = ClientCertificate { key, x5t };
        // The key must belong to the certificate, or every assertion is refused at run time.
        let probe = b"mailsync: does this key belong to the certificate?";
        let signature = credential.sign(probe)?;
        parsed
            .verify_signature(webpki::ring::RSA_PKCS1_2048_8192_SHA256, probe, &signature)
            .map_err(|_| {
                bad("the private key does not belong to the certificate (or the key is shorter than 2048 bits)".into())
            })?;
        Ok(credential)
    }

    /// The `x5t` thumbprint: base64url SHA-1 of the certificate.
    pub fn thumbprint(&self) -> &str {
        &self.x5t
    }

    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, Error> {
        let mut signature = vec![0u8; self.key.public().modulus_len()];
        self.key
            .sign(
                &ring::signature::RSA_PKCS1_SHA256,
                &ring::rand::SystemRandom::new(),
                message,
                &mut signature,
            )
            .map_err(|_| Error::Request("signing the client assertion failed".into()))?;
        Ok(signature)
    }

    /// A signed client assertion for `client_id` towards `audience` (the token URL), valid
    /// from `now` (seconds since the epoch) for [`ASSERTION_LIFETIME`].
    pub fn assertion(&self, client_id: &str, audience: &str, now: i64) -> Result<String, Error> {
        let mut jti = [0u8; 16];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut jti)
            .map_err(|_| Error::Request("no randomness for the assertion id".into()))?;
        let jti: String = jti.iter().map(|b| format!("{b:02x}")).collect();
        let header = serde_json::json!({ "alg": "RS256", "typ": "JWT", "x5t": self.x5t });
        let claims = serde_json::json!({
            "aud": audience,
            "iss": client_id,
            "sub": client_id,
            "jti": jti,
            "nbf": now,
            "iat": now,
            "exp": now + ASSERTION_LIFETIME.as_secs() as i64,
        });
        let signing_input = format!(
            "{}.{}",
            b64url(header.to_string().as_bytes()),
            b64url(claims.to_string().as_bytes())
        );
        let signature = self.sign(signing_input.as_bytes())?;
        Ok(format!("{signing_input}.{}", b64url(&signature)))
    }
}

/// How long a token may be cached, from the answer's `expires_in`: seconds as a number or a
/// numeric string (the v1 endpoint sends strings), at most [`MAX_TOKEN_LIFETIME`]; negative is
/// zero; absent is [`DEFAULT_TOKEN_LIFETIME`]; anything else is malformed.
pub fn token_lifetime(expires_in: Option<&serde_json::Value>) -> Result<Duration, Error> {
    use serde_json::Value;
    let seconds: f64 = match expires_in {
        None | Some(Value::Null) => return Ok(DEFAULT_TOKEN_LIFETIME),
        Some(Value::Number(n)) => n.as_f64().unwrap_or(0.0),
        Some(Value::String(s)) => s.trim().parse::<f64>().map_err(|_| {
            Error::Malformed("token response: expires_in is not a number of seconds".into())
        })?,
        Some(_) => {
            return Err(Error::Malformed(
                "token response: expires_in is not a number of seconds".into(),
            ))
        }
    };
    if seconds.is_nan() || seconds <= 0.0 {
        return Ok(Duration::ZERO);
    }
    Ok(Duration::from_secs_f64(
        seconds.min(MAX_TOKEN_LIFETIME.as_secs_f64()),
    ))
}

/// OAuth2 client-credentials tokens for one app registration, cached until shortly before
/// they expire. Concurrent callers share one refresh.
pub struct OAuth2Tokens {
    /// The token endpoint; also the audience of client assertions.
    token_url: url::Url,
    /// The application (client) id.
    client_id: String,
    /// Secret or certificate.
    credential: ClientCredential,
    /// The scope asked for (`https://outlook.office365.com/.default`).
    scope: String,
    /// The token and when to fetch a new one.
    cached: tokio::sync::Mutex<Option<(String, Instant)>>,
}

impl std::fmt::Debug for OAuth2Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "OAuth2Tokens({}, {}, {:?})",
            self.token_url, self.client_id, self.credential
        )
    }
}

impl OAuth2Tokens {
    /// A token source for a client secret.
    pub fn new(token_url: url::Url, client_id: &str, client_secret: &str, scope: &str) -> Self {
        Self::with_credential(
            token_url,
            client_id,
            ClientCredential::Secret(client_secret.to_string()),
            scope,
        )
    }

    /// A token source for any credential.
    pub fn with_credential(
        token_url: url::Url,
        client_id: &str,
        credential: ClientCredential,
        scope: &str,
    ) -> Self {
        OAuth2Tokens {
            token_url,
            client_id: client_id.to_string(),
            credential,
            scope: scope.to_string(),
            cached: tokio::sync::Mutex::new(None),
        }
    }

    /// The token endpoint.
    pub fn token_url(&self) -> &url::Url {
        &self.token_url
    }

    /// A valid access token, fetched when none is cached or the cached one is about to
    /// expire. `http` must follow no redirects (the clients of this crate follow none).
    pub async fn token(&self, http: &reqwest::Client) -> Result<String, Error> {
        let mut cached = self.cached.lock().await;
        if let Some((t, refresh_at)) = cached.as_ref() {
            if Instant::now() < *refresh_at {
                return Ok(t.clone());
            }
        }
        let assertion;
        let mut form: Vec<(&str, &str)> = vec![
            ("grant_type", "client_credentials"),
            ("client_id", self.client_id.as_str()),
            ("scope", self.scope.as_str()),
        ];
        match &self.credential {
            ClientCredential::Secret(secret) => form.push(("client_secret", secret.as_str())),
            ClientCredential::Certificate(cert) => {
                let now = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs() as i64);
                assertion = cert.assertion(&self.client_id, self.token_url.as_str(), now)?;
                form.push(("client_assertion_type", JWT_BEARER));
                form.push(("client_assertion", assertion.as_str()));
            }
        }
        let resp = http
            .post(self.token_url.clone())
            .form(&form)
            .send()
            .await
            .map_err(transport_error)?;
        let status = resp.status();
        check_redirect(status, resp.headers(), &self.token_url)?;
        let body = read_capped(resp, MAX_TOKEN_RESPONSE_BYTES, "token response").await?;
        if status == StatusCode::BAD_REQUEST || status == StatusCode::UNAUTHORIZED {
            return Err(Error::Unauthorized(format!(
                "token endpoint refused the client credentials (HTTP {}{})",
                status.as_u16(),
                oauth_error(&body)
            )));
        }
        if !status.is_success() {
            return Err(Error::Transient(format!(
                "token endpoint answered HTTP {}",
                status.as_u16()
            )));
        }
        let answer: serde_json::Value = serde_json::from_slice(&body).map_err(|e| {
            Error::Malformed(format!(
                "token response is not JSON (line {}, column {})",
                e.line(),
                e.column()
            ))
        })?;
        let token = answer
            .get("access_token")
            .and_then(serde_json::Value::as_str)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| Error::Malformed("token response without access_token".into()))?
            .to_string();
        let lifetime = token_lifetime(answer.get("expires_in"))?;
        let margin = TOKEN_REFRESH_MARGIN.min(lifetime / 2);
        let now = Instant::now();
        let refresh_at = now.checked_add(lifetime - margin).unwrap_or(now);
        *cached = Some((token.clone(), refresh_at));
        Ok(token)
    }
}

/// ` (invalid_client: AADSTS7000215 …)` from an OAuth2 error answer: the code and the first
/// line of the description, bounded; the endpoint's own words, never ours.
fn oauth_error(body: &[u8]) -> String {
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) else {
        return String::new();
    };
    let code = v.get("error").and_then(|e| e.as_str()).unwrap_or_default();
    let description: String = v
        .get("error_description")
        .and_then(|e| e.as_str())
        .and_then(|d| d.lines().next())
        .unwrap_or_default()
        .chars()
        .take(200)
        .collect();
    match (code.is_empty(), description.is_empty()) {
        (true, _) => String::new(),
        (false, true) => format!(": {code}"),
        (false, false) => format!(": {code}: {description}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn token_lifetimes_are_bounded_whatever_the_endpoint_says() {
        let cases: Vec<(Option<serde_json::Value>, Result<Duration, ()>)> = vec![
            (None, Ok(DEFAULT_TOKEN_LIFETIME)),
            (Some(json!(null)), Ok(DEFAULT_TOKEN_LIFETIME)),
            (Some(json!(3599)), Ok(Duration::from_secs(3599))),
            (Some(json!("3599")), Ok(Duration::from_secs(3599))),
            (Some(json!(0)), Ok(Duration::ZERO)),
            (Some(json!(-5)), Ok(Duration::ZERO)),
            (Some(json!("-5")), Ok(Duration::ZERO)),
            (Some(json!(1_000_000_000_000u64)), Ok(MAX_TOKEN_LIFETIME)),
            (Some(json!(u64::MAX)), Ok(MAX_TOKEN_LIFETIME)),
            (Some(json!(i64::MIN)), Ok(Duration::ZERO)),
            (Some(json!(1e308)), Ok(MAX_TOKEN_LIFETIME)),
            (Some(json!("1e400")), Ok(MAX_TOKEN_LIFETIME)),
            (Some(json!("NaN")), Ok(Duration::ZERO)),
            (Some(json!("soon")), Err(())),
            (Some(json!([1])), Err(())),
            (Some(json!(true)), Err(())),
        ];
        for (value, expected) in cases {
            let got = token_lifetime(value.as_ref()).map_err(|_| ());
            assert_eq!(got, expected, "{value:?}");
        }
    }
}
