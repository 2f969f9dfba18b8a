//! One HTTP/1.1 GET over TLS (or plain TCP when allowed): hyper's
//! connection-level client on tokio-rustls with the ring provider.
//!
//! Each attempt opens its own connection: a download is one long GET, and a
//! resume after a failure needs a fresh connection anyway. hyper's
//! `client::conn` API (rather than a pooled client) keeps the dependency
//! tree small and lets the downloader own every timeout.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, Uri};
use http_body_util::Empty;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

use super::DownloadError;

/// hyper's read buffer for the response, and so the largest body frame the
/// receive loop hands to the `.part` writer. Fixed rather than hyper's
/// adaptive default, which grows to about 400 KiB and keeps several such
/// buffers alive while frames wait in the writer's queue: against nginx that
/// made the peak RSS 22 MiB for a 64 MiB package and 26 MiB for 1 GiB; with
/// 64 KiB it is flat at 14.5 MiB, throughput unchanged (BENCHMARKS.md,
/// "Package download").
pub(crate) const READ_BUFFER: usize = 64 * 1024;
use crate::config::DownloadConfig;

/// Where a package URL points, checked.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Target {
    /// `https` (true) or `http` (false).
    pub(crate) https: bool,
    /// Host name or address (IPv6 without brackets).
    pub(crate) host: String,
    /// Port (default 443 or 80).
    pub(crate) port: u16,
    /// The `Host` header value (`authority` of the URL).
    pub(crate) authority: String,
    /// The request target (path and query).
    pub(crate) path_and_query: String,
}

impl std::fmt::Debug for Target {
    // The query of a pre-signed URL carries credentials: never print it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&redact_url(&format!(
            "{}://{}{}",
            if self.https { "https" } else { "http" },
            self.authority,
            self.path_and_query
        )))
    }
}

/// The URL without its query string, for logs and errors (a pre-signed OBS
/// URL carries its signature in the query, docs/protocols/iotda.md §4.5).
pub fn redact_url(url: &str) -> String {
    match url.split_once('?') {
        Some((base, _)) => format!("{base}?<redacted>"),
        None => url.to_owned(),
    }
}

/// Parses and checks a package URL: `https://` always, `http://` only with
/// `download.allow_http`.
pub(crate) fn parse_url(url: &str, allow_http: bool) -> Result<Target, DownloadError> {
    let bad = |why: &str| DownloadError::InvalidUrl(format!("{}: {why}", redact_url(url)));
    let uri: Uri = url.parse().map_err(|_| bad("not a URL"))?;
    let https = match uri.scheme_str() {
        Some("https") => true,
        Some("http") if allow_http => false,
        Some("http") => return Err(bad("http:// is refused (set download.allow_http = true)")),
        _ => return Err(bad("only https:// URLs are accepted")),
    };
    let authority = uri.authority().ok_or_else(|| bad("no host"))?;
    if authority.as_str().contains('@') {
        return Err(bad("user information in the URL is not supported"));
    }
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    if host.is_empty() {
        return Err(bad("no host"));
    }
    let port = authority.port_u16().unwrap_or(if https { 443 } else { 80 });
    let path_and_query = uri.path_and_query().map_or("/", |p| p.as_str()).to_owned();
    Ok(Target {
        https,
        host,
        port,
        authority: authority.as_str().to_owned(),
        path_and_query,
    })
}

impl Target {
    /// Same scheme, host and port: credentials may follow a redirect only
    /// within one origin.
    pub(crate) fn same_origin(&self, other: &Target) -> bool {
        self.https == other.https
            && self.host.eq_ignore_ascii_case(&other.host)
            && self.port == other.port
    }

    /// Resolves a redirect's `Location` against this target (RFC 9110
    /// §10.2.2: absolute, scheme-relative, absolute-path or relative-path
    /// references), then checks it as a package URL.
    pub(crate) fn resolve(
        &self,
        location: &str,
        allow_http: bool,
    ) -> Result<Target, DownloadError> {
        let scheme = if self.https { "https" } else { "http" };
        let location = location.trim();
        // A reference with a scheme (RFC 3986 §3.1) is absolute, whichever
        // scheme it is: parse_url refuses the ones we do not fetch.
        let has_scheme = location.split_once(':').is_some_and(|(scheme, _)| {
            scheme.starts_with(|c: char| c.is_ascii_alphabetic())
                && scheme
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
        });
        let absolute = if has_scheme {
            location.to_owned()
        } else if let Some(rest) = location.strip_prefix("//") {
            format!("{scheme}://{rest}")
        } else if location.starts_with('/') {
            format!("{scheme}://{}{location}", self.authority)
        } else {
            let path = self.path_and_query.split('?').next().unwrap_or("/");
            let dir = &path[..path.rfind('/').map_or(0, |i| i + 1)];
            let dir = if dir.is_empty() { "/" } else { dir };
            format!("{scheme}://{}{dir}{location}", self.authority)
        };
        parse_url(&absolute, allow_http)
    }
}

