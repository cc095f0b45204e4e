//! SOAP 1.1 framing: the request envelope with its EWS headers, and reading a response
//! envelope into its body, its ServerVersionInfo, its faults and its response messages.

use std::time::Duration;

use crate::xml::{self, Element, Ns, XmlWriter, NS_MESSAGES, NS_SOAP, NS_TYPES};
use crate::Error;

/// The headers of one request.
#[derive(Debug, Clone, Copy)]
pub struct Headers<'a> {
    /// `RequestServerVersion Version="…"`, e.g. `Exchange2010_SP2`.
    pub version: &'a str,
    /// The mailbox to act for with ExchangeImpersonation, if any.
    pub impersonate: Option<&'a str>,
    /// Delegate (full) access: the mailbox every `DistinguishedFolderId` of the body names
    /// with `t:Mailbox`. Exclusive with `impersonate` (delegate requests carry no
    /// ExchangeImpersonation header).
    pub delegate: Option<&'a str>,
    /// `TimeZoneContext` id (a Windows time zone id such as `UTC` or `W. Europe Standard Time`).
    pub time_zone: Option<&'a str>,
}

/// Wraps a request body (written by `body`) in a SOAP envelope with the EWS headers.
pub fn envelope(headers: &Headers<'_>, body: impl FnOnce(&mut XmlWriter)) -> Vec<u8> {
    let mut w = XmlWriter::new();
    w.raw(br#"<?xml version="1.0" encoding="utf-8"?>"#);
    w.start(
        "soap:Envelope",
        &[
            ("xmlns:soap", NS_SOAP),
            ("xmlns:m", NS_MESSAGES),
            ("xmlns:t", NS_TYPES),
        ],
    );
    w.start("soap:Header", &[]);
    w.empty("t:RequestServerVersion", &[("Version", headers.version)]);
    if let Some(smtp) = headers.impersonate {
        w.start("t:ExchangeImpersonation", &[])
            .start("t:ConnectingSID", &[])
            .leaf("t:PrimarySmtpAddress", smtp)
            .end("t:ConnectingSID")
            .end("t:ExchangeImpersonation");
    }
    if let Some(tz) = headers.time_zone {
        w.start("t:TimeZoneContext", &[])
            .empty("t:TimeZoneDefinition", &[("Id", tz)])
            .end("t:TimeZoneContext");
    }
    w.end("soap:Header");
    w.start("soap:Body", &[]);
    w.set_mailbox(headers.delegate);
    body(&mut w);
    w.end("soap:Body").end("soap:Envelope");
    w.into_bytes()
}

/// What the server says it is, from the `ServerVersionInfo` response header.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ServerVersionInfo {
    /// 15 for Exchange 2013 and later.
    pub major_version: u32,
    /// 0 = 2013, 1 = 2016, 2 = 2019 (with major 15).
    pub minor_version: u32,
    /// Build number.
    pub major_build_number: u32,
    /// Build revision.
    pub minor_build_number: u32,
    /// The schema version string, e.g. `V2_23`.
    pub version: String,
}

/// A parsed response envelope.
#[derive(Debug, Clone)]
pub struct Response {
    /// The server version header, when sent.
    pub server_version: Option<ServerVersionInfo>,
    /// The first element inside `Body` (e.g. `m:GetItemResponse`).
    pub body: Element,
}

/// Reads a response envelope. A SOAP fault becomes the matching [`Error`].
pub fn parse_response(doc: &[u8]) -> Result<Response, Error> {
    let root = xml::parse(doc)?;
    response_from_envelope(root)
}

/// As [`parse_response`], for an envelope already read into an element tree.
pub fn response_from_envelope(root: Element) -> Result<Response, Error> {
    if root.ns != Ns::Soap || root.name != "Envelope" {
        return Err(Error::Malformed(format!(
            "expected a SOAP Envelope, got <{}>",
            root.name
        )));
    }
    let server_version = root
        .child("Header")
        .and_then(|h| h.child("ServerVersionInfo"))
        .map(|v| {
            let n = |a: &str| v.attr(a).and_then(|x| x.parse().ok()).unwrap_or(0);
            ServerVersionInfo {
                major_version: n("MajorVersion"),
                minor_version: n("MinorVersion"),
                major_build_number: n("MajorBuildNumber"),
                minor_build_number: n("MinorBuildNumber"),
                version: v.attr("Version").unwrap_or_default().to_string(),
            }
        });
    let body = root
        .children
        .into_iter()
        .find(|c| c.name == "Body")
        .ok_or_else(|| Error::Malformed("envelope without Body".into()))?;
    let first = body
        .children
        .into_iter()
        .next()
        .ok_or_else(|| Error::Malformed("empty Body".into()))?;
    if first.ns == Ns::Soap && first.name == "Fault" {
        return Err(fault(&first));
    }
    Ok(Response {
        server_version,
        body: first,
    })
}

/// Turns a SOAP Fault into an error: the EWS ResponseCode in `detail` when present, else the
/// faultcode's local part; BackOffMilliseconds from `detail/MessageXml`.
pub fn fault(f: &Element) -> Error {
    let detail = f.child("detail");
    let faultcode = f.child_text("faultcode").unwrap_or_default();
    let local_code = faultcode.rsplit(':').next().unwrap_or(faultcode).trim();
    let code = detail
        .and_then(|d| d.child_text("ResponseCode"))
        .map(str::trim)
        .unwrap_or(local_code);
    let message = detail
        .and_then(|d| d.child_text("Message"))
        .or_else(|| f.child_text("faultstring"))
        .unwrap_or_default()
        .trim();
    let back_off = detail
        .and_then(|d| d.child("MessageXml"))
        .and_then(back_off_ms);
    if code.is_empty() {
        return Error::Malformed(format!("SOAP fault without a code: {message}"));
    }
    Error::from_code(code, message, back_off)
}

