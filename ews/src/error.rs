//! What can go wrong talking to Exchange, sorted by what the caller does about it.

use std::time::Duration;

/// An EWS failure. The variants are the decisions a caller makes: wait, retry, start the
/// folder over, resubscribe, re-read and merge, forget the item, stop the mailbox, or report
/// a broken response.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The server is over budget: send nothing to it for `back_off`.
    #[error("throttled by exchange ({code}), back off {back_off:?}")]
    Throttled {
        /// How long to stay away (BackOffMilliseconds, or a default for HTTP 503).
        back_off: Duration,
        /// ErrorServerBusy, ErrorExceededConnectionCount, HTTP 503, ...
        code: String,
    },
    /// Worth retrying as it is: 5xx, timeouts, resets, ErrorInternalServerTransientError.
    #[error("transient failure: {0}")]
    Transient(String),
    /// The SyncState is not usable: sync the folder again from no state.
    #[error("invalid sync state ({0})")]
    InvalidSyncState(String),
    /// The subscription is gone (expired, not found, missed events): resubscribe and resync.
    #[error("subscription gone ({0})")]
    SubscriptionGone(String),
    /// The item changed since the change key we held: re-read and merge.
    #[error("conflict ({0})")]
    Conflict(String),
    /// The item or folder does not exist (any more).
    #[error("not found ({0})")]
    NotFound(String),
    /// HTTP 401: the credentials were refused.
    #[error("unauthorized: {0}")]
    Unauthorized(String),
    /// Authenticated but not allowed: impersonation denied, access denied, mailbox unknown.
    #[error("denied ({code}): {message}")]
    Denied {
        /// The EWS response code.
        code: String,
        /// The server's message text.
        message: String,
    },
    /// The response could not be understood. Never a panic.
    #[error("malformed response: {0}")]
    Malformed(String),
    /// Any other EWS error code, with the server's message.
    #[error("{code}: {message}")]
    Response {
        /// The EWS response code.
        code: String,
        /// The server's message text.
        message: String,
    },
    /// The request could not be built or sent for a local reason (bad URL, TLS set-up).
    #[error("request failed: {0}")]
    Request(String),
    /// The answer was larger than the configured cap; it was not read further.
    #[error("response larger than the cap of {limit} bytes ({what}); nothing was read past it")]
    TooLarge {
        /// The cap that was exceeded, in bytes.
        limit: u64,
        /// Which cap: `response`, `mime response`, `token response`, `autodiscover response`.
        what: &'static str,
    },
    /// The server answered with a redirect. EWS and token requests follow none (a redirect
    /// could carry credentials elsewhere, and 307/308 replay the body with the secret).
    #[error("HTTP {status} redirect to {location} refused: EWS and token requests follow no redirects; configure the final URL")]
    Redirected {
        /// The 3xx status.
        status: u16,
        /// Where the server pointed (scheme, host and path only; no query).
        location: String,
    },
}

/// Back-off used when Exchange says "busy" without saying for how long (HTTP 503), or says
/// it in a form that is not a number of milliseconds.
pub const DEFAULT_BACK_OFF: Duration = Duration::from_secs(30);

/// The longest back-off honoured. Exchange asks for up to about 300,000 ms; anything longer is
/// taken as this, so a broken or hostile value cannot stop a server's sync for days (or
/// overflow a deadline).
pub const MAX_BACK_OFF: Duration = Duration::from_secs(5 * 60);

/// A server's back-off, at most [`MAX_BACK_OFF`].
pub fn clamp_back_off(back_off: Duration) -> Duration {
    back_off.min(MAX_BACK_OFF)
}

/// Reads a BackOffMilliseconds value as a server wrote it: a number of milliseconds (clamped
/// to [`MAX_BACK_OFF`], also when it does not fit in 64 bits); anything else (negative,
/// fractional, text) is `None`, for which callers use [`DEFAULT_BACK_OFF`].
pub fn parse_back_off_ms(text: &str) -> Option<Duration> {
    let t = text.trim();
    if t.is_empty() || !t.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let max_ms = MAX_BACK_OFF.as_millis() as u64;
    Some(Duration::from_millis(
        t.parse::<u64>().map_or(max_ms, |ms| ms.min(max_ms)),
    ))
}

impl Error {
    /// Maps an EWS response code (from a response message or a SOAP fault) to the error a
    /// caller acts on. `back_off` is BackOffMilliseconds where the server sent it.
    pub fn from_code(code: &str, message: &str, back_off: Option<Duration>) -> Error {
        let m = || message.to_string();
        match code {
            "ErrorServerBusy"
            | "ErrorExceededConnectionCount"
            | "ErrorExceededSubscriptionCount"
            | "ErrorExceededFindCountLimit"
            | "ErrorTooManyObjectsOpened" => Error::Throttled {
                back_off: clamp_back_off(back_off.unwrap_or(DEFAULT_BACK_OFF)),
                code: code.to_string(),
            },
            "ErrorInternalServerTransientError"
            | "ErrorTimeoutExpired"
            | "ErrorMailboxMoveInProgress"
            | "ErrorMailboxStoreUnavailable"
            | "ErrorConnectionFailed"
            | "ErrorInternalServerError"
            | "ErrorBatchProcessingStopped" => Error::Transient(format!("{code}: {message}")),
            "ErrorInvalidSyncStateData" | "ErrorSyncFolderNotFound" => {
                Error::InvalidSyncState(code.to_string())
            }
            "ErrorSubscriptionNotFound"
            | "ErrorExpiredSubscription"
            | "ErrorMissedNotificationEvents"
            | "ErrorInvalidSubscription"
            | "ErrorSubscriptionAccessDenied"
            | "ErrorSubscriptionDelegateAccessNotSupported" => {
                Error::SubscriptionGone(code.to_string())
            }
            "ErrorIrresolvableConflict"
            | "ErrorInvalidChangeKey"
            | "ErrorChangeKeyRequiredForWriteOperations"
            | "ErrorStaleObject" => Error::Conflict(code.to_string()),
            "ErrorItemNotFound"
            | "ErrorFolderNotFound"
            | "ErrorInvalidIdNotAnItemAttachmentId"
            | "ErrorInvalidIdMalformed"
            | "ErrorInvalidId" => Error::NotFound(code.to_string()),
            "ErrorImpersonateUserDenied"
            | "ErrorImpersonationDenied"
            | "ErrorAccessDenied"
            | "ErrorNonExistentMailbox"
            | "ErrorMailboxLogonFailed"
            | "ErrorInvalidUserSid"
            | "ErrorNotDelegate"
            | "ErrorInvalidImpersonationHeader"
            | "ErrorAccountDisabled" => Error::Denied {
                code: code.to_string(),
                message: m(),
            },
            _ => Error::Response {
                code: code.to_string(),
                message: m(),
            },
        }
    }

