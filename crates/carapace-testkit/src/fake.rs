//! What the fakes of this crate share: serving a router on 127.0.0.1, locks that outlive
//! a panicked test, counting clients that went away, and bodies sent piece by piece that
//! can stop halfway.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

/// The lock, also after a test panicked while holding it.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Serves `app` on a free loopback port, on the current tokio runtime, until the returned
/// task is aborted.
pub(crate) async fn serve(app: Router, what: &str) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
        .await
        .unwrap_or_else(|e| panic!("bind the fake {what} server on 127.0.0.1: {e}"));
    let addr = listener.local_addr().expect("the local address");
    let server = tokio::spawn(async move {
        // Serving only ends when the task is aborted.
        let _ = axum::serve(listener, app).await;
    });
    (addr, server)
}

/// Counts a disconnect when dropped before [`DisconnectGuard::finish`]: hyper drops the
/// handler future, or the body stream, when the client goes away.
pub(crate) struct DisconnectGuard {
    count: Arc<AtomicUsize>,
    finished: bool,
}

impl DisconnectGuard {
    /// A guard that adds to `count`.
    pub(crate) fn new(count: Arc<AtomicUsize>) -> DisconnectGuard {
        DisconnectGuard {
            count,
            finished: false,
        }
    }

    /// The reply went out whole: no disconnect.
    pub(crate) fn finish(mut self) {
        self.finished = true;
    }
}

impl Drop for DisconnectGuard {
    fn drop(&mut self) {
        if !self.finished {
            self.count.fetch_add(1, Ordering::SeqCst);
        }
    }
}

/// A 200 whose body is sent piece by piece; with `stall` it then hangs without closing.
/// The guard, if any, is finished once the last piece is handed to hyper.
pub(crate) fn body_response<P: Into<Bytes> + Send + 'static>(
    content_type: &'static str,
    pieces: Vec<P>,
    stall: bool,
    guard: Option<DisconnectGuard>,
) -> Response {
    let body = futures_util::stream::unfold(
        (pieces.into_iter(), guard),
        move |(mut pieces, mut guard)| async move {
            let piece = pieces.next();
            if let Some(guard) = guard.take_if(|_| pieces.as_slice().is_empty() && !stall) {
                guard.finish();
            }
            match piece {
                Some(piece) => Some((Ok::<Bytes, Infallible>(piece.into()), (pieces, guard))),
                None => {
                    if stall {
                        std::future::pending::<()>().await;
                    }
                    None
                }
            }
        },
    );
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, content_type)],
        Body::from_stream(body),
    )
        .into_response()
}
