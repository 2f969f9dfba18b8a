//! The control API's client, for `otabridge jobs`: one request per
//! connection over the Unix socket (hyper's HTTP/1.1 client).

use std::path::{Path, PathBuf};

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;

/// Why a request got no answer.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Nothing listens on the socket.
    #[error(
        "cannot connect to the control socket {path}: {source} (is `otabridge run` running \
         with this configuration, and may this user open the socket?)"
    )]
    Connect {
        /// The socket.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// The exchange failed.
    #[error("control socket {path}: {source}")]
    Http {
        /// The socket.
        path: PathBuf,
        /// What hyper said.
        #[source]
        source: hyper::Error,
    },
    /// The answer was not JSON.
    #[error("control socket {path}: the answer is not JSON: {source}")]
    Json {
        /// The socket.
        path: PathBuf,
        /// What serde said.
        #[source]
        source: serde_json::Error,
    },
}

/// Sends `method path` to the control API at `socket`; the status and the
/// JSON body.
pub async fn request(
    socket: &Path,
    method: Method,
    path: &str,
) -> Result<(StatusCode, serde_json::Value), ClientError> {
    let stream = UnixStream::connect(socket)
        .await
        .map_err(|source| ClientError::Connect {
            path: socket.to_owned(),
            source,
        })?;
    let http = |source| ClientError::Http {
        path: socket.to_owned(),
        source,
    };
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(http)?;
    tokio::spawn(conn);
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header(http::header::HOST, "otabridge")
        .body(Empty::<Bytes>::new())
        .expect("a valid request");
    let resp = sender.send_request(req).await.map_err(http)?;
    let status = resp.status();
    let body = resp.into_body().collect().await.map_err(http)?.to_bytes();
    let v = serde_json::from_slice(&body).map_err(|source| ClientError::Json {
        path: socket.to_owned(),
        source,
    })?;
    Ok((status, v))
}
