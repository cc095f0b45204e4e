//! The XML layer of the client: a tolerant, namespace-aware reader into a small element tree,
//! and a writer for requests.
//!
//! Responses are read into [`Element`]s keyed by (namespace, local name), so any prefix a
//! server chooses works and unknown elements are simply not looked at. Reading never panics:
//! bad input is a [`crate::Error::Malformed`].

use std::borrow::Cow;

use quick_xml::events::{BytesEnd, BytesStart, BytesText, Event};
use quick_xml::name::ResolveResult;
use quick_xml::NsReader;

use crate::Error;

/// SOAP 1.1 envelope namespace.
pub const NS_SOAP: &str = "http://schemas.xmlsoap.org/soap/envelope/";
/// EWS messages namespace (m:).
pub const NS_MESSAGES: &str = "http://schemas.microsoft.com/exchange/services/2006/messages";
/// EWS types namespace (t:).
pub const NS_TYPES: &str = "http://schemas.microsoft.com/exchange/services/2006/types";
/// EWS errors namespace (e:), used in SOAP fault details.
pub const NS_ERRORS: &str = "http://schemas.microsoft.com/exchange/services/2006/errors";

/// The namespaces the client tells apart; everything else is [`Ns::Other`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ns {
    /// SOAP 1.1 or 1.2 envelope.
    Soap,
    /// EWS messages.
    Messages,
    /// EWS types.
    Types,
    /// EWS errors.
    Errors,
    /// Autodiscover (POX or SOAP).
    Autodiscover,
    /// No namespace.
    None,
    /// Anything else.
    Other,
}

impl Ns {
    fn from_uri(uri: &[u8]) -> Ns {
        match uri {
            b"http://schemas.xmlsoap.org/soap/envelope/"
            | b"http://www.w3.org/2003/05/soap-envelope" => Ns::Soap,
            b"http://schemas.microsoft.com/exchange/services/2006/messages" => Ns::Messages,
            b"http://schemas.microsoft.com/exchange/services/2006/types" => Ns::Types,
            b"http://schemas.microsoft.com/exchange/services/2006/errors" => Ns::Errors,
            u if u.starts_with(b"http://schemas.microsoft.com/exchange/autodiscover")
                || u.starts_with(b"http://schemas.microsoft.com/exchange/2010/Autodiscover") =>
            {
                Ns::Autodiscover
            }
            _ => Ns::Other,
        }
    }
}

/// One element of a parsed document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Element {
    /// Namespace of the element.
    pub ns: Ns,
    /// Local name, without prefix.
    pub name: String,
    /// Attributes by local name (namespace-qualified attributes are rare in EWS and kept by
    /// local name too).
    pub attrs: Vec<(String, String)>,
    /// Child elements in document order.
    pub children: Vec<Element>,
    /// Concatenated text content (unescaped), for leaf elements.
    pub text: String,
}

/// Deeper nesting than this is refused: no EWS document comes close, and it bounds memory
/// on hostile input.
const MAX_DEPTH: usize = 256;

impl Element {
    /// The first child with this local name (any namespace).
    pub fn child(&self, name: &str) -> Option<&Element> {
        self.children.iter().find(|c| c.name == name)
    }

    /// Children with this local name.
    pub fn children_named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Element> + 'a {
        self.children.iter().filter(move |c| c.name == name)
    }

    /// The first descendant with this local name, depth first.
    pub fn descendant(&self, name: &str) -> Option<&Element> {
        for c in &self.children {
            if c.name == name {
                return Some(c);
            }
            if let Some(d) = c.descendant(name) {
                return Some(d);
            }
        }
        None
    }

    /// An attribute by local name.
    pub fn attr(&self, name: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Text of the child `name`, if present.
    pub fn child_text(&self, name: &str) -> Option<&str> {
        self.child(name).map(|c| c.text.as_str())
    }

    /// Text of the child `name` as a boolean (`true`/`false`/`1`/`0`, as EWS sends both).
    pub fn child_bool(&self, name: &str) -> Option<bool> {
        self.child_text(name).and_then(parse_bool)
    }

    /// Text of the child `name` as a number.
    pub fn child_num<T: std::str::FromStr>(&self, name: &str) -> Option<T> {
        self.child_text(name).and_then(|t| t.trim().parse().ok())
    }
}

/// EWS booleans: `true`, `false`, `1`, `0`.
pub fn parse_bool(s: &str) -> Option<bool> {
    match s.trim() {
        "true" | "1" => Some(true),
        "false" | "0" => Some(false),
        _ => None,
    }
}

