//! NTLM (MS-NLMP) on the server side, as Exchange's IIS does it for EWS and Autodiscover: a
//! Negotiate message is answered with a Challenge (401, `WWW-Authenticate: NTLM …`), and the
//! Authenticate message on the same connection is checked as an NTLMv2 response against the
//! account's password. The connection is then authenticated: later requests on it need no
//! Authorization header.
//!
//! Written from the specification, sharing nothing with the client's NTLM code, so a misreading
//! on one side is not mirrored on the other.

use hmac::{Hmac, Mac};
use md4::{Digest, Md4};
use md5::Md5;

const SIGNATURE: &[u8; 8] = b"NTLMSSP\0";
const NEGOTIATE_UNICODE: u32 = 0x0000_0001;
const REQUEST_TARGET: u32 = 0x0000_0004;
const NEGOTIATE_NTLM: u32 = 0x0000_0200;
const TARGET_TYPE_DOMAIN: u32 = 0x0001_0000;
const NEGOTIATE_TARGET_INFO: u32 = 0x0080_0000;
const NEGOTIATE_VERSION: u32 = 0x0200_0000;

/// A client message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// Type 1: the client starts.
    Negotiate,
    /// Type 3: the client's answer to our challenge.
    Authenticate(Authenticate),
}

/// The parts of an Authenticate message the check needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authenticate {
    /// User name as sent (without domain).
    pub user: String,
    /// Domain name as sent (may be empty).
    pub domain: String,
    /// NtChallengeResponse: NTProofStr (16 bytes) and the client's blob.
    nt_response: Vec<u8>,
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// The payload a security buffer descriptor at `at` (length, max length, offset) points to.
fn field(b: &[u8], at: usize) -> Option<&[u8]> {
    let len = usize::from(u16_at(b, at)?);
    let offset = usize::try_from(u32_at(b, at + 4)?).ok()?;
    b.get(offset..offset.checked_add(len)?)
}

fn text(bytes: &[u8], unicode: bool) -> Option<String> {
    if unicode {
        if !bytes.len().is_multiple_of(2) {
            return None;
        }
        let units: Vec<u16> = bytes
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .collect();
        String::from_utf16(&units).ok()
    } else {
        Some(bytes.iter().map(|&b| char::from(b)).collect())
    }
}

fn utf16le(s: &str) -> Vec<u8> {
    s.encode_utf16().flat_map(u16::to_le_bytes).collect()
}

/// Reads a client message; `None` for anything that is not a well-formed Negotiate or
/// Authenticate message.
pub fn parse(bytes: &[u8]) -> Option<Message> {
    if bytes.get(..8)? != SIGNATURE {
        return None;
    }
    match u32_at(bytes, 8)? {
        1 => Some(Message::Negotiate),
        3 => {
            let flags = u32_at(bytes, 60)?;
            let unicode = flags & NEGOTIATE_UNICODE != 0;
            Some(Message::Authenticate(Authenticate {
                nt_response: field(bytes, 20)?.to_vec(),
                domain: text(field(bytes, 28)?, unicode)?,
                user: text(field(bytes, 36)?, unicode)?,
            }))
        }
        _ => None,
    }
}

/// A Challenge message (type 2) with `challenge`, naming the NetBIOS domain `domain` in the
/// target name and the target information.
pub fn challenge_message(challenge: [u8; 8], domain: &str) -> Vec<u8> {
    let target_name = utf16le(domain);
    let av = |id: u16, value: &[u8]| {
        let mut v = id.to_le_bytes().to_vec();
        v.extend_from_slice(&(value.len() as u16).to_le_bytes());
        v.extend_from_slice(value);
        v
    };
    let mut target_info = Vec::new();
    target_info.extend(av(2, &utf16le(domain))); // MsvAvNbDomainName
    target_info.extend(av(1, &utf16le("EWS-SIM"))); // MsvAvNbComputerName
    target_info.extend(av(0, &[])); // MsvAvEOL
    let header_len: u32 = 56;
    let flags = NEGOTIATE_UNICODE
        | REQUEST_TARGET
        | NEGOTIATE_NTLM
        | TARGET_TYPE_DOMAIN
        | NEGOTIATE_TARGET_INFO
        | NEGOTIATE_VERSION;
    let mut m = Vec::with_capacity(header_len as usize + target_name.len() + target_info.len());
    m.extend_from_slice(SIGNATURE);
    m.extend_from_slice(&2u32.to_le_bytes());
    let name_len = target_name.len() as u16;
    m.extend_from_slice(&name_len.to_le_bytes());
    m.extend_from_slice(&name_len.to_le_bytes());
    m.extend_from_slice(&header_len.to_le_bytes());
    m.extend_from_slice(&flags.to_le_bytes());
    m.extend_from_slice(&challenge);
    m.extend_from_slice(&[0; 8]); // Reserved
    let info_len = target_info.len() as u16;
    m.extend_from_slice(&info_len.to_le_bytes());
    m.extend_from_slice(&info_len.to_le_bytes());
    m.extend_from_slice(&(header_len + u32::from(name_len)).to_le_bytes());
    m.extend_from_slice(&[10, 0, 0x61, 0x4a, 0, 0, 0, 15]); // Version: 10.0.19041, NTLM rev 15
    m.extend_from_slice(&target_name);
    m.extend_from_slice(&target_info);
    m
}