/// A stream hyper can drive: TCP or TLS over TCP.
trait Io: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}

/// Why one request failed before a response head arrived.
#[derive(Debug)]
pub(crate) enum FetchError {
    /// Connection refused, reset, timed out, DNS failed, ...: retry later.
    Transient(String),
    /// The certificate was refused: a retry gets the same certificate.
    Certificate(String),
}

/// A response whose body is still streaming, and the task driving its
/// connection (aborted when this is dropped, so a stalled connection cannot
/// outlive the attempt that gave up on it).
#[derive(Debug)]
pub(crate) struct Exchange {
    pub(crate) response: Response<Incoming>,
    conn: JoinHandle<()>,
}

impl Drop for Exchange {
    fn drop(&mut self) {
        self.conn.abort();
    }
}

/// The download client: TLS settings from `[download]`.
#[derive(Debug, Clone)]
pub(crate) struct HttpClient {
    /// `download.ca_file`, trusted besides the system's roots.
    ca_file: Option<PathBuf>,
    verify_hostname: bool,
    /// The TLS configuration while a connection uses it: built for the
    /// first connection and freed after the last one ended. It holds the
    /// system's trust store (about 300 KiB of heap for Debian's ~150
    /// roots), which an idle gateway does not need (BENCHMARKS.md,
    /// "Footprint").
    tls: Arc<Mutex<Weak<ClientConfig>>>,
    connect_timeout: Duration,
}

impl HttpClient {
    /// The client of `[download]`: `download.ca_file` is read now (a bad
    /// file is an error at start); the system's roots are read when a
    /// connection needs them ([`HttpClient::tls`]).
    pub(crate) fn new(
        cfg: &DownloadConfig,
        connect_timeout: Duration,
    ) -> Result<HttpClient, DownloadError> {
        if let Some(f) = &cfg.ca_file {
            crate::tls::load_certs(f).map_err(|e| DownloadError::Tls(e.to_string()))?;
        }
        Ok(HttpClient {
            ca_file: cfg.ca_file.clone(),
            verify_hostname: cfg.verify_hostname,
            tls: Arc::default(),
            connect_timeout,
        })
    }

    /// The TLS configuration, shared with the connections that are open:
    /// the system roots plus `download.ca_file`; with `verify_hostname =
    /// false`, the chain is still verified but the name is not
    /// (docs/protocols/iotda.md §4.7: v1 URLs name a bare IP address).
    fn tls(&self) -> Result<Arc<ClientConfig>, crate::tls::TlsError> {
        let mut cached = self.tls.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(tls) = cached.upgrade() {
            return Ok(tls);
        }
        let roots = crate::tls::system_roots_plus(self.ca_file.as_deref())?;
        let mut tls = if self.verify_hostname {
            crate::tls::client_config(roots, None)?
        } else {
            crate::tls::client_config_any_name(roots)?
        };
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        let tls = Arc::new(tls);
        *cached = Arc::downgrade(&tls);
        Ok(tls)
    }

    /// Sends `GET target` with `headers` and returns once the response head
    /// has arrived (within the connect timeout, counted from the start).
    pub(crate) async fn get(
        &self,
        target: &Target,
        headers: HeaderMap,
    ) -> Result<Exchange, FetchError> {
        let fut = self.get_inner(target, headers);
        match tokio::time::timeout(self.connect_timeout, fut).await {
            Ok(r) => r,
            Err(_) => Err(FetchError::Transient(format!(
                "no response head within {:?}",
                self.connect_timeout
            ))),
        }
    }