/// Parses a whole document and returns its root element.
pub fn parse(doc: &[u8]) -> Result<Element, Error> {
    let text = std::str::from_utf8(doc).map_err(|e| Error::Malformed(format!("not UTF-8: {e}")))?;
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut reader = NsReader::from_str(text);
    let mut stack: Vec<Element> = Vec::new();
    let malformed =
        |e: &dyn std::fmt::Display, pos: u64| Error::Malformed(format!("at byte {pos}: {e}"));
    loop {
        let pos = reader.buffer_position();
        let (ns, event) = reader
            .read_resolved_event()
            .map_err(|e| malformed(&e, pos))?;
        let ns = match ns {
            ResolveResult::Bound(n) => Ns::from_uri(n.as_ref()),
            ResolveResult::Unbound => Ns::None,
            ResolveResult::Unknown(p) => {
                return Err(Error::Malformed(format!(
                    "undeclared namespace prefix {:?}",
                    String::from_utf8_lossy(&p)
                )))
            }
        };
        match event {
            Event::Start(e) => {
                if stack.len() >= MAX_DEPTH {
                    return Err(Error::Malformed(format!("nesting deeper than {MAX_DEPTH}")));
                }
                stack.push(element(ns, &e).map_err(|e| malformed(&e, pos))?);
            }
            Event::Empty(e) => {
                let el = element(ns, &e).map_err(|e| malformed(&e, pos))?;
                match stack.last_mut() {
                    Some(parent) => parent.children.push(el),
                    None => return Ok(el),
                }
            }
            Event::End(_) => {
                let done = stack
                    .pop()
                    .ok_or_else(|| Error::Malformed("unbalanced end tag".into()))?;
                match stack.last_mut() {
                    Some(parent) => parent.children.push(done),
                    None => return Ok(done),
                }
            }
            Event::Text(t) => {
                if let Some(top) = stack.last_mut() {
                    let s = t.unescape().map_err(|e| malformed(&e, pos))?;
                    top.text.push_str(&s);
                }
            }
            Event::CData(c) => {
                if let Some(top) = stack.last_mut() {
                    top.text.push_str(&String::from_utf8_lossy(&c.into_inner()));
                }
            }
            Event::Eof => {
                return Err(Error::Malformed(if stack.is_empty() {
                    "empty document".into()
                } else {
                    "document ends inside an element".into()
                }))
            }
            _ => {}
        }
    }
}

fn element(ns: Ns, e: &BytesStart<'_>) -> Result<Element, quick_xml::Error> {
    let mut attrs = Vec::new();
    for a in e.attributes() {
        let a = a.map_err(quick_xml::Error::from)?;
        let key = a.key.local_name();
        let key = String::from_utf8_lossy(key.as_ref()).into_owned();
        if key == "xmlns" || a.key.as_ref().starts_with(b"xmlns:") {
            continue;
        }
        attrs.push((key, a.unescape_value()?.into_owned()));
    }
    Ok(Element {
        ns,
        name: String::from_utf8_lossy(e.local_name().as_ref()).into_owned(),
        attrs,
        children: Vec::new(),
        text: String::new(),
    })
}

/// Writes request XML. Element names carry their prefix (`m:` or `t:`); the envelope declares
/// both namespaces once. Text and attribute values are escaped here, so callers pass raw values.
pub struct XmlWriter {
    w: quick_xml::Writer<Vec<u8>>,
    /// Delegate access: the mailbox whose folders the request names. Every
    /// `DistinguishedFolderId` written without an explicit mailbox names this one
    /// ([`crate::types::FolderRef::write`]), so no operation has to know the access mode.
    mailbox: Option<String>,
}

impl Default for XmlWriter {
    fn default() -> Self {
        Self::new()
    }
}

impl XmlWriter {
    /// An empty document.
    pub fn new() -> Self {
        XmlWriter {
            w: quick_xml::Writer::new(Vec::with_capacity(1024)),
            mailbox: None,
        }
    }

    /// Sets the mailbox distinguished folders name by default (delegate access), or none.
    pub fn set_mailbox(&mut self, mailbox: Option<&str>) -> &mut Self {
        self.mailbox = mailbox.map(str::to_string);
        self
    }

    /// The mailbox distinguished folders name by default (delegate access), if any.
    pub fn mailbox(&self) -> Option<&str> {
        self.mailbox.as_deref()
    }