fn hmac_md5(key: &[u8], parts: &[&[u8]]) -> [u8; 16] {
    let mut mac = <Hmac<Md5> as Mac>::new_from_slice(key).expect("HMAC takes any key length");
    for p in parts {
        mac.update(p);
    }
    mac.finalize().into_bytes().into()
}

/// NTOWFv2: HMAC-MD5 keyed with MD4(UTF-16LE(password)) over UTF-16LE(UPPER(user) + domain).
fn ntowf_v2(password: &str, user: &str, domain: &str) -> [u8; 16] {
    let nt_hash: [u8; 16] = Md4::digest(utf16le(password)).into();
    let mut who = utf16le(&user.to_uppercase());
    who.extend(utf16le(domain));
    hmac_md5(&nt_hash, &[&who])
}

/// Whether `auth` is a valid NTLMv2 response to `challenge` for `password`.
pub fn verify_v2(auth: &Authenticate, challenge: [u8; 8], password: &str) -> bool {
    // NTProofStr (16) + blob header (28 at least): anything shorter is NTLMv1 or garbage.
    if auth.nt_response.len() < 16 + 28 {
        return false;
    }
    let (proof, blob) = auth.nt_response.split_at(16);
    let key = ntowf_v2(password, &auth.user, &auth.domain);
    hmac_md5(&key, &[&challenge, blob]) == proof
}

#[cfg(test)]
mod tests {
    use super::*;

    /// MS-NLMP 4.2.4.1.1: NTOWFv2("Password", "User", "Domain").
    #[test]
    fn ntowf_v2_matches_the_specification_example() {
        assert_eq!(
            ntowf_v2("Password", "User", "Domain"),
            [
                0x0c, 0x86, 0x8a, 0x40, 0x3b, 0xfd, 0x7a, 0x93, 0xa3, 0x00, 0x1e, 0xf2, 0x2e, 0xf0,
                0x2e, 0x3f
            ]
        );
    }

    /// MS-NLMP 4.2.4.2.2: the NTProofStr of the specification's example response.
    #[test]
    fn a_v2_response_is_checked_against_the_password() {
        let challenge = [0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef];
        let client_challenge = [0xaa; 8];
        let mut target_info = Vec::new();
        for (id, value) in [(2u16, utf16le("Domain")), (1, utf16le("Server"))] {
            target_info.extend(id.to_le_bytes());
            target_info.extend((value.len() as u16).to_le_bytes());
            target_info.extend(value);
        }
        target_info.extend([0, 0, 0, 0]);
        let mut blob = vec![1, 1, 0, 0, 0, 0, 0, 0];
        blob.extend([0; 8]); // time 0, as in the example
        blob.extend(client_challenge);
        blob.extend([0; 4]);
        blob.extend(&target_info);
        blob.extend([0; 4]);
        let key = ntowf_v2("Password", "User", "Domain");
        let proof = hmac_md5(&key, &[&challenge, &blob]);
        assert_eq!(
            proof,
            [
                0x68, 0xcd, 0x0a, 0xb8, 0x51, 0xe5, 0x1c, 0x96, 0xaa, 0xbc, 0x92, 0x7b, 0xeb, 0xef,
                0x6a, 0x1c
            ]
        );
        let mut nt_response = proof.to_vec();
        nt_response.extend(&blob);
        let auth = Authenticate {
            user: "User".into(),
            domain: "Domain".into(),
            nt_response,
        };
        assert!(verify_v2(&auth, challenge, "Password"));
        assert!(!verify_v2(&auth, challenge, "password"));
        assert!(!verify_v2(&auth, [0; 8], "Password"));
    }

    #[test]
    fn garbage_is_not_a_message() {
        for bad in [
            &b""[..],
            b"NTLMSSP\0",
            b"NTLMSSP\0\x03\0\0\0",
            b"NTLMSSP\0\x02\0\0\0aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
            b"HTTP/1.1",
        ] {
            assert_eq!(parse(bad), None, "{bad:?}");
        }
        let mut negotiate = SIGNATURE.to_vec();
        negotiate.extend(1u32.to_le_bytes());
        assert_eq!(parse(&negotiate), Some(Message::Negotiate));
    }
}
