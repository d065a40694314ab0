//! Object storage: `s3://`, `gs://`, `az://` and `http(s)://` locations through the `object_store`
//! crate (arrow-rs), with blocking calls for maskrate's threads.
//!
//! - [`is_remote`] / [`Store::open`]: a URL names a bucket and a prefix; credentials and
//!   endpoints come from each cloud's standard environment (for S3: `AWS_ACCESS_KEY_ID`,
//!   `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, `AWS_REGION`, `AWS_ENDPOINT_URL`; an `http://`
//!   endpoint is allowed, for local servers). No secret is ever written to a manifest, log or error.
//! - Requests are retried with exponential backoff on 5xx, 429 and timeouts (object_store's retry
//!   policy; `MASKRATE_STORE_RETRIES` sets the count, default 10); 403 and 404 fail at once with
//!   a one-line error naming the URL.
//! - [`cache`]: whole shard files fetched into a bounded local directory.

pub mod cache;

use crate::error::{Error, IoContext, Result};
use futures::StreamExt;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload, WriteMultipart};
use sha2::{Digest, Sha256};
use std::io::Write;
use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

pub use cache::{CacheConfig, CacheStats, ShardCache};

/// URL schemes read through object storage.
const SCHEMES: [&str; 7] = [
    "s3://", "s3a://", "gs://", "az://", "abfs://", "http://", "https://",
];

/// Whether `location` (as given on a command line) is an object-store URL rather than a path.
pub fn is_remote(location: &Path) -> bool {
    location
        .to_str()
        .is_some_and(|s| SCHEMES.iter().any(|scheme| s.starts_with(scheme)))
}

/// The tokio runtime behind every blocking call (two workers: requests are I/O-bound).
fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("maskrate-store")
            .enable_all()
            .build()
            .expect("start the object-store runtime")
    })
}

/// Runs `fut` to completion from a plain (non-async) thread.
fn block_on<F: std::future::Future>(fut: F) -> F::Output {
    runtime().block_on(fut)
}

/// A bucket and prefix: every object below it is addressed by its path relative to the prefix.
#[derive(Clone)]
pub struct Store {
    inner: Arc<dyn ObjectStore>,
    /// The URL as given, without a trailing slash (for messages).
    url: String,
    prefix: ObjectPath,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("url", &self.url).finish()
    }
}

fn retry_config() -> object_store::RetryConfig {
    let max_retries = std::env::var("MASKRATE_STORE_RETRIES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    object_store::RetryConfig {
        backoff: object_store::BackoffConfig {
            init_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(15),
            base: 2.0,
        },
        max_retries,
        retry_timeout: Duration::from_secs(180),
    }
}

/// The `object_store` client for the scheme of `parsed` (the URL `url`), configured from the
/// environment the standard way for each cloud (`AWS_*`, `GOOGLE_*`, `AZURE_*`).
fn client(parsed: &url::Url, url: &str) -> Result<Arc<dyn ObjectStore>> {
    let build_err = |e: object_store::Error| Error::Remote {
        url: url.to_string(),
        msg: one_line(&e.to_string()),
    };
    let client: Arc<dyn ObjectStore> = match parsed.scheme() {
        "s3" | "s3a" => Arc::new(s3_builder(url).build().map_err(build_err)?),
        "gs" => Arc::new(
            object_store::gcp::GoogleCloudStorageBuilder::from_env()
                .with_url(url)
                .with_retry(retry_config())
                .build()
                .map_err(build_err)?,
        ),
        "az" | "abfs" => Arc::new(
            object_store::azure::MicrosoftAzureBuilder::from_env()
                .with_url(url)
                .with_retry(retry_config())
                .build()
                .map_err(build_err)?,
        ),
        "http" | "https" => Arc::new(
            object_store::http::HttpBuilder::new()
                .with_url(parsed.origin().ascii_serialization())
                .with_retry(retry_config())
                .build()
                .map_err(build_err)?,
        ),
        other => {
            return Err(Error::Remote {
                url: url.to_string(),
                msg: format!("unsupported scheme {other:?} (s3, gs, az, http, https)"),
            })
        }
    };
    Ok(client)
}

