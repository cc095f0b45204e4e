//! Sending outbox mails whose sender is not the mailbox's own address through the configured
//! SMTP server (lettre). The message goes out byte for byte as the CRM wrote it; the envelope
//! is the row's sender and recipients.

use lettre::address::Envelope;
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Tls, TlsParameters};
use lettre::{Address, AsyncSmtpTransport, AsyncTransport, Tokio1Executor};

use crate::config::{SmtpConfig, SmtpTls};
use crate::db::mail::OutboxRow;

/// Parses a comma- or semicolon-separated address list (`Name <a@b>` or `a@b`).
pub fn addresses(list: &str) -> Result<Vec<Address>, String> {
    list.split([',', ';'])
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            let bare = match (s.rfind('<'), s.rfind('>')) {
                (Some(a), Some(b)) if a < b => &s[a + 1..b],
                _ => s,
            };
            bare.trim()
                .parse::<Address>()
                .map_err(|e| format!("{s:?} is not an e-mail address: {e}"))
        })
        .collect()
}

/// The transport to the configured server: TLS as configured (STARTTLS required, never
/// downgraded; implicit TLS; or none for a local relay), credentials when set.
fn transport(
    relay: &SmtpConfig,
    timeout: std::time::Duration,
) -> Result<AsyncSmtpTransport<Tokio1Executor>, String> {
    let tls = || {
        TlsParameters::new(relay.host.clone())
            .map_err(|e| format!("TLS set-up for {}: {e}", relay.host))
    };
    let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(relay.host.as_str())
        .port(relay.port)
        .tls(match relay.tls {
            SmtpTls::StartTls => Tls::Required(tls()?),
            SmtpTls::Tls => Tls::Wrapper(tls()?),
            SmtpTls::None => Tls::None,
        })
        .timeout(Some(timeout));
    if let Some((user, password)) = &relay.credentials {
        builder = builder.credentials(Credentials::new(
            user.clone(),
            password.expose().to_string(),
        ));
    }
    Ok(builder.build())
}

/// `mailsync test-connection`'s check of the SMTP server: connect, EHLO, TLS as configured
/// and, with credentials, the login — what sending a mail needs before its first byte.
pub async fn check(relay: &SmtpConfig) -> Result<String, String> {
    let at = format!("{}:{}", relay.host, relay.port);
    let transport = transport(relay, std::time::Duration::from_secs(20))?;
    match transport.test_connection().await {
        Ok(true) => Ok(format!(
            "{at} answered EHLO ({}){}",
            match relay.tls {
                SmtpTls::StartTls => "STARTTLS",
                SmtpTls::Tls => "TLS",
                SmtpTls::None => "no TLS",
            },
            match &relay.credentials {
                Some((user, _)) => format!(", login as {user} accepted"),
                None => String::new(),
            }
        )),
        Ok(false) => Err(format!("{at} accepted the connection but did not answer")),
        Err(e) => Err(format!("SMTP server {at}: {e}")),
    }
}

/// Sends one outbox mail; `Err` is the reason, for the row's `error` column.
pub async fn send(
    relay: Option<&SmtpConfig>,
    row: &OutboxRow,
    mime: Vec<u8>,
) -> Result<(), String> {
    let Some(relay) = relay else {
        return Err(format!(
            "sender {:?} is not the mailbox's address and no [smtp] server is configured",
            row.sender
        ));
    };
    let from = addresses(&row.sender)?
        .into_iter()
        .next()
        .ok_or_else(|| "the sender is empty".to_string())?;
    let to = addresses(&row.recipients)?;
    if to.is_empty() {
        return Err("the mail has no recipients".into());
    }
    let envelope = Envelope::new(Some(from), to).map_err(|e| format!("bad envelope: {e}"))?;
    let transport = transport(relay, std::time::Duration::from_secs(60))?;
    // lettre ends the data with CRLF "." CRLF after the message, so a message's own final
    // CRLF would arrive as an extra empty line: it is left to that terminator.
    let body = mime.strip_suffix(b"\r\n").unwrap_or(&mime);
    transport
        .send_raw(&envelope, body)
        .await
        .map(|_| ())
        .map_err(|e| format!("SMTP server {}:{} refused it: {e}", relay.host, relay.port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn address_lists_accept_names_and_separators_and_name_what_is_wrong() {
        let got = addresses("Anna <anna@example.com>, bob@example.org; ").unwrap();
        assert_eq!(
            got.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
            ["anna@example.com", "bob@example.org"]
        );
        let err = addresses("anna@example.com, not an address").unwrap_err();
        assert!(err.contains("\"not an address\""), "{err}");
    }
}
