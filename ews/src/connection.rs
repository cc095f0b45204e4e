//! One HTTP/1.1 connection whose requests all travel on the same TCP (and TLS) connection, as
//! NTLM needs: it authenticates a connection, not a request. A pooled client cannot promise
//! that — after a response, its connection goes back to the pool a moment later, and a request
//! sent at once may get a new connection, where the handshake's second leg (or the next
//! request of an authenticated connection) finds no authentication. Here the connection is
//! held, not pooled.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hyper::client::conn::http1::SendRequest;
use reqwest::header::{HeaderMap, HOST};

use crate::Error;

/// How long to wait for the TCP connection and the TLS handshake.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);

/// Where and how to connect.
#[derive(Clone)]
pub(crate) struct Target {
    /// The URL requests go to (its host and port are connected to).
    pub url: url::Url,
    /// Extra trusted CA certificates, PEM.
    pub ca_pem: Option<Vec<u8>>,
    /// Host names pinned to addresses (the port comes from the URL).
    pub resolve: Vec<(String, SocketAddr)>,
}

/// An open connection.
pub(crate) struct Connection {
    sender: SendRequest<http_body_util::Full<Bytes>>,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Connection(open: {})", !self.sender.is_closed())
    }
}

fn transient(what: &str, e: impl std::fmt::Display) -> Error {
    Error::Transient(format!("{what}: {e}"))
}

/// The TLS settings: the system's web roots (as reqwest's) plus the extra CA.
fn tls_config(ca_pem: Option<&[u8]>) -> Result<rustls::ClientConfig, Error> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(pem) = ca_pem {
        for cert in rustls_pemfile::certs(&mut &pem[..]) {
            let cert = cert.map_err(|e| Error::Request(format!("custom CA: {e}")))?;
            roots
                .add(cert)
                .map_err(|e| Error::Request(format!("custom CA: {e}")))?;
        }
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| Error::Request(format!("TLS set-up: {e}")))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

impl Connection {
    /// Connects to `target.url`'s host and port (TLS for https) and speaks HTTP/1.1 on it.
    pub(crate) async fn open(target: &Target) -> Result<Connection, Error> {
        let url = &target.url;
        let host = url
            .host_str()
            .ok_or_else(|| Error::Request(format!("{url} has no host")))?
            .to_string();
        let port = url
            .port_or_known_default()
            .ok_or_else(|| Error::Request(format!("{url} has no port")))?;
        let addrs: Vec<SocketAddr> = match target.resolve.iter().find(|(h, _)| *h == host) {
            Some((_, addr)) => vec![SocketAddr::new(addr.ip(), port)],
            None => tokio::net::lookup_host((host.trim_matches(['[', ']']), port))
                .await
                .map_err(|e| transient(&format!("resolving {host}"), e))?
                .collect(),
        };
        let connect = async {
            let mut last = None;
            for addr in &addrs {
                match tokio::net::TcpStream::connect(addr).await {
                    Ok(s) => return Ok(s),
                    Err(e) => last = Some(e),
                }
            }
            Err(last.map_or_else(
                || transient(&format!("connecting to {host}"), "no address"),
                |e| transient(&format!("connecting to {host}:{port}"), e),
            ))
        };
        let tcp = tokio::time::timeout(CONNECT_TIMEOUT, connect)
            .await
            .map_err(|_| transient(&format!("connecting to {host}:{port}"), "timed out"))??;
        let _ = tcp.set_nodelay(true);
        let sender = match url.scheme() {
            "https" => {
                let config = tls_config(target.ca_pem.as_deref())?;
                let name = rustls::pki_types::ServerName::try_from(host.clone())
                    .map_err(|e| Error::Request(format!("{host}: {e}")))?;
                let tls = tokio::time::timeout(
                    CONNECT_TIMEOUT,
                    tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, tcp),
                )
                .await
                .map_err(|_| transient(&format!("TLS with {host}"), "timed out"))?
                .map_err(|e| transient(&format!("TLS with {host}"), e))?;
                handshake(hyper_util::rt::TokioIo::new(tls)).await?
            }
            "http" => handshake(hyper_util::rt::TokioIo::new(tcp)).await?,
            other => return Err(Error::Request(format!("{url}: scheme {other}"))),
        };
        Ok(Connection { sender })
    }

    /// Whether the server (or the network) closed it.
    pub(crate) fn is_closed(&self) -> bool {
        self.sender.is_closed()
    }

    /// POSTs `body` to `url` on this connection.
    pub(crate) async fn post(
        &mut self,
        url: &url::Url,
        headers: &HeaderMap,
        auth: Option<&str>,
        body: &[u8],
    ) -> Result<reqwest::Response, Error> {
        self.sender
            .ready()
            .await
            .map_err(|e| transient("the connection closed", e))?;
        let mut path = url.path().to_string();
        if let Some(q) = url.query() {
            path.push('?');
            path.push_str(q);
        }
        let mut req = http::Request::post(path)
            .body(http_body_util::Full::new(Bytes::copy_from_slice(body)))
            .map_err(|e| Error::Request(format!("request: {e}")))?;
        let host = match url.port() {
            Some(p) => format!("{}:{p}", url.host_str().unwrap_or_default()),
            None => url.host_str().unwrap_or_default().to_string(),
        };
        req.headers_mut().extend(headers.clone());
        req.headers_mut()
            .insert(HOST, crate::client::header_value("Host", &host)?);
        req.headers_mut().insert(
            reqwest::header::USER_AGENT,
            reqwest::header::HeaderValue::from_static(concat!(
                "mailsync-ews/",
                env!("CARGO_PKG_VERSION")
            )),
        );
        if let Some(a) = auth {
            req.headers_mut().insert(
                reqwest::header::AUTHORIZATION,
                crate::client::header_value("Authorization", a)?,
            );
        }
        let resp = self
            .sender
            .send_request(req)
            .await
            .map_err(|e| transient("sending the request", e))?;
        Ok(reqwest::Response::from(resp.map(reqwest::Body::wrap)))
    }
}

async fn handshake<T>(io: T) -> Result<SendRequest<http_body_util::Full<Bytes>>, Error>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| transient("HTTP handshake", e))?;
    // The connection task ends when the sender and the last response body are gone.
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}
