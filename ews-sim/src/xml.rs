//! The simulator's own XML: a request reader into [`Node`]s (prefixes dropped, namespaces
//! checked where it matters) and an escaping text writer for responses.
//!
//! Written independently of the `ews` crate's XML code on purpose: a misreading of the
//! protocol in one must not be mirrored by the other.

use std::borrow::Cow;
use std::collections::HashSet;
use std::sync::OnceLock;

use quick_xml::events::Event;
use quick_xml::Reader;

/// An element or attribute name: static for the names EWS uses (no allocation per element,
/// which matters with millions of stored properties), owned for anything else.
pub type Name = Cow<'static, str>;

const OTHER_NAMES: &[&str] = &[
    "Mailbox",
    "EmailAddress",
    "Name",
    "RoutingType",
    "MailboxType",
    "String",
    "Entry",
    "Value",
    "Values",
    "ExtendedFieldURI",
    "Id",
    "ChangeKey",
    "Key",
    "BodyType",
    "PropertySetId",
    "PropertyName",
    "PropertyType",
    "PropertyTag",
    "DistinguishedPropertySetId",
    "PropertyId",
    "CharacterSet",
    "Street",
    "City",
    "State",
    "CountryOrRegion",
    "PostalCode",
    "Interval",
    "DaysOfWeek",
    "DayOfWeekIndex",
    "DayOfMonth",
    "Month",
    "StartDate",
    "EndDate",
    "NumberOfOccurrences",
    "DailyRecurrence",
    "WeeklyRecurrence",
    "AbsoluteMonthlyRecurrence",
    "RelativeMonthlyRecurrence",
    "AbsoluteYearlyRecurrence",
    "RelativeYearlyRecurrence",
    "NoEndRecurrence",
    "EndDateRecurrence",
    "NumberedRecurrence",
    "FirstDayOfWeek",
];

/// The name as a static string when it is one EWS uses.
pub fn name(s: &str) -> Name {
    static KNOWN: OnceLock<HashSet<&'static str>> = OnceLock::new();
    let known = KNOWN.get_or_init(|| {
        use crate::schema_order as o;
        [
            o::ITEM,
            o::MESSAGE,
            o::CALENDAR_ITEM,
            o::CONTACT,
            o::TASK,
            o::POST_ITEM,
            o::DISTRIBUTION_LIST,
            o::FOLDER,
            OTHER_NAMES,
        ]
        .iter()
        .flat_map(|l| l.iter().copied())
        .collect()
    });
    match known.get(s) {
        Some(k) => Cow::Borrowed(*k),
        None => Cow::Owned(s.to_string()),
    }
}

/// One element of a request.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Node {
    /// Local name (prefix removed).
    pub name: Name,
    /// Attributes by local name, in document order.
    pub attrs: Vec<(Name, String)>,
    /// Child elements.
    pub children: Vec<Node>,
    /// Text content, unescaped.
    pub text: String,
}

impl Node {
    /// A leaf element with text.
    pub fn leaf(name: &str, text: &str) -> Node {
        Node {
            name: self::name(name),
            text: text.into(),
            ..Default::default()
        }
    }

    /// First child named `name`.
    pub fn get(&self, name: &str) -> Option<&Node> {
        self.children.iter().find(|c| c.name == name)
    }

    /// The children of the first child named `name` (empty when there is none).
    pub fn children_of(&self, name: &str) -> &[Node] {
        self.get(name)
            .map(|n| n.children.as_slice())
            .unwrap_or_default()
    }

    /// Mutable first child named `name`.
    pub fn get_mut(&mut self, name: &str) -> Option<&mut Node> {
        self.children.iter_mut().find(|c| c.name == name)
    }

    /// Children named `name`.
    pub fn all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Node> + 'a {
        self.children.iter().filter(move |c| c.name == name)
    }

    /// Attribute value.
    pub fn attr(&self, name: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Text of child `name`, trimmed.
    pub fn text_of(&self, name: &str) -> Option<&str> {
        self.get(name).map(|n| n.text.trim())
    }

    /// Serializes the node with the `t:` prefix on it and every descendant (item and folder
    /// properties all live in the types namespace).
    pub fn write_t(&self, out: &mut String) {
        out.push_str("<t:");
        out.push_str(&self.name);
        for (k, v) in &self.attrs {
            out.push(' ');
            out.push_str(k);
            out.push_str("=\"");
            escape_into(v, out);
            out.push('"');
        }
        if self.children.is_empty() && self.text.is_empty() {
            out.push_str("/>");
            return;
        }
        out.push('>');
        escape_into(&self.text, out);
        for c in &self.children {
            c.write_t(out);
        }
        out.push_str("</t:");
        out.push_str(&self.name);
        out.push('>');
    }
}

