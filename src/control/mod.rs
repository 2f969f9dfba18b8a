//! The local control API (issue 15): HTTP/1.1 with JSON bodies on a Unix
//! socket (`control.socket`, by default `control.sock` in `state.dir`),
//! mode 0660, owned by `control.group` when set. `otabridge jobs` is its
//! client ([`client`]); `curl --unix-socket` works as well.
//!
//! | request | does |
//! |---|---|
//! | `GET /jobs` | every job not ended and each child's latest job |
//! | `GET /jobs/{id}`, `GET /children/{device_id}` | one job (a child's latest) |
//! | `POST /jobs/{id}/{action}`, `POST /children/{device_id}/{action}` | `cancel`, `pause`, `resume`, `retry` |
//! | `POST /tasks/{task_id}/release` | the task's jobs held by the failure policy go on |
//!
//! Answers are JSON: the job (`ota::control::JobView`), a list of them as
//! `{"jobs": [...]}`, or `{"error": "..."}` with 400 (malformed request),
//! 404 (unknown job, child or path), 405 (wrong method) or 409 (the action
//! is not possible in the job's state; the error says why). A refused
//! request changes nothing. The rules are in `crate::ota::control`.
//!
//! Same layer as the metrics exporter (docs/design.md, "Layout"): it
//! drives `ota`'s engine, which knows nothing of it.

pub mod client;

use std::path::{Path, PathBuf};

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::Full;
use serde::Serialize;
use tokio::net::UnixListener;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::config::Config;
use crate::ota::control::{Action, ControlError, JobRef};
use crate::ota::engine::Engine;

/// Why the control socket could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    /// Another process answers on the socket (a second daemon on the same
    /// state directory).
    #[error("control socket {0}: another otabridge answers on it")]
    InUse(PathBuf),
    /// The socket could not be created or bound.
    #[error("control socket {path}: {source}")]
    Bind {
        /// The socket's path.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// `control.group` names no group on this system.
    #[error("control.group: no group '{0}' on this system")]
    NoGroup(String),
    /// The socket's mode or group could not be set.
    #[error("control socket {path}: cannot set its mode or group: {source}")]
    Permissions {
        /// The socket's path.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
}

/// Opens the socket of `cfg`'s control API: a stale socket file from an
/// earlier run is replaced, a live one is an error; mode 0660, group
/// `control.group` when set.
pub fn bind(cfg: &Config) -> Result<UnixListener, ListenError> {
    let path = cfg.control_socket();
    let bind_err = |source| ListenError::Bind {
        path: path.clone(),
        source,
    };
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(&path).is_ok() {
            return Err(ListenError::InUse(path));
        }
        std::fs::remove_file(&path).map_err(bind_err)?;
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(bind_err)?;
    }
    let listener = UnixListener::bind(&path).map_err(bind_err)?;
    set_permissions(&path, cfg.control.group.as_deref())?;
    Ok(listener)
}

/// Mode 0660 and, when named, the group.
fn set_permissions(path: &Path, group: Option<&str>) -> Result<(), ListenError> {
    use std::os::unix::fs::PermissionsExt;
    let perm_err = |source| ListenError::Permissions {
        path: path.to_owned(),
        source,
    };
    if let Some(name) = group {
        let g = nix::unistd::Group::from_name(name)
            .map_err(|e| perm_err(e.into()))?
            .ok_or_else(|| ListenError::NoGroup(name.to_owned()))?;
        nix::unistd::chown(path, None, Some(g.gid)).map_err(|e| perm_err(e.into()))?;
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660)).map_err(perm_err)
}

/// Serves the control API on `listener` until `stop` turns true, then
/// removes the socket file at `path`.
pub async fn serve(
    listener: UnixListener,
    path: PathBuf,
    engine: Engine,
    stop: watch::Receiver<bool>,
) {
    info!(socket = %path.display(), "control API listening");
    let answer = move |req: Request<hyper::body::Incoming>| {
        let engine = engine.clone();
        let (method, path) = (req.method().clone(), req.uri().path().to_owned());
        async move { answer(&engine, &method, &path).await }
    };
    crate::http::serve("control API", listener, answer, stop).await;
    let _ = std::fs::remove_file(&path);
}