/// S3 from the `AWS_*` environment; an `http://` endpoint (a local server) allowed, and
/// `us-east-1` when no region is set.
fn s3_builder(url: &str) -> object_store::aws::AmazonS3Builder {
    let mut b = object_store::aws::AmazonS3Builder::from_env()
        .with_url(url)
        .with_retry(retry_config());
    let endpoint = std::env::var("AWS_ENDPOINT_URL")
        .or_else(|_| std::env::var("AWS_ENDPOINT"))
        .unwrap_or_default();
    if endpoint.starts_with("http://") {
        b = b.with_allow_http(true);
    }
    if std::env::var("AWS_REGION").is_err() && std::env::var("AWS_DEFAULT_REGION").is_err() {
        b = b.with_region("us-east-1");
    }
    b
}

impl Store {
    /// Connects to the bucket of `url` (`s3://bucket/prefix`, `gs://…`, `az://…`, `https://…`).
    pub fn open(url: &str) -> Result<Store> {
        let url = url.trim_end_matches('/').to_string();
        let parsed = url::Url::parse(&url).map_err(|e| Error::Remote {
            url: url.clone(),
            msg: format!("not a URL: {e}"),
        })?;
        let inner = client(&parsed, &url)?;
        let prefix = object_path(parsed.path())?;
        Ok(Store { inner, url, prefix })
    }

    /// The URL of the prefix, as given.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The URL of object `rel` (for messages).
    pub fn url_of(&self, rel: &str) -> String {
        format!("{}/{rel}", self.url)
    }

    /// A store for the sub-prefix `rel`.
    pub fn child(&self, rel: &str) -> Store {
        Store {
            inner: self.inner.clone(),
            url: self.url_of(rel),
            prefix: self.path(rel),
        }
    }

    fn path(&self, rel: &str) -> ObjectPath {
        rel.split('/')
            .filter(|p| !p.is_empty())
            .fold(self.prefix.clone(), |p, part| p.clone().join(part))
    }

    fn err(&self, rel: &str, e: object_store::Error) -> Error {
        remote_error(self.url_of(rel), &e)
    }

    /// The whole object `rel` in memory (manifests, tokenizers: small objects).
    pub fn get_bytes(&self, rel: &str) -> Result<Vec<u8>> {
        let path = self.path(rel);
        block_on(async {
            let got = self.inner.get(&path).await?;
            got.bytes().await
        })
        .map(|b| b.to_vec())
        .map_err(|e| self.err(rel, e))
    }

    /// Size of object `rel`, or `None` when there is none.
    pub fn size_of(&self, rel: &str) -> Result<Option<u64>> {
        match block_on(self.inner.head(&self.path(rel))) {
            Ok(meta) => Ok(Some(meta.size)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.err(rel, e)),
        }
    }

    /// Streams object `rel` into `out`, hashing as it goes; returns (bytes, sha256 hex).
    pub fn download_to(
        &self,
        rel: &str,
        out: &mut impl Write,
        out_path: &Path,
    ) -> Result<(u64, String)> {
        let path = self.path(rel);
        block_on(async {
            let got = self.inner.get(&path).await.map_err(|e| self.err(rel, e))?;
            let mut stream = got.into_stream();
            let mut hasher = Sha256::new();
            let mut n = 0u64;
            while let Some(chunk) = stream.next().await {
                let chunk = chunk.map_err(|e| self.err(rel, e))?;
                hasher.update(&chunk);
                n += chunk.len() as u64;
                out.write_all(&chunk).with_path(out_path)?;
            }
            Ok((n, hex::encode(hasher.finalize())))
        })
    }

