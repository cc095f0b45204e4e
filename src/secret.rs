//! Secrets in the configuration: where they come from, and a value type that never prints.
//!
//! A secret is written in the TOML as `{ env = "NAME" }` (read from the environment),
//! `{ file = "/path" }` (read from a file, trailing newline trimmed, as Docker and Kubernetes
//! secrets are mounted), or, discouraged but accepted for local tests, a plain string.
//! The resolved value lives in [`SecretString`], whose `Debug` and `Display` print `***`,
//! so a secret cannot leak through a log line or an error message by accident.

use std::fmt;
use std::path::PathBuf;

use serde::de::{self, Deserialize, Deserializer, MapAccess, Visitor};

use crate::environment::Environment;

/// Where a secret is read from, as written in the configuration file.
#[derive(Clone, PartialEq, Eq)]
pub enum SecretSource {
    /// `{ env = "NAME" }`: the value of an environment variable.
    Env {
        /// Name of the environment variable holding the secret.
        env: String,
    },
    /// `{ file = "/run/secrets/x" }`: the contents of a file, trailing newline trimmed.
    File {
        /// Path of the file holding the secret.
        file: PathBuf,
    },
    /// A literal value in the TOML file (accepted, but keep production secrets out of files
    /// that are checked in or world-readable).
    Inline(String),
}

impl fmt::Debug for SecretSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SecretSource::Env { env } => write!(f, "env:{env}"),
            SecretSource::File { file } => write!(f, "file:{}", file.display()),
            SecretSource::Inline(_) => f.write_str("inline:***"),
        }
    }
}

const SECRET_FORMS: &str = r#"a string, { env = "NAME" } or { file = "PATH" }"#;

impl<'de> Deserialize<'de> for SecretSource {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = SecretSource;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(SECRET_FORMS)
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<SecretSource, E> {
                Ok(SecretSource::Inline(v.to_string()))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<SecretSource, A::Error> {
                let Some(key) = map.next_key::<String>()? else {
                    return Err(de::Error::custom(format!(
                        "empty table, expected {SECRET_FORMS}"
                    )));
                };
                let value: String = map.next_value()?;
                let source = match key.as_str() {
                    "env" => SecretSource::Env { env: value },
                    "file" => SecretSource::File { file: value.into() },
                    other => return Err(de::Error::unknown_field(other, &["env", "file"])),
                };
                if let Some(extra) = map.next_key::<String>()? {
                    return Err(de::Error::custom(format!(
                        "unexpected key `{extra}`: a secret has exactly one of `env` or `file`"
                    )));
                }
                Ok(source)
            }
        }
        d.deserialize_any(V)
    }
}

impl SecretSource {
    /// Reads the secret. The error names the variable or file, never the value.
    pub fn resolve(&self, env: &dyn Environment) -> Result<SecretString, String> {
        match self {
            SecretSource::Env { env: name } => match env.var(name) {
                Some(v) if !v.is_empty() => Ok(SecretString::new(v)),
                Some(_) => Err(format!("environment variable {name} is empty")),
                None => Err(format!("environment variable {name} is not set")),
            },
            SecretSource::File { file } => match std::fs::read_to_string(file) {
                Ok(v) => {
                    let v = v.trim_end_matches(['\r', '\n']).to_string();
                    if v.is_empty() {
                        Err(format!("secret file {} is empty", file.display()))
                    } else {
                        Ok(SecretString::new(v))
                    }
                }
                Err(e) => Err(format!(
                    "secret file {} cannot be read: {e}",
                    file.display()
                )),
            },
            SecretSource::Inline(v) if v.is_empty() => Err("secret is empty".to_string()),
            SecretSource::Inline(v) => Ok(SecretString::new(v.clone())),
        }
    }
}

/// A resolved secret. Prints as `***`; the value is reachable only through [`SecretString::expose`].
#[derive(Clone, PartialEq, Eq)]
pub struct SecretString(String);

impl SecretString {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        SecretString(value.into())
    }

    /// The secret itself: call only where it is put on the wire.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SecretString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"***\"")
    }
}

impl fmt::Display for SecretString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// Whether a URL query parameter carries a secret (`password=`, `sslpassword=`, `pwd=`,
/// `secret=`, `token=`, ...).
fn secret_param(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    matches!(k.as_str(), "pass" | "pwd")
        || ["password", "secret", "token"]
            .iter()
            .any(|s| k.contains(s))
}

