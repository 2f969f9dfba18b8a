//! The HTTP/1.1 server loop shared by the gateway's local endpoints: the
//! metrics exporter (TCP) and the control API (a Unix socket). One
//! connection per request (no keep-alive), at most [`MAX_CONNECTIONS`] at
//! once (more wait in the kernel's backlog), each with [`HEAD_TIMEOUT`] to
//! send a head of at most [`MAX_HEAD`] bytes (hyper answers a longer one
//! 431 and a malformed one 400 itself).
//!
//! Bottom layer (docs/design.md, "Layout"): it knows hyper and tokio, and
//! nothing of what the endpoints serve.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{watch, Semaphore};
use tracing::{debug, warn};

/// Largest request head read (hyper's smallest buffer).
pub const MAX_HEAD: usize = 8192;
/// Time a client gets to send its request head.
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections served at once.
pub const MAX_CONNECTIONS: usize = 8;

/// A listening socket the loop accepts connections from.
pub trait Listener: Send + 'static {
    /// One accepted connection.
    type Io: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    /// The next connection and its peer, as the log should name it.
    fn accept_peer(&self) -> impl Future<Output = io::Result<(Self::Io, String)>> + Send;
}

impl Listener for tokio::net::TcpListener {
    type Io = tokio::net::TcpStream;
    async fn accept_peer(&self) -> io::Result<(Self::Io, String)> {
        let (s, peer) = self.accept().await?;
        Ok((s, peer.to_string()))
    }
}

impl Listener for tokio::net::UnixListener {
    type Io = tokio::net::UnixStream;
    async fn accept_peer(&self) -> io::Result<(Self::Io, String)> {
        // A Unix socket's peer has no name worth logging.
        let (s, _) = self.accept().await?;
        Ok((s, "local".to_owned()))
    }
}

/// Serves `answer` on `listener` until `stop` turns true. `what` names the
/// endpoint in log lines ("metrics", "control API").
pub async fn serve<L, A, F>(
    what: &'static str,
    listener: L,
    answer: A,
    mut stop: watch::Receiver<bool>,
) where
    L: Listener,
    A: Fn(Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let stopped = async move {
        let _ = stop.wait_for(|s| *s).await;
    };
    tokio::pin!(stopped);
    loop {
        tokio::select! {
            _ = &mut stopped => return,
            accepted = listener.accept_peer() => match accepted {
                Ok((stream, peer)) => {
                    let Ok(permit) = slots.clone().acquire_owned().await else { return };
                    let answer = answer.clone();
                    tokio::spawn(async move {
                        let service = service_fn(move |req: Request<Incoming>| {
                            let reply = answer(req);
                            async move { Ok::<_, Infallible>(reply.await) }
                        });
                        let served = http1::Builder::new()
                            .timer(TokioTimer::new())
                            .header_read_timeout(HEAD_TIMEOUT)
                            .max_buf_size(MAX_HEAD)
                            .keep_alive(false)
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                        if let Err(e) = served {
                            debug!(%peer, "{what} request: {e}");
                        }
                        drop(permit);
                    });
                }
                Err(e) => {
                    // Out of file descriptors and the like: wait, then go on.
                    warn!("{what}: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    }
}