    /// Object `rel` downloaded into an unnamed temporary file (deleted when closed), rewound: for
    /// formats that need random access (parquet and Arrow IPC footers).
    pub fn download_to_tempfile(&self, rel: &str) -> Result<std::fs::File> {
        use std::io::Seek;
        let tmp_dir = std::env::temp_dir();
        let mut file = tempfile::tempfile_in(&tmp_dir).with_path(&tmp_dir)?;
        {
            let mut out = std::io::BufWriter::with_capacity(1 << 20, &mut file);
            self.download_to(rel, &mut out, &tmp_dir)?;
            out.flush().with_path(&tmp_dir)?;
        }
        file.rewind().with_path(&tmp_dir)?;
        Ok(file)
    }

    /// A blocking reader over object `rel`, streamed (never downloaded whole first).
    pub fn reader(&self, rel: &str) -> Result<ObjectReader> {
        let path = self.path(rel);
        let stream = block_on(async {
            let got = self.inner.get(&path).await?;
            Ok::<_, object_store::Error>(got.into_stream())
        })
        .map_err(|e| self.err(rel, e))?;
        Ok(ObjectReader {
            stream,
            chunk: bytes::Bytes::new(),
            url: self.url_of(rel),
        })
    }

    /// Every object below the prefix, as (relative path, size), sorted by path.
    pub fn list(&self) -> Result<Vec<(String, u64)>> {
        let prefix = self.prefix.clone();
        let metas = block_on(async {
            let mut out = Vec::new();
            let mut listing = self.inner.list(Some(&prefix));
            while let Some(meta) = listing.next().await {
                out.push(meta?);
            }
            Ok::<_, object_store::Error>(out)
        })
        .map_err(|e| remote_error(self.url.clone(), &e))?;
        let mut out: Vec<(String, u64)> = metas
            .into_iter()
            .filter_map(|m| {
                let rel = m.location.prefix_match(&prefix)?;
                let rel: Vec<String> = rel.map(|p| p.as_ref().to_string()).collect();
                Some((rel.join("/"), m.size))
            })
            .collect();
        out.sort();
        Ok(out)
    }

    /// Writes `data` as object `rel` in one request (small objects: manifests, journals).
    pub fn put_bytes(&self, rel: &str, data: Vec<u8>) -> Result<()> {
        block_on(self.inner.put(&self.path(rel), PutPayload::from(data)))
            .map(|_| ())
            .map_err(|e| self.err(rel, e))
    }

    /// Uploads file `file` as object `rel`: a multipart upload in 16 MiB parts (4 in flight),
    /// visible only once complete.
    pub fn upload_file(&self, rel: &str, file: &Path) -> Result<()> {
        use std::io::Read;
        const PART: usize = 16 << 20;
        let path = self.path(rel);
        let mut f = std::fs::File::open(file).with_path(file)?;
        block_on(async {
            let upload = self
                .inner
                .put_multipart(&path)
                .await
                .map_err(|e| self.err(rel, e))?;
            let mut writer = WriteMultipart::new_with_chunk_size(upload, PART);
            let mut buf = vec![0u8; PART];
            loop {
                let n = f.read(&mut buf).with_path(file)?;
                if n == 0 {
                    break;
                }
                writer
                    .wait_for_capacity(4)
                    .await
                    .map_err(|e| self.err(rel, e))?;
                writer.write(&buf[..n]);
            }
            writer.finish().await.map_err(|e| self.err(rel, e))?;
            Ok(())
        })
    }

    /// `scheme://bucket` of this store's URL.
    pub fn bucket(&self) -> String {
        match self.url.split_once("://") {
            Some((scheme, rest)) => format!("{scheme}://{}", rest.split('/').next().unwrap_or("")),
            None => self.url.clone(),
        }
    }