    /// Opens `<name attrs…>`.
    pub fn start(&mut self, name: &str, attrs: &[(&str, &str)]) -> &mut Self {
        let mut s = BytesStart::new(name);
        for (k, v) in attrs {
            s.push_attribute((*k, *v));
        }
        // Writing into a Vec cannot fail.
        let _ = self.w.write_event(Event::Start(s));
        self
    }

    /// Closes `</name>`.
    pub fn end(&mut self, name: &str) -> &mut Self {
        let _ = self.w.write_event(Event::End(BytesEnd::new(name)));
        self
    }

    /// `<name attrs…/>`.
    pub fn empty(&mut self, name: &str, attrs: &[(&str, &str)]) -> &mut Self {
        let mut s = BytesStart::new(name);
        for (k, v) in attrs {
            s.push_attribute((*k, *v));
        }
        let _ = self.w.write_event(Event::Empty(s));
        self
    }

    /// Escaped text.
    pub fn text(&mut self, text: &str) -> &mut Self {
        let _ = self
            .w
            .write_event(Event::Text(BytesText::new(&xml_safe(text))));
        self
    }

    /// `<name>text</name>`.
    pub fn leaf(&mut self, name: &str, text: &str) -> &mut Self {
        self.start(name, &[]).text(text).end(name)
    }

    /// `<name>text</name>` when `text` is `Some`.
    pub fn opt_leaf(&mut self, name: &str, text: Option<&str>) -> &mut Self {
        if let Some(t) = text {
            self.leaf(name, t);
        }
        self
    }

    /// Appends already-serialized XML (used for the envelope around a body).
    pub fn raw(&mut self, xml: &[u8]) -> &mut Self {
        self.w.get_mut().extend_from_slice(xml);
        self
    }

    /// The bytes written.
    pub fn into_bytes(self) -> Vec<u8> {
        self.w.into_inner()
    }
}

/// Drops characters XML 1.0 cannot carry at all (control characters other than tab, CR, LF),
/// so a stray byte in a CRM field cannot make a request unparseable for Exchange.
fn xml_safe(s: &str) -> Cow<'_, str> {
    if s.chars().all(is_xml_char) {
        Cow::Borrowed(s)
    } else {
        Cow::Owned(s.chars().filter(|c| is_xml_char(*c)).collect())
    }
}

fn is_xml_char(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\r') || (c >= ' ' && c != '\u{fffe}' && c != '\u{ffff}')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_prefix_and_default_namespace_read_alike() {
        for doc in [
            r#"<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Body><x:Foo xmlns:x="http://schemas.microsoft.com/exchange/services/2006/messages" A="1">hi &amp; bye</x:Foo></s:Body></s:Envelope>"#,
            r#"<Envelope xmlns="http://schemas.xmlsoap.org/soap/envelope/"><Body><Foo xmlns="http://schemas.microsoft.com/exchange/services/2006/messages" A="1"><![CDATA[hi & bye]]></Foo></Body></Envelope>"#,
        ] {
            let root = parse(doc.as_bytes()).unwrap();
            assert_eq!(root.ns, Ns::Soap);
            let foo = root.child("Body").unwrap().child("Foo").unwrap();
            assert_eq!(foo.ns, Ns::Messages);
            assert_eq!(foo.attr("A"), Some("1"));
            assert_eq!(foo.text, "hi & bye");
        }
    }

    #[test]
    fn broken_documents_are_malformed_not_panics() {
        for doc in ["", "<a>", "<a></b>", "<x:a/>", "\u{feff}", "<a>&bogus;</a>"] {
            assert!(
                matches!(parse(doc.as_bytes()), Err(Error::Malformed(_))),
                "{doc:?}"
            );
        }
        assert!(matches!(parse(&[0xff, 0xfe]), Err(Error::Malformed(_))));
        let deep = "<a>".repeat(MAX_DEPTH + 1);
        assert!(matches!(parse(deep.as_bytes()), Err(Error::Malformed(_))));
    }

    #[test]
    fn writer_escapes_and_drops_invalid_characters() {
        let mut w = XmlWriter::new();
        w.start("t:Subject", &[("A", "x\"<")])
            .text("a < b & \u{1}c")
            .end("t:Subject");
        assert_eq!(
            String::from_utf8(w.into_bytes()).unwrap(),
            r#"<t:Subject A="x&quot;&lt;">a &lt; b &amp; c</t:Subject>"#
        );
    }
}
