//! A real S3-compatible server for maskrate's object-storage tests and benchmarks: the `s3s-fs`
//! crate (buckets are directories under a root, objects are files) served over HTTP on
//! 127.0.0.1, with access-key authentication and two fault controls, "answer the next N requests
//! with 500" and "stop" (the server's connections are dropped, as when it is killed).
//!
//! Chosen over moto's server mode because it needs no Python and no install step: `cargo test`
//! builds it on a fresh machine, each test starts its own on a free port in milliseconds, and the
//! fault layer sits in front of a real S3 protocol implementation (SigV4 auth, multipart, list).

use hyper::body::Incoming;
use hyper::service::Service;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder as ConnBuilder;
use s3s::auth::SimpleAuth;
use s3s::service::{S3Service, S3ServiceBuilder};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// The access key the test server accepts.
pub const ACCESS_KEY: &str = "maskrate-test-key";
/// The secret key the test server accepts.
pub const SECRET_KEY: &str = "maskrate-test-secret";
/// The region clients sign for.
pub const REGION: &str = "us-east-1";

/// Request counters and the injected-failure budget, shared with the serving tasks.
#[derive(Debug, Default)]
struct Counters {
    requests: AtomicU64,
    get_requests: AtomicU64,
    fail_next: AtomicU64,
    failed: AtomicU64,
    /// The path of every GET, in arrival order.
    get_paths: std::sync::Mutex<Vec<String>>,
}

/// A running server; dropping it (or [`S3Server::stop`]) shuts it down.
#[derive(Debug)]
pub struct S3Server {
    endpoint: String,
    root: PathBuf,
    counters: Arc<Counters>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// The S3 service behind a fault layer.
#[derive(Clone)]
struct Faulty {
    inner: S3Service,
    counters: Arc<Counters>,
}

type Reply = hyper::Response<s3s::Body>;
type BoxFuture = Pin<Box<dyn Future<Output = Result<Reply, s3s::HttpError>> + Send>>;

impl Service<hyper::Request<Incoming>> for Faulty {
    type Response = Reply;
    type Error = s3s::HttpError;
    type Future = BoxFuture;

    fn call(&self, req: hyper::Request<Incoming>) -> Self::Future {
        let c = &self.counters;
        c.requests.fetch_add(1, Ordering::SeqCst);
        if req.method() == hyper::Method::GET {
            c.get_requests.fetch_add(1, Ordering::SeqCst);
            c.get_paths
                .lock()
                .expect("paths")
                .push(req.uri().path().to_string());
        }
        let take = c
            .fail_next
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
        if take.is_ok() {
            c.failed.fetch_add(1, Ordering::SeqCst);
            let reply = hyper::Response::builder()
                .status(500)
                .body(s3s::Body::from("injected failure".to_string()))
                .expect("static response");
            return Box::pin(async move { Ok(reply) });
        }
        let fut = hyper::service::Service::call(&self.inner, req);
        Box::pin(fut)
    }
}

impl S3Server {
    /// Serves `root` (each subdirectory is a bucket) on a free port of 127.0.0.1.
    pub fn start(root: &Path) -> std::io::Result<S3Server> {
        Self::start_on(root, 0)
    }

    /// Serves `root` on `port` of 127.0.0.1 (0: a free one).
    pub fn start_on(root: &Path, port: u16) -> std::io::Result<S3Server> {
        std::fs::create_dir_all(root)?;
        let fs =
            s3s_fs::FileSystem::new(root).map_err(|e| std::io::Error::other(format!("{e:?}")))?;
        let mut builder = S3ServiceBuilder::new(fs);
        builder.set_auth(SimpleAuth::from_single(ACCESS_KEY, SECRET_KEY));
        let counters = Arc::new(Counters::default());
        let service = Faulty {
            inner: builder.build(),
            counters: counters.clone(),
        };
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        let listener = runtime.block_on(tokio::net::TcpListener::bind(("127.0.0.1", port)))?;
        let endpoint = format!("http://{}", listener.local_addr()?);
        let (tx, mut rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            runtime.block_on(async move {
                let http = ConnBuilder::new(TokioExecutor::new());
                loop {
                    let socket = tokio::select! {
                        accepted = listener.accept() => match accepted {
                            Ok((socket, _)) => socket,
                            Err(_) => continue,
                        },
                        _ = &mut rx => break,
                    };
                    let conn = http
                        .serve_connection(TokioIo::new(socket), service.clone())
                        .into_owned();
                    tokio::spawn(async move {
                        let _ = conn.await;
                    });
                }
            });
            // Dropping the runtime here cancels every open connection, as a killed server would.
            drop(runtime);
        });
        Ok(S3Server {
            endpoint,
            root: root.to_path_buf(),
            counters,
            shutdown: Some(tx),
            thread: Some(thread),
        })
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The port it listens on (to start it again on the same one after [`S3Server::stop`]).
    pub fn port(&self) -> u16 {
        self.endpoint
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .expect("endpoint ends with the port")
    }

    /// Creates bucket `name` (a directory under the root).
    pub fn create_bucket(&self, name: &str) -> std::io::Result<()> {
        std::fs::create_dir_all(self.root.join(name))
    }

    /// The directory holding bucket `name`'s objects.
    pub fn bucket_dir(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    /// The environment a client needs: credentials, region and this endpoint.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ACCESS_KEY_ID", ACCESS_KEY.to_string()),
            ("AWS_SECRET_ACCESS_KEY", SECRET_KEY.to_string()),
            ("AWS_REGION", REGION.to_string()),
            ("AWS_ENDPOINT_URL", self.endpoint.clone()),
        ]
    }

    /// The next `n` requests are answered with HTTP 500.
    pub fn fail_next(&self, n: u64) {
        self.counters.fail_next.store(n, Ordering::SeqCst);
    }

    /// Requests received so far (failed ones included).
    pub fn requests(&self) -> u64 {
        self.counters.requests.load(Ordering::SeqCst)
    }

    /// GET requests received so far (downloads and listings).
    pub fn get_requests(&self) -> u64 {
        self.counters.get_requests.load(Ordering::SeqCst)
    }

    /// GET requests so far for objects whose path (`/bucket/key`) starts with `prefix`: the
    /// requests of one test when several share a server.
    pub fn gets_under(&self, prefix: &str) -> usize {
        let paths = self.counters.get_paths.lock().expect("paths");
        paths.iter().filter(|p| p.starts_with(prefix)).count()
    }

    /// Requests answered with an injected 500.
    pub fn failed_requests(&self) -> u64 {
        self.counters.failed.load(Ordering::SeqCst)
    }

    /// Stops serving and drops every connection.
    pub fn stop(mut self) {
        self.shutdown_now();
    }

    fn shutdown_now(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.shutdown_now();
    }
}