/// A request that could not be read.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ParseError(pub String);

/// Splits `prefix:local` into (is an xmlns declaration, local name).
fn local(qname: &[u8]) -> (bool, Name) {
    let s = String::from_utf8_lossy(qname);
    match s.split_once(':') {
        Some((p, l)) => (p == "xmlns", name(l)),
        None => (s == "xmlns", name(&s)),
    }
}

/// Reads a whole document into its root node.
pub fn parse(doc: &[u8]) -> Result<Node, ParseError> {
    let text =
        std::str::from_utf8(doc).map_err(|e| ParseError(format!("request is not UTF-8: {e}")))?;
    let text = text.trim_start_matches('\u{feff}');
    let mut r = Reader::from_str(text);
    let mut stack: Vec<Node> = Vec::new();
    loop {
        let ev = r
            .read_event()
            .map_err(|e| ParseError(format!("XML error at byte {}: {e}", r.buffer_position())))?;
        match ev {
            Event::Start(e) | Event::Empty(e) if stack.len() > 200 => {
                let _ = e;
                return Err(ParseError("XML nested too deeply".into()));
            }
            Event::Start(e) => stack.push(start(&e)?),
            Event::Empty(e) => {
                let n = start(&e)?;
                match stack.last_mut() {
                    Some(p) => p.children.push(n),
                    None => return Ok(n),
                }
            }
            Event::End(_) => {
                let n = stack
                    .pop()
                    .ok_or_else(|| ParseError("unbalanced end tag".into()))?;
                match stack.last_mut() {
                    Some(p) => p.children.push(n),
                    None => return Ok(n),
                }
            }
            Event::Text(t) => {
                if let Some(top) = stack.last_mut() {
                    top.text.push_str(
                        &t.unescape()
                            .map_err(|e| ParseError(format!("bad text: {e}")))?,
                    );
                }
            }
            Event::CData(c) => {
                if let Some(top) = stack.last_mut() {
                    top.text.push_str(&String::from_utf8_lossy(&c));
                }
            }
            Event::Eof => return Err(ParseError("request ends early".into())),
            _ => {}
        }
    }
}

fn start(e: &quick_xml::events::BytesStart<'_>) -> Result<Node, ParseError> {
    let (_, name) = local(e.name().as_ref());
    let mut attrs = Vec::new();
    for a in e.attributes() {
        let a = a.map_err(|e| ParseError(format!("bad attribute: {e}")))?;
        let (xmlns, k) = local(a.key.as_ref());
        if xmlns {
            continue;
        }
        let v = a
            .unescape_value()
            .map_err(|e| ParseError(format!("bad attribute value: {e}")))?;
        attrs.push((k, v.into_owned()));
    }
    Ok(Node {
        name,
        attrs,
        ..Default::default()
    })
}

/// Appends `s` escaped for text and attribute values; characters XML cannot carry are dropped.
pub fn escape_into(s: &str, out: &mut String) {
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\t' | '\n' | '\r' => out.push(c),
            c if c < ' ' || c == '\u{fffe}' || c == '\u{ffff}' => {}
            c => out.push(c),
        }
    }
}

/// `s` escaped.
pub fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    escape_into(s, &mut o);
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_prefixed_and_plain() {
        let n = parse(br#"<?xml version="1.0"?><s:Envelope xmlns:s="x"><s:Body><m:A B="1 &amp; 2">t&lt;x<![CDATA[&]]></m:A></s:Body></s:Envelope>"#).unwrap();
        let a = n.get("Body").unwrap().get("A").unwrap();
        assert_eq!((a.attr("B"), a.text.as_str()), (Some("1 & 2"), "t<x&"));
        assert!(parse(b"<a><b></a>").is_err());
        assert!(parse(b"").is_err());
    }

    #[test]
    fn writes_escaped() {
        let mut n = Node::leaf("Subject", "a<b & \"c\"\u{1}");
        n.attrs.push(("K".into(), "v\"".into()));
        let mut s = String::new();
        n.write_t(&mut s);
        assert_eq!(
            s,
            r#"<t:Subject K="v&quot;">a&lt;b &amp; &quot;c&quot;</t:Subject>"#
        );
    }
}
