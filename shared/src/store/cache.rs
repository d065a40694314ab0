//! [`ShardCache`]: whole shard files fetched from object storage into a local directory whose
//! size never exceeds a bound, then memory-mapped.
//!
//! Files are content-addressed (`<sha256>.<ext>`, the checksums the caller names), verified as
//! they arrive and renamed into place, so a half-downloaded file is never visible, a replaced
//! file never reads stale bytes, and a second run (or another rank on the node) finds what an
//! earlier one fetched. Eviction is least-recently-used among files nobody is reading and the
//! caller has not pinned (the shard reader pins the indexes of open shard sets: ~4% of the token
//! bytes, and every lookup needs them). The cache knows nothing of what the files hold.

use super::Store;
use crate::error::{Error, IoContext, Result};
use memmap2::Mmap;
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, Weak};

/// Where the cache lives and how large it may grow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheConfig {
    /// The directory (shared by runs and ranks on one machine).
    pub dir: PathBuf,
    /// Bound on the bytes of cached files.
    pub max_bytes: u64,
}

/// Default bound: 4 GiB.
pub const DEFAULT_MAX_BYTES: u64 = 4 << 30;

impl CacheConfig {
    /// `dir` or the default (`$MASKRATE_CACHE_DIR`, else `$XDG_CACHE_HOME/maskrate/shards`, else
    /// `~/.cache/maskrate/shards`), bounded by `max_bytes` (else `$MASKRATE_CACHE_BYTES`, else 4 GiB).
    pub fn new(dir: Option<PathBuf>, max_bytes: Option<u64>) -> Result<CacheConfig> {
        let dir = match dir.or_else(|| std::env::var_os("MASKRATE_CACHE_DIR").map(PathBuf::from)) {
            Some(d) => d,
            None => std::env::var_os("XDG_CACHE_HOME")
                .map(PathBuf::from)
                .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
                .ok_or_else(|| {
                    Error::Config(
                        "no cache directory: set --cache-dir or MASKRATE_CACHE_DIR".into(),
                    )
                })?
                .join("maskrate")
                .join("shards"),
        };
        let max_bytes = match max_bytes {
            Some(b) => b,
            None => match std::env::var("MASKRATE_CACHE_BYTES") {
                Ok(v) => crate::size::parse_size(&v)?,
                Err(_) => DEFAULT_MAX_BYTES,
            },
        };
        Ok(CacheConfig { dir, max_bytes })
    }
}

/// An object to fetch: where it is and what it must hash to.
#[derive(Debug, Clone)]
pub struct Fetch {
    /// The bucket prefix it is under.
    pub store: Store,
    /// Its path relative to the prefix.
    pub rel: String,
    /// Its SHA-256 (hex), from the manifest.
    pub sha256: String,
    /// Its size in bytes.
    pub bytes: u64,
    /// The cached file's name: `<sha256>.<ext>`.
    key: Arc<str>,
}

impl Fetch {
    /// `rel` of `store`, `bytes` long with SHA-256 `sha256`, cached as `<sha256>.<ext>`.
    pub fn new(store: Store, rel: String, sha256: String, bytes: u64, ext: &str) -> Fetch {
        let key: Arc<str> = format!("{sha256}.{ext}").into();
        Fetch {
            store,
            rel,
            sha256,
            bytes,
            key,
        }
    }

    fn key(&self) -> &str {
        &self.key
    }
}

/// Counters of one process's use of the cache.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CacheStats {
    /// Files downloaded.
    pub downloads: u64,
    /// Bytes downloaded.
    pub bytes_downloaded: u64,
    /// Reads served by a file already cached (this run's or an earlier one's).
    pub hits: u64,
    /// Reads that waited for a download (the network was on the critical path).
    pub waits: u64,
    /// Files evicted to stay within the bound.
    pub evictions: u64,
    /// Largest total of cached bytes seen.
    pub peak_bytes: u64,
}

#[derive(Debug)]
struct Entry {
    bytes: u64,
    map: Option<Arc<Mmap>>,
    fetching: bool,
    pinned: bool,
    last_use: u64,
}