    /// A short, fixed name for the kind of error (a metric label value).
    pub fn class(&self) -> &'static str {
        match self {
            Error::Throttled { .. } => "throttled",
            Error::Transient(_) => "transient",
            Error::InvalidSyncState(_) => "invalid_sync_state",
            Error::SubscriptionGone(_) => "subscription_gone",
            Error::Conflict(_) => "conflict",
            Error::NotFound(_) => "not_found",
            Error::Unauthorized(_) => "unauthorized",
            Error::Denied { .. } => "denied",
            Error::Malformed(_) => "malformed",
            Error::Response { .. } => "error",
            Error::Request(_) => "request",
            Error::TooLarge { .. } => "too_large",
            Error::Redirected { .. } => "redirected",
        }
    }

    /// Whether the same request may succeed later unchanged.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Error::Throttled { .. } | Error::Transient(_))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_map_to_actions() {
        type IsExpected = fn(&Error) -> bool;
        let cases: &[(&str, IsExpected)] = &[
            ("ErrorServerBusy", |e| matches!(e, Error::Throttled { .. })),
            ("ErrorExceededConnectionCount", |e| {
                matches!(e, Error::Throttled { .. })
            }),
            ("ErrorInternalServerTransientError", |e| {
                matches!(e, Error::Transient(_))
            }),
            ("ErrorInvalidSyncStateData", |e| {
                matches!(e, Error::InvalidSyncState(_))
            }),
            ("ErrorSubscriptionNotFound", |e| {
                matches!(e, Error::SubscriptionGone(_))
            }),
            ("ErrorMissedNotificationEvents", |e| {
                matches!(e, Error::SubscriptionGone(_))
            }),
            ("ErrorIrresolvableConflict", |e| {
                matches!(e, Error::Conflict(_))
            }),
            ("ErrorInvalidChangeKey", |e| matches!(e, Error::Conflict(_))),
            ("ErrorItemNotFound", |e| matches!(e, Error::NotFound(_))),
            ("ErrorImpersonateUserDenied", |e| {
                matches!(e, Error::Denied { .. })
            }),
            ("ErrorAccessDenied", |e| matches!(e, Error::Denied { .. })),
            ("ErrorSomethingNew", |e| matches!(e, Error::Response { .. })),
        ];
        for (code, ok) in cases {
            let e = Error::from_code(code, "msg", None);
            assert!(ok(&e), "{code} -> {e:?}");
        }
        let retryable: Vec<bool> = [
            "ErrorServerBusy",
            "ErrorInternalServerTransientError",
            "ErrorInvalidSyncStateData",
            "ErrorAccessDenied",
            "ErrorItemNotFound",
        ]
        .iter()
        .map(|c| Error::from_code(c, "", None).is_retryable())
        .collect();
        assert_eq!(retryable, vec![true, true, false, false, false]);
        assert_eq!(
            Error::from_code("ErrorServerBusy", "", Some(Duration::from_millis(297_749))),
            Error::Throttled {
                back_off: Duration::from_millis(297_749),
                code: "ErrorServerBusy".into()
            }
        );
    }

    #[test]
    fn back_offs_are_bounded_whatever_the_server_writes() {
        let cases: &[(&str, Option<Duration>)] = &[
            ("30000", Some(Duration::from_secs(30))),
            (" 297749 ", Some(Duration::from_millis(297_749))),
            ("0", Some(Duration::ZERO)),
            ("1000000000000", Some(MAX_BACK_OFF)),
            ("18446744073709551615", Some(MAX_BACK_OFF)),
            ("99999999999999999999999999999", Some(MAX_BACK_OFF)),
            ("-5", None),
            ("-18446744073709551615", None),
            ("1.5", None),
            ("1e9", None),
            ("soon", None),
            ("", None),
        ];
        for (text, expected) in cases {
            assert_eq!(parse_back_off_ms(text), *expected, "{text:?}");
        }
        // Whatever arrives, the error carries a bounded back-off.
        for back_off in [
            None,
            Some(Duration::from_millis(1_000_000_000_000)),
            Some(Duration::from_millis(u64::MAX)),
            Some(Duration::MAX),
        ] {
            let Error::Throttled { back_off, .. } =
                Error::from_code("ErrorServerBusy", "", back_off)
            else {
                panic!("ErrorServerBusy is throttling")
            };
            assert!(back_off <= MAX_BACK_OFF, "{back_off:?}");
        }
    }
}