    async fn get_inner(&self, target: &Target, headers: HeaderMap) -> Result<Exchange, FetchError> {
        let transient = |what: &str, e: &dyn std::fmt::Display| {
            FetchError::Transient(format!("{what} {}:{}: {e}", target.host, target.port))
        };
        let tcp = TcpStream::connect((target.host.as_str(), target.port))
            .await
            .map_err(|e| transient("connect to", &e))?;
        let _ = tcp.set_nodelay(true);
        let io: Box<dyn Io> = if target.https {
            let name = ServerName::try_from(target.host.clone()).map_err(|e| {
                FetchError::Certificate(format!(
                    "'{}' is not a valid server name: {e}",
                    target.host
                ))
            })?;
            // Trust roots that cannot be read: a retry reads the same files.
            let tls = self
                .tls()
                .map_err(|e| FetchError::Certificate(e.to_string()))?;
            let connector = tokio_rustls::TlsConnector::from(tls);
            match connector.connect(name, tcp).await {
                Ok(s) => Box::new(s),
                Err(e) => {
                    let cert = e
                        .get_ref()
                        .and_then(|i| i.downcast_ref::<rustls::Error>())
                        .filter(|r| {
                            matches!(
                                r,
                                rustls::Error::InvalidCertificate(_)
                                    | rustls::Error::NoCertificatesPresented
                            )
                        })
                        .map(|r| r.to_string());
                    return Err(match cert {
                        Some(c) => {
                            FetchError::Certificate(format!("{}:{}: {c}", target.host, target.port))
                        }
                        None => transient("TLS handshake with", &e),
                    });
                }
            }
        } else {
            Box::new(tcp)
        };
        let (mut sender, conn) = hyper::client::conn::http1::Builder::new()
            .read_buf_exact_size(Some(READ_BUFFER))
            .handshake::<_, Empty<Bytes>>(TokioIo::new(io))
            .await
            .map_err(|e| transient("HTTP handshake with", &e))?;
        let conn = tokio::spawn(async move {
            let _ = conn.await;
        });
        let mut req = Request::get(target.path_and_query.as_str())
            .body(Empty::new())
            .map_err(|e| transient("request to", &e))?;
        *req.headers_mut() = headers;
        let response = match sender.send_request(req).await {
            Ok(r) => r,
            Err(e) => {
                conn.abort();
                return Err(transient("request to", &e));
            }
        };
        Ok(Exchange { response, conn })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redirect_locations_resolve_like_a_browser() {
        let base = parse_url("https://h.example:8443/a/b/pkg?sig=1", false).unwrap();
        let r = |loc: &str| {
            base.resolve(loc, false)
                .map(|t| format!("{}:{}{}", t.host, t.port, t.path_and_query))
        };
        assert_eq!(r("https://cdn.example/x?y").unwrap(), "cdn.example:443/x?y");
        assert_eq!(r("//cdn.example/x").unwrap(), "cdn.example:443/x");
        assert_eq!(r("/top").unwrap(), "h.example:8443/top");
        assert_eq!(r("sib?q=2").unwrap(), "h.example:8443/a/b/sib?q=2");
        assert!(r("http://cdn.example/x").is_err(), "downgrade");
        assert!(r("ftp://cdn.example/x").is_err());
        let other = parse_url("https://H.EXAMPLE:8443/z", false).unwrap();
        assert!(base.same_origin(&other));
        let port = parse_url("https://h.example/z", false).unwrap();
        assert!(!base.same_origin(&port));
    }

    #[test]
    fn urls_are_checked() {
        let t = parse_url("https://100.93.28.202:8943/iodm/dev/v2.0/x?a=b", false).unwrap();
        assert_eq!((t.host.as_str(), t.port), ("100.93.28.202", 8943));
        assert_eq!(t.path_and_query, "/iodm/dev/v2.0/x?a=b");
        assert_eq!(
            format!("{t:?}"),
            "https://100.93.28.202:8943/iodm/dev/v2.0/x?<redacted>"
        );
        let t = parse_url("https://[::1]/p", false).unwrap();
        assert_eq!((t.host.as_str(), t.port), ("::1", 443));
        assert!(matches!(
            parse_url("http://h/p", false),
            Err(DownloadError::InvalidUrl(_))
        ));
        assert!(!parse_url("http://h/p", true).unwrap().https);
        assert!(parse_url("ftp://h/p", true).is_err());
        assert!(parse_url("https://u:p@h/p", true).is_err());
        assert!(parse_url("not a url", true).is_err());
    }
}