    /// Copies object `src_rel` of `src` (in the same bucket) to `rel` here, server-side: no byte
    /// passes through this machine.
    pub fn copy_within_bucket(&self, src: &Store, src_rel: &str, rel: &str) -> Result<()> {
        if src.bucket() != self.bucket() {
            return Err(Error::Remote {
                url: src.url_of(src_rel),
                msg: format!("in another bucket than {}: copy it there first", self.url),
            });
        }
        block_on(self.inner.copy(&src.path(src_rel), &self.path(rel)))
            .map_err(|e| src.err(src_rel, e))
    }

    /// Deletes object `rel` (absent is fine).
    pub fn delete(&self, rel: &str) -> Result<()> {
        match block_on(self.inner.delete(&self.path(rel))) {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.err(rel, e)),
        }
    }
}

/// The store of `url`'s parent and the object's name: `s3://b/c4/x.json.gz` -> (`s3://b/c4`,
/// `x.json.gz`).
pub fn open_object(url: &str) -> Result<(Store, String)> {
    let (parent, name) = url
        .trim_end_matches('/')
        .rsplit_once('/')
        .filter(|(p, _)| p.contains("://") && !p.ends_with(':') && !p.ends_with("//"))
        .ok_or_else(|| Error::Remote {
            url: url.to_string(),
            msg: "names a bucket, not an object".into(),
        })?;
    Ok((Store::open(parent)?, name.to_string()))
}

fn object_path(url_path: &str) -> Result<ObjectPath> {
    let decoded = url_path.trim_matches('/');
    ObjectPath::parse(decoded).map_err(|e| Error::Config(format!("object path {decoded:?}: {e}")))
}

/// The first line of `s`, at most 300 characters (object_store's messages can carry a whole
/// XML response body).
fn one_line(s: &str) -> String {
    let line = s.lines().next().unwrap_or_default();
    line.chars().take(300).collect()
}

/// A one-line error naming `url`: what went wrong in words, then object_store's own first line.
fn remote_error(url: String, e: &object_store::Error) -> Error {
    use object_store::Error as E;
    let msg = match e {
        E::NotFound { .. } => "not found (HTTP 404): check the bucket and the prefix".to_string(),
        E::PermissionDenied { .. } => {
            "access denied (HTTP 403): check the credentials (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY or the cloud's equivalent) and the bucket's policy".to_string()
        }
        E::Unauthenticated { .. } => {
            "not authenticated (HTTP 401): check the credentials (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY or the cloud's equivalent)".to_string()
        }
        other => {
            let text = one_line(&other.to_string());
            // S3 answers a bad signature or unknown key with 403 in a generic error.
            if text.contains("403") || text.contains("SignatureDoesNotMatch") || text.contains("InvalidAccessKeyId") {
                format!("access denied (HTTP 403): check the credentials (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY) and the bucket's policy; {text}")
            } else if text.contains("NoSuchBucket") || text.contains("404") {
                format!("not found (HTTP 404): check the bucket and the prefix; {text}")
            } else {
                text
            }
        }
    };
    Error::Remote { url, msg }
}

/// A blocking [`std::io::Read`] over an object's byte stream.
pub struct ObjectReader {
    stream: futures::stream::BoxStream<'static, object_store::Result<bytes::Bytes>>,
    chunk: bytes::Bytes,
    url: String,
}

impl std::fmt::Debug for ObjectReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObjectReader")
            .field("url", &self.url)
            .finish()
    }
}

impl std::io::Read for ObjectReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.chunk.is_empty() {
            match block_on(self.stream.next()) {
                None => return Ok(0),
                Some(Ok(chunk)) => self.chunk = chunk,
                Some(Err(e)) => {
                    return Err(std::io::Error::other(
                        remote_error(self.url.clone(), &e).to_string(),
                    ))
                }
            }
        }
        let n = buf.len().min(self.chunk.len());
        buf[..n].copy_from_slice(&self.chunk[..n]);
        let _ = self.chunk.split_to(n);
        Ok(n)
    }
}
