//! mailsync-testkit: helpers the test suites of every crate share.
//!
//! - [`schema`]: runs `validate.py` (Microsoft's EWS schemas, ../shared/ews-schema) over XML
//!   files, so requests and responses are checked against the official schema, not against
//!   our own reading of it. It holds no XML code of its own: the `ews` / `ews-sim` separation
//!   stays intact.
//! - [`require`]: what a test does when an outside dependency (Python with lxml, PostgreSQL)
//!   is missing: under `CI=true` it fails the test; elsewhere it skips with a printed reason.
//! - [`fixtures`]: test-only keys and certificates (fixtures/README.md).

pub mod require {
    //! Missing dependencies: fail under CI, skip with a reason elsewhere.

    /// True when running under CI (`CI=true` or `CI=1`).
    pub fn in_ci() -> bool {
        matches!(std::env::var("CI").as_deref(), Ok("true") | Ok("1"))
    }

    /// Reports a missing dependency. Panics under CI; otherwise prints why the test is skipped
    /// and returns, so the caller can `return` from the test.
    pub fn missing(what: &str) {
        if in_ci() {
            panic!("{what} (required under CI=true)");
        }
        eprintln!("SKIPPED: {what} (outside CI this test is skipped; CI fails on it)");
    }
}

pub mod fixtures {
    //! Test-only key material in `testkit/fixtures` (see its README.md).

    use std::path::PathBuf;

    /// The path of a fixture file.
    pub fn path(name: &str) -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("fixtures")
            .join(name)
    }

    /// The bytes of a fixture file.
    pub fn read(name: &str) -> Vec<u8> {
        let p = path(name);
        std::fs::read(&p).unwrap_or_else(|e| panic!("fixture {}: {e}", p.display()))
    }

    /// The OAuth2 app's certificate (`x5t` [`OAUTH_APP_X5T`]).
    pub const OAUTH_APP_CERT: &str = "oauth-app.crt";
    /// Its private key, PKCS#8.
    pub const OAUTH_APP_KEY: &str = "oauth-app.key";
    /// The same key, PKCS#1.
    pub const OAUTH_APP_KEY_PKCS1: &str = "oauth-app-pkcs1.key";
    /// An RSA key of no certificate here.
    pub const OTHER_RSA_KEY: &str = "other-rsa.key";
    /// A P-256 key.
    pub const EC_KEY: &str = "ec.key";
    /// base64url SHA-1 of [`OAUTH_APP_CERT`], from `openssl x509 -fingerprint -sha1`.
    pub const OAUTH_APP_X5T: &str = "EK6pa9bYYOFdtGgZbLVpN1Z4lm4";
}

pub mod schema {
    //! The official-schema validator.

    use std::path::{Path, PathBuf};
    use std::process::Command;

    /// Environment variable naming the ews-schema directory, when it is not at ../shared.
    pub const SCHEMA_DIR_VAR: &str = "MAILSYNC_EWS_SCHEMA_DIR";

    /// The directory holding validate.py and the .xsd files: `$MAILSYNC_EWS_SCHEMA_DIR`, or
    /// `shared/ews-schema` beside the repository (where CI and the developers have it).
    pub fn dir() -> Option<PathBuf> {
        if let Ok(d) = std::env::var(SCHEMA_DIR_VAR) {
            return Some(PathBuf::from(d));
        }
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent()?;
        let d = root.parent()?.join("shared").join("ews-schema");
        d.join("validate.py").is_file().then_some(d)
    }

    /// Runs validate.py over `files`. `Ok(None)` when the validator is unavailable outside CI
    /// (the reason was printed); `Ok(Some(output))` when all are valid; `Err(output)` otherwise.
    /// Under CI a missing validator panics.
    pub fn validate(files: &[PathBuf], strict: bool) -> Result<Option<String>, String> {
        let Some(dir) = dir() else {
            crate::require::missing("ews-schema/validate.py not found beside the repository");
            return Ok(None);
        };
        let lxml = Command::new("python3").args(["-c", "import lxml"]).output();
        if !matches!(lxml, Ok(o) if o.status.success()) {
            crate::require::missing("python3 with lxml is not installed (pip install lxml)");
            return Ok(None);
        }
        let mut cmd = Command::new("python3");
        cmd.arg(dir.join("validate.py")).arg("--quiet");
        if strict {
            cmd.arg("--strict");
        }
        let out = cmd
            .args(files)
            .output()
            .map_err(|e| format!("cannot run validate.py: {e}"))?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if out.status.success() {
            Ok(Some(text))
        } else {
            Err(text)
        }
    }
}