/// A connection URL with any password replaced by `***`, for logs and summaries: the user
/// info's password and the value of every query parameter that carries a secret.
pub fn mask_url(raw: &str) -> String {
    match url::Url::parse(raw) {
        Ok(mut u) => {
            let mut changed = false;
            if u.password().is_some() {
                let _ = u.set_password(Some("***"));
                changed = true;
            }
            if u.query_pairs().any(|(k, _)| secret_param(&k)) {
                let pairs: Vec<(String, String)> = u
                    .query_pairs()
                    .map(|(k, v)| {
                        let v = if secret_param(&k) {
                            "***".to_string()
                        } else {
                            v.into_owned()
                        };
                        (k.into_owned(), v)
                    })
                    .collect();
                u.query_pairs_mut().clear().extend_pairs(pairs);
                changed = true;
            }
            if changed {
                u.to_string()
            } else {
                raw.to_string()
            }
        }
        // Not a URL we understand: show only the scheme, the rest could hold anything.
        Err(_) => match raw.split_once(':') {
            Some((scheme, _)) => format!("{scheme}:***"),
            None => "***".to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn secret_never_prints() {
        let s = SecretString::new("hunter2");
        assert_eq!(format!("{s}"), "***");
        assert_eq!(format!("{s:?}"), "\"***\"");
        assert_eq!(
            format!("{:?}", SecretSource::Inline("hunter2".into())),
            "inline:***"
        );
    }

    #[test]
    fn resolves_env_and_reports_missing() {
        let env: HashMap<&str, &str> = [("A", "x"), ("EMPTY", "")].into();
        let ok = SecretSource::Env { env: "A".into() }.resolve(&env).unwrap();
        assert_eq!(ok.expose(), "x");
        let missing = SecretSource::Env { env: "B".into() }
            .resolve(&env)
            .unwrap_err();
        assert_eq!(missing, "environment variable B is not set");
        let empty = SecretSource::Env {
            env: "EMPTY".into(),
        }
        .resolve(&env)
        .unwrap_err();
        assert_eq!(empty, "environment variable EMPTY is empty");
    }

    #[test]
    fn resolves_file_trimming_newline() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s");
        std::fs::write(&p, "top-secret\n").unwrap();
        let env: HashMap<&str, &str> = HashMap::new();
        let v = SecretSource::File { file: p.clone() }
            .resolve(&env)
            .unwrap();
        assert_eq!(v.expose(), "top-secret");
        let err = SecretSource::File {
            file: dir.path().join("nope"),
        }
        .resolve(&env)
        .unwrap_err();
        assert!(err.starts_with("secret file "), "{err}");
        assert!(err.contains("cannot be read"), "{err}");
    }

    #[test]
    fn masks_url_passwords() {
        for (input, expected) in [
            (
                "postgres://app:s3cret@db:5432/crm",
                "postgres://app:***@db:5432/crm",
            ),
            ("postgres://db/crm", "postgres://db/crm"),
            ("sqlite:state.db", "sqlite:state.db"),
            ("mysql://root@localhost/x", "mysql://root@localhost/x"),
            (
                "postgres://db/crm?user=app&password=s3cret&sslmode=require",
                "postgres://db/crm?user=app&password=***&sslmode=require",
            ),
            (
                "mysql://db/crm?user=app&PASSWORD=s3cret",
                "mysql://db/crm?user=app&PASSWORD=***",
            ),
            (
                "postgres://app:pw@db/crm?sslpassword=key-pass&application_name=mailsync",
                "postgres://app:***@db/crm?sslpassword=***&application_name=mailsync",
            ),
            (
                "postgres://db/crm?pwd=a%26b&sslmode=disable",
                "postgres://db/crm?pwd=***&sslmode=disable",
            ),
            ("sqlite:state.db?mode=rwc", "sqlite:state.db?mode=rwc"),
        ] {
            assert_eq!(mask_url(input), expected, "{input}");
            for secret in ["s3cret", "key-pass", "a%26b", "a&b"] {
                assert!(!mask_url(input).contains(secret), "{input}");
            }
        }
    }
}