/// BackOffMilliseconds from MessageXml, bounded ([`crate::error::parse_back_off_ms`]).
fn back_off_ms(message_xml: &Element) -> Option<Duration> {
    message_xml
        .children_named("Value")
        .find(|v| v.attr("Name") == Some("BackOffMilliseconds"))
        .and_then(|v| crate::error::parse_back_off_ms(&v.text))
}

/// The response messages of a response body (`…Response/ResponseMessages/*ResponseMessage`),
/// one per requested item or folder, in request order. Each is the message element, or the
/// error it carries. A Warning (such as ErrorBatchProcessingStopped) is an error for its item.
pub fn response_messages(body: &Element) -> Result<Vec<Result<&Element, Error>>, Error> {
    let msgs = body
        .child("ResponseMessages")
        .ok_or_else(|| Error::Malformed(format!("<{}> without ResponseMessages", body.name)))?;
    Ok(msgs.children.iter().map(message_result).collect())
}

/// The one response message of a single-item operation (SyncFolderItems, Subscribe, …).
pub fn single_message(body: &Element) -> Result<&Element, Error> {
    response_messages(body)?
        .into_iter()
        .next()
        .ok_or_else(|| Error::Malformed(format!("<{}> has no response message", body.name)))?
}

/// A response message is a success only with ResponseClass Success and code NoError.
pub fn message_result(m: &Element) -> Result<&Element, Error> {
    let class = m.attr("ResponseClass").unwrap_or("Success");
    let code = m
        .child_text("ResponseCode")
        .map(str::trim)
        .unwrap_or("NoError");
    if class == "Success" && code == "NoError" {
        return Ok(m);
    }
    if code == "NoError" {
        // A Warning with NoError carries nothing to act on.
        return Ok(m);
    }
    let message = m.child_text("MessageText").unwrap_or_default().trim();
    let back_off = m.child("MessageXml").and_then(back_off_ms);
    Err(Error::from_code(code, message, back_off))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_has_the_headers() {
        let doc = envelope(
            &Headers {
                version: "Exchange2013_SP1",
                impersonate: Some("alice@example.com"),
                delegate: None,
                time_zone: Some("UTC"),
            },
            |w| {
                w.empty("m:GetFolder", &[]);
            },
        );
        let s = String::from_utf8(doc).unwrap();
        assert!(
            s.contains(r#"<t:RequestServerVersion Version="Exchange2013_SP1"/>"#),
            "{s}"
        );
        assert!(s.contains("<t:ExchangeImpersonation><t:ConnectingSID><t:PrimarySmtpAddress>alice@example.com</t:PrimarySmtpAddress></t:ConnectingSID></t:ExchangeImpersonation>"), "{s}");
        assert!(
            s.contains(
                r#"<t:TimeZoneContext><t:TimeZoneDefinition Id="UTC"/></t:TimeZoneContext>"#
            ),
            "{s}"
        );
        assert!(s.contains("<soap:Body><m:GetFolder/></soap:Body>"), "{s}");
    }

    #[test]
    fn delegate_requests_name_the_mailbox_in_every_distinguished_folder() {
        use crate::types::{DistinguishedFolder, FolderRef};
        let doc = envelope(
            &Headers {
                version: "Exchange2013_SP1",
                impersonate: None,
                delegate: Some("bob@example.com"),
                time_zone: None,
            },
            |w| {
                FolderRef::well_known(DistinguishedFolder::Inbox).write(w);
                FolderRef::Distinguished {
                    folder: DistinguishedFolder::Calendar,
                    mailbox: Some("carol@example.com".into()),
                }
                .write(w);
            },
        );
        let s = String::from_utf8(doc).unwrap();
        assert!(!s.contains("ExchangeImpersonation"), "{s}");
        assert!(s.contains(r#"<t:DistinguishedFolderId Id="inbox"><t:Mailbox><t:EmailAddress>bob@example.com</t:EmailAddress></t:Mailbox></t:DistinguishedFolderId>"#), "{s}");
        // An explicit mailbox stays what it is.
        assert!(s.contains(r#"<t:DistinguishedFolderId Id="calendar"><t:Mailbox><t:EmailAddress>carol@example.com</t:EmailAddress></t:Mailbox></t:DistinguishedFolderId>"#), "{s}");
    }

    #[test]
    fn a_huge_or_odd_back_off_in_a_fault_is_bounded() {
        let fault = |ms: &str| {
            format!(
                r#"<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Body><s:Fault><faultcode xmlns:a="http://schemas.microsoft.com/exchange/services/2006/types">a:ErrorServerBusy</faultcode><faultstring>busy</faultstring><detail><e:ResponseCode xmlns:e="http://schemas.microsoft.com/exchange/services/2006/errors">ErrorServerBusy</e:ResponseCode><t:MessageXml xmlns:t="http://schemas.microsoft.com/exchange/services/2006/types"><t:Value Name="BackOffMilliseconds">{ms}</t:Value></t:MessageXml></detail></s:Fault></s:Body></s:Envelope>"#
            )
        };
        for (ms, expected) in [
            ("1000000000000", crate::error::MAX_BACK_OFF),
            ("18446744073709551615", crate::error::MAX_BACK_OFF),
            ("-1", crate::error::DEFAULT_BACK_OFF),
            ("garbage", crate::error::DEFAULT_BACK_OFF),
            ("45000", Duration::from_secs(45)),
        ] {
            match parse_response(fault(ms).as_bytes()) {
                Err(Error::Throttled { back_off, .. }) => assert_eq!(back_off, expected, "{ms}"),
                other => panic!("{ms}: {other:?}"),
            }
        }
    }
}