fn json(status: StatusCode, body: &impl Serialize) -> Response<Full<Bytes>> {
    let mut text = serde_json::to_vec_pretty(body).expect("answers serialise");
    text.push(b'\n');
    let mut r = Response::new(Full::new(Bytes::from(text)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    r
}

fn error(status: StatusCode, message: String) -> Response<Full<Bytes>> {
    #[derive(Serialize)]
    struct E {
        error: String,
    }
    json(status, &E { error: message })
}

fn refused(e: ControlError) -> Response<Full<Bytes>> {
    let status = StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    if status.is_server_error() {
        warn!("control API: {e}");
    }
    error(status, e.to_string())
}

/// Which job a path segment pair names: `jobs/{id}` or
/// `children/{device_id}`; the 400 answer's message for a bad id.
fn job_ref(kind: &str, name: &str) -> Result<JobRef, String> {
    match kind {
        "jobs" => name.parse::<i64>().map(JobRef::Id).map_err(|_| {
            format!("'{name}' is not a job id (a number); a child is /children/{name}")
        }),
        _ => Ok(JobRef::Child(percent_decode(name))),
    }
}

/// `%XX` escapes of a path segment decoded (device ids are plain ASCII;
/// a client may still escape them).
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The answer to one request.
async fn answer(engine: &Engine, method: &Method, path: &str) -> Response<Full<Bytes>> {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let allow = |methods: &'static str| {
        let mut r = error(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("{method} {path}: use {methods}"),
        );
        r.headers_mut()
            .insert(header::ALLOW, header::HeaderValue::from_static(methods));
        r
    };
    match segs.as_slice() {
        ["jobs"] => {
            if method != Method::GET {
                return allow("GET");
            }
            #[derive(Serialize)]
            struct Jobs {
                jobs: Vec<crate::ota::control::JobView>,
            }
            match engine.jobs().await {
                Ok(jobs) => json(StatusCode::OK, &Jobs { jobs }),
                Err(e) => refused(e),
            }
        }
        [kind @ ("jobs" | "children"), name] => {
            if method != Method::GET {
                return allow("GET");
            }
            match job_ref(kind, name) {
                Ok(r) => match engine.job(&r).await {
                    Ok(v) => json(StatusCode::OK, &v),
                    Err(e) => refused(e),
                },
                Err(m) => error(StatusCode::BAD_REQUEST, m),
            }
        }
        [kind @ ("jobs" | "children"), name, action] => {
            let Some(action) = Action::parse(action) else {
                return error(
                    StatusCode::NOT_FOUND,
                    format!("no action '{action}': cancel, pause, resume or retry"),
                );
            };
            if method != Method::POST {
                return allow("POST");
            }
            match job_ref(kind, name) {
                Ok(r) => match engine.control(&r, action).await {
                    Ok(v) => json(StatusCode::OK, &v),
                    Err(e) => refused(e),
                },
                Err(m) => error(StatusCode::BAD_REQUEST, m),
            }
        }
        ["tasks", task, "release"] => {
            if method != Method::POST {
                return allow("POST");
            }
            #[derive(Serialize)]
            struct Released {
                jobs: Vec<crate::ota::control::JobView>,
            }
            match engine.release(&percent_decode(task)).await {
                Ok(jobs) => json(StatusCode::OK, &Released { jobs }),
                Err(e) => refused(e),
            }
        }
        _ => error(
            StatusCode::NOT_FOUND,
            format!(
                "no such resource {path}: see /jobs, /jobs/ID, /children/DEVICE_ID, \
                 /tasks/TASK/release"
            ),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_are_decoded() {
        assert_eq!(percent_decode("p_mcu%301"), "p_mcu01");
        assert_eq!(percent_decode("a%2"), "a%2");
        assert_eq!(percent_decode("plain"), "plain");
    }
}