#[derive(Debug, Default)]
struct State {
    entries: HashMap<String, Entry>,
    used: u64,
    clock: u64,
    queued: HashSet<String>,
}

/// The bounded cache of one directory (one per directory per process: [`ShardCache::shared`]).
#[derive(Debug)]
pub struct ShardCache {
    cfg: CacheConfig,
    state: Mutex<State>,
    ready: Condvar,
    stats: [AtomicU64; 5],
    peak: AtomicU64,
    prefetch: crossbeam_channel::Sender<Fetch>,
    /// Prefetch threads holding the cache alive (counted outside it, so a thread leaves the count
    /// only after it has let go of the cache).
    busy_threads: Arc<AtomicUsize>,
}

const DOWNLOADS: usize = 0;
const BYTES: usize = 1;
const HITS: usize = 2;
const WAITS: usize = 3;
const EVICTIONS: usize = 4;

/// Background download threads per cache (`MASKRATE_FETCH_THREADS`, default 8: one S3 connection
/// gives ~90 MB/s, so a node streaming shards at several Gbit/s needs several).
fn prefetch_threads() -> usize {
    std::env::var("MASKRATE_FETCH_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or(8)
}

impl ShardCache {
    /// The process's cache for `cfg.dir` (created, and scanned for files of earlier runs, on first
    /// use). Every shard set reading through the same directory shares its bound.
    pub fn shared(cfg: &CacheConfig) -> Result<Arc<ShardCache>> {
        static CACHES: Mutex<Vec<(PathBuf, Weak<ShardCache>)>> = Mutex::new(Vec::new());
        let mut caches = CACHES.lock().expect("cache registry");
        caches.retain(|(_, w)| w.strong_count() > 0);
        if let Some(c) = caches
            .iter()
            .find(|(d, _)| d == &cfg.dir)
            .and_then(|(_, w)| w.upgrade())
        {
            if c.cfg.max_bytes != cfg.max_bytes {
                return Err(Error::Config(format!(
                    "cache {} is open with a bound of {} bytes; asked for {}",
                    cfg.dir.display(),
                    c.cfg.max_bytes,
                    cfg.max_bytes
                )));
            }
            return Ok(c);
        }
        let cache = Self::open(cfg.clone())?;
        caches.push((cfg.dir.clone(), Arc::downgrade(&cache)));
        Ok(cache)
    }

    fn open(cfg: CacheConfig) -> Result<Arc<ShardCache>> {
        std::fs::create_dir_all(&cfg.dir).with_path(&cfg.dir)?;
        let state = scan(&cfg.dir)?;
        let (tx, rx) = crossbeam_channel::unbounded::<Fetch>();
        let cache = Arc::new(ShardCache {
            cfg,
            state: Mutex::new(state),
            ready: Condvar::new(),
            stats: Default::default(),
            peak: AtomicU64::new(0),
            prefetch: tx,
            busy_threads: Arc::default(),
        });
        {
            let mut st = cache.state.lock().expect("cache state");
            cache.evict_to(&mut st, 0)?;
            cache.peak.store(st.used, Ordering::Relaxed);
        }
        for i in 0..prefetch_threads() {
            cache.spawn_prefetcher(i, rx.clone())?;
        }
        Ok(cache)
    }

    /// Starts background download thread `i`, which serves `rx` while the cache lives.
    fn spawn_prefetcher(
        self: &Arc<Self>,
        i: usize,
        rx: crossbeam_channel::Receiver<Fetch>,
    ) -> Result<()> {
        let (weak, busy) = (Arc::downgrade(self), self.busy_threads.clone());
        std::thread::Builder::new()
            .name(format!("maskrate-prefetch-{i}"))
            .spawn(move || {
                while let Ok(fetch) = rx.recv() {
                    busy.fetch_add(1, Ordering::SeqCst);
                    // A failed prefetch is retried (and reported) by the read that needs it.
                    let alive = weak
                        .upgrade()
                        .map(|cache| cache.fetch_ahead(&fetch))
                        .is_some();
                    busy.fetch_sub(1, Ordering::SeqCst);
                    if !alive {
                        break;
                    }
                }
            })
            .with_path(&self.cfg.dir)?;
        Ok(())
    }

    /// The configuration.
    pub fn config(&self) -> &CacheConfig {
        &self.cfg
    }

    /// This process's counters.
    pub fn stats(&self) -> CacheStats {
        let s = |i: usize| self.stats[i].load(Ordering::Relaxed);
        CacheStats {
            downloads: s(DOWNLOADS),
            bytes_downloaded: s(BYTES),
            hits: s(HITS),
            waits: s(WAITS),
            evictions: s(EVICTIONS),
            peak_bytes: self.peak.load(Ordering::Relaxed),
        }
    }

    /// Bytes of cached files now.
    pub fn used_bytes(&self) -> u64 {
        self.state.lock().expect("cache state").used
    }

    /// The mapped file of `fetch`, downloaded first if it is not cached (blocking). `pin` keeps it
    /// cached for the life of the process (index files).
    pub fn get(&self, fetch: &Fetch, pin: bool) -> Result<Arc<Mmap>> {
        let key = fetch.key();
        let mut st = self.state.lock().expect("cache state");
        let mut waited = false;
        loop {
            st.clock += 1;
            let clock = st.clock;
            match st.entries.get_mut(key) {
                Some(e) if e.fetching => {
                    waited = true;
                    st = self.ready.wait(st).expect("cache state");
                    continue;
                }
                Some(e) => {
                    e.last_use = clock;
                    e.pinned |= pin;
                    if let Some(map) = &e.map {
                        let map = map.clone();
                        self.count(if waited { WAITS } else { HITS });
                        return Ok(map);
                    }
                    let path = self.cfg.dir.join(key);
                    match map_file(&path) {
                        Ok(map) => {
                            let map = Arc::new(map);
                            e.map = Some(map.clone());
                            self.count(if waited { WAITS } else { HITS });
                            return Ok(map);
                        }
                        Err(_) => {
                            // Removed under us (another process's eviction): fetch again.
                            let bytes = e.bytes;
                            st.entries.remove(key);
                            st.used -= bytes;
                            continue;
                        }
                    }
                }
                None => {
                    if self.adopt(&mut st, key, fetch.bytes, clock)? {
                        continue;
                    }
                    if let Err(full) = self.reserve(&mut st, key, fetch.bytes, pin, clock) {
                        // Background downloads hold the room: wait for one to finish (it then
                        // becomes evictable) rather than fail; fail when none is in flight.
                        if !st.entries.values().any(|e| e.fetching) {
                            return Err(full);
                        }
                        waited = true;
                        st = self.ready.wait(st).expect("cache state");
                        continue;
                    }
                    drop(st);
                    let result = self.download(fetch);
                    st = self.state.lock().expect("cache state");
                    let result = self.finish(&mut st, key, result);
                    self.count(WAITS);
                    return result;
                }
            }
        }
    }

    /// Starts downloading `fetches` in the background (those not cached or queued already).
    pub fn prefetch(&self, fetches: impl IntoIterator<Item = Fetch>) {
        let mut st = self.state.lock().expect("cache state");
        for f in fetches {
            if !st.entries.contains_key(f.key()) && st.queued.insert(f.key().to_string()) {
                let _ = self.prefetch.send(f);
            }
        }
    }

    /// Blocks until no background download is queued or in flight and no prefetch thread holds the
    /// cache, so that the files on disk and [`ShardCache::stats`] stop changing, and dropping the
    /// last handle closes the cache (a clean shutdown, a measurement).
    pub fn wait_idle(&self) {
        let mut st = self.state.lock().expect("cache state");
        // A queued fetch is dequeued only by a thread already counted busy, so an empty queue and
        // no busy thread mean no work is left.
        while !st.queued.is_empty()
            || st.entries.values().any(|e| e.fetching)
            || self.busy_threads.load(Ordering::SeqCst) > 0
        {
            // A skipped prefetch signals nothing, so the wait also wakes on its own to look again.
            let timeout = std::time::Duration::from_millis(20);
            st = self.ready.wait_timeout(st, timeout).expect("cache state").0;
        }
    }

    /// A background download: skipped when the file arrived meanwhile or when room can only be
    /// made by evicting files in use.
    fn fetch_ahead(&self, fetch: &Fetch) -> Result<()> {
        let key = fetch.key();
        let mut st = self.state.lock().expect("cache state");
        st.queued.remove(key);
        if st.entries.contains_key(key) {
            return Ok(());
        }
        st.clock += 1;
        let clock = st.clock;
        if self.adopt(&mut st, key, fetch.bytes, clock)? {
            return Ok(());
        }
        self.reserve(&mut st, key, fetch.bytes, false, clock)?;
        drop(st);
        let result = self.download(fetch);
        let mut st = self.state.lock().expect("cache state");
        self.finish(&mut st, key, result).map(|_| ())
    }

    /// Takes over `key` when another process (a rank on the same machine) has downloaded it since
    /// this cache was opened; false when it is not on disk.
    fn adopt(&self, st: &mut State, key: &str, bytes: u64, clock: u64) -> Result<bool> {
        let path = self.cfg.dir.join(key);
        if std::fs::metadata(&path).map(|m| m.len()).ok() != Some(bytes) {
            return Ok(false);
        }
        self.insert(st, key, bytes, false, false, clock)?;
        Ok(true)
    }

    fn count(&self, which: usize) {
        self.stats[which].fetch_add(1, Ordering::Relaxed);
    }

    /// Makes room for `bytes` and records `key` as being fetched.
    fn reserve(&self, st: &mut State, key: &str, bytes: u64, pin: bool, clock: u64) -> Result<()> {
        self.insert(st, key, bytes, true, pin, clock)
    }

    /// Makes room for `bytes` and records `key`: a file being fetched, or one already on disk.
    fn insert(
        &self,
        st: &mut State,
        key: &str,
        bytes: u64,
        fetching: bool,
        pinned: bool,
        clock: u64,
    ) -> Result<()> {
        self.evict_to(st, bytes)?;
        st.used += bytes;
        self.peak.fetch_max(st.used, Ordering::Relaxed);
        st.entries.insert(
            key.to_string(),
            Entry {
                bytes,
                map: None,
                fetching,
                pinned,
                last_use: clock,
            },
        );
        Ok(())
    }

    /// Evicts least-recently-used files no one reads until `incoming` more bytes fit the bound.
    fn evict_to(&self, st: &mut State, incoming: u64) -> Result<()> {
        while st.used + incoming > self.cfg.max_bytes {
            let victim = st
                .entries
                .iter()
                .filter(|(_, e)| {
                    !e.fetching
                        && !e.pinned
                        && e.map.as_ref().is_none_or(|m| Arc::strong_count(m) == 1)
                })
                .min_by_key(|(_, e)| e.last_use)
                .map(|(k, _)| k.clone());
            let Some(victim) = victim else {
                return Err(Error::Config(format!(
                    "shard cache {}: {} bytes are in use or pinned and {incoming} more are needed, over the bound of {} bytes: raise --cache-bytes (it must hold the indexes and the shards a few steps read at once) or use --order shard-blocks:K",
                    self.cfg.dir.display(),
                    st.used,
                    self.cfg.max_bytes
                )));
            };
            let e = st.entries.remove(&victim).expect("chosen above");
            drop(e.map);
            let _ = std::fs::remove_file(self.cfg.dir.join(&victim));
            let _ = std::fs::remove_file(self.cfg.dir.join(format!(".lock-{victim}")));
            st.used -= e.bytes;
            self.count(EVICTIONS);
        }
        Ok(())
    }

    /// Records the end of a download: the mapped file, or the error (its room released).
    fn finish(&self, st: &mut State, key: &str, result: Result<Mmap>) -> Result<Arc<Mmap>> {
        self.ready.notify_all();
        match result {
            Ok(map) => {
                let map = Arc::new(map);
                let e = st.entries.get_mut(key).expect("reserved");
                e.fetching = false;
                e.map = Some(map.clone());
                Ok(map)
            }
            Err(err) => {
                if let Some(e) = st.entries.remove(key) {
                    st.used -= e.bytes;
                }
                Err(err)
            }
        }
    }

    /// Downloads `fetch` to a temporary file, checks its size and checksum, renames it into place
    /// and maps it.
    fn download(&self, fetch: &Fetch) -> Result<Mmap> {
        let dest = self.cfg.dir.join(fetch.key());
        // One download per file per machine: ranks sharing the directory wait for the first.
        let lock_path = self.cfg.dir.join(format!(".lock-{}", fetch.key()));
        let lock = std::fs::File::create(&lock_path).with_path(&lock_path)?;
        lock.lock().with_path(&lock_path)?;
        if std::fs::metadata(&dest).map(|m| m.len()).ok() == Some(fetch.bytes) {
            return map_file(&dest); // another process fetched it while this one waited
        }
        let mut tmp = tempfile::Builder::new()
            .prefix(".tmp")
            .tempfile_in(&self.cfg.dir)
            .with_path(&self.cfg.dir)?;
        let mut out = std::io::BufWriter::with_capacity(1 << 20, tmp.as_file_mut());
        let (n, sha) = fetch.store.download_to(&fetch.rel, &mut out, &dest)?;
        out.into_inner()
            .map_err(|e| Error::io(&dest, e.into_error()))?;
        let url = fetch.store.url_of(&fetch.rel);
        if n != fetch.bytes || sha != fetch.sha256 {
            return Err(Error::Remote {
                url,
                msg: format!(
                    "{n} bytes with sha256 {sha}, the manifest says {} bytes with sha256 {}: the object changed after its manifest was written",
                    fetch.bytes, fetch.sha256
                ),
            });
        }
        tmp.as_file().sync_all().with_path(&dest)?;
        tmp.persist(&dest).map_err(|e| Error::io(&dest, e.error))?;
        self.stats[DOWNLOADS].fetch_add(1, Ordering::Relaxed);
        self.stats[BYTES].fetch_add(n, Ordering::Relaxed);
        map_file(&dest)
    }
}

/// The files earlier runs left in `dir`, oldest first as least recently used; downloads killed
/// mid-way (stale temporary files) are removed.
fn scan(dir: &Path) -> Result<State> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).with_path(dir)? {
        let entry = entry.with_path(dir)?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let meta = match entry.metadata() {
            Ok(meta) => meta,
            // Renamed or evicted meanwhile by another process sharing the directory.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(Error::io(entry.path(), e)),
        };
        if is_cached_name(&name) && meta.is_file() {
            found.push((meta.modified().ok(), name, meta.len()));
        } else if name.starts_with(".tmp") && stale(&meta) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
    found.sort();
    let mut state = State::default();
    for (clock, (_, name, bytes)) in found.into_iter().enumerate() {
        state.used += bytes;
        state.entries.insert(
            name,
            Entry {
                bytes,
                map: None,
                fetching: false,
                pinned: false,
                last_use: clock as u64,
            },
        );
        state.clock = clock as u64 + 1;
    }
    Ok(state)
}

fn map_file(path: &Path) -> Result<Mmap> {
    let file = std::fs::File::open(path).with_path(path)?;
    // SAFETY: cached files are written under a temporary name, verified, then renamed, and never
    // written again; eviction unlinks a file, which leaves existing maps valid.
    unsafe { Mmap::map(&file) }.with_path(path)
}

/// `<sha256>.<ext>`: a content-addressed file of this cache (whatever its extension means to
/// the caller), not a temporary or a stranger's file.
fn is_cached_name(name: &str) -> bool {
    let Some((hash, ext)) = name.split_once('.') else {
        return false;
    };
    !ext.is_empty()
        && ext.bytes().all(|b| b.is_ascii_alphanumeric())
        && hash.len() == 64
        && hash.bytes().all(|b| b.is_ascii_hexdigit())
}

/// A temporary file untouched for an hour: left by a killed download.
fn stale(meta: &std::fs::Metadata) -> bool {
    meta.modified()
        .ok()
        .and_then(|m| m.elapsed().ok())
        .is_some_and(|age| age.as_secs() > 3600)
}
