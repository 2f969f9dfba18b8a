//! The package store and resumable downloader against the simulated package
//! server: real sockets, real TLS with generated certificates, a real SQLite
//! journal. Deterministic: port 0, seeded randomness, bounded loops; no
//! assertion depends on how long anything took.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime};

use otabridge::config::{DownloadConfig, Secret};
use otabridge::journal::{Journal, SharedJournal};
use otabridge::ota::verdict::{verdict, Failure};
use otabridge::package::{DownloadError, DownloadOptions, PackageRequest, PackageStore, DIR_NAME};
use otabridge::sim::package_server::{Access, Faults, PackageServer, Served, Source};
use otabridge_codecs::iotda::result;
use rand::{Rng, SeedableRng};

const MIB: u64 = 1024 * 1024;

struct Env {
    dir: tempfile::TempDir,
    server: PackageServer,
    ca: PathBuf,
    journal: SharedJournal,
}

impl Env {
    async fn new() -> Env {
        Env::with_server(PackageServer::start(&["127.0.0.1"]).await.unwrap())
    }

    fn with_server(server: PackageServer) -> Env {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        let pem = match server.ca_pem() {
            // A plain http:// server has no CA; any valid one will do.
            "" => {
                otabridge::sim::platform::TestPki::new(&["x"])
                    .unwrap()
                    .ca_pem
            }
            pem => pem.to_owned(),
        };
        std::fs::write(&ca, pem).unwrap();
        let journal = SharedJournal::open(&dir.path().join("state")).unwrap();
        Env {
            dir,
            server,
            ca,
            journal,
        }
    }

    fn cfg(&self) -> DownloadConfig {
        DownloadConfig {
            ca_file: Some(self.ca.clone()),
            max_package_bytes: 64 * MIB,
            allow_http: false,
            verify_hostname: true,
        }
    }

    fn packages(&self) -> PathBuf {
        self.dir.path().join("state").join(DIR_NAME)
    }

    async fn store_with(&self, cfg: &DownloadConfig, opts: DownloadOptions) -> PackageStore {
        PackageStore::with_options(&self.packages(), self.journal.clone(), cfg, opts)
            .await
            .unwrap()
    }

    async fn store(&self) -> PackageStore {
        self.store_with(&self.cfg(), fast()).await
    }

    /// Runs `sql` on the journal the store uses.
    async fn sql(&self, sql: String) {
        self.journal
            .run(move |j| j.connection().execute_batch(&sql))
            .await
            .unwrap();
    }

    fn add(&self, id: &str, len: u64, access: Access) -> Served {
        self.server
            .add(
                id,
                Source::Generated {
                    len,
                    seed: len ^ 0x5eed,
                },
                access,
            )
            .unwrap()
    }

    /// Names of the files in the store.
    fn files(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(self.packages())
            .map(|d| {
                d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }

    async fn journal_rows(&self) -> i64 {
        self.journal
            .run(|j| {
                j.connection()
                    .query_row("SELECT COUNT(*) FROM packages", [], |r| r.get(0))
                    .unwrap()
            })
            .await
    }
}

/// Short timeouts and backoffs for tests.
fn fast() -> DownloadOptions {
    DownloadOptions {
        connect_timeout: Duration::from_secs(10),
        read_timeout: Duration::from_secs(10),
        retry: otabridge::retry::RetryPolicy::until_deadline(
            Duration::from_millis(5),
            Duration::from_millis(40),
        )
        .seeded(7),
        auth_attempts: 3,
        checkpoint_bytes: 64 * 1024,
        checkpoint_interval: Duration::from_secs(2),
        free_space_margin: MIB,
        ..DownloadOptions::default()
    }
}

fn request(s: &Served, token: Option<&str>) -> PackageRequest {
    PackageRequest {
        url: s.url.clone(),
        token: token.map(Secret::new),
        size: Some(s.size),
        sha256: Some(s.sha256.to_uppercase()),
        version: "2.0".into(),
        deadline: SystemTime::now() + Duration::from_secs(600),
    }
}

fn sha256_file(p: &Path) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(std::fs::read(p).unwrap()))
}

/// A failure ends with the right code and description and leaves nothing.
/// The result code and description a job reports for `e` (`ota::verdict`).
fn report(e: &DownloadError) -> (u8, String) {
    let v = verdict(Failure::Download(e));
    (v.code.get(), v.description)
}

async fn assert_failed_clean(env: &Env, e: &DownloadError, code: u8, description: &str) {
    let (got, words) = report(e);
    assert_eq!(got, code, "{e}");
    assert!(words.starts_with(description), "{e}: {words}");
    assert_eq!(env.files(), Vec::<String>::new(), "{e}");
    assert_eq!(env.journal_rows().await, 0, "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cuts_at_random_offsets_resume_exactly_where_each_stopped() {
    let env = Env::new().await;
    let size = 3 * MIB + 12345;
    let s = env.add("p1", size, Access::Bearer);
    let token = env.server.issue_token(Duration::from_secs(3600));
    let mut rng = rand::rngs::StdRng::seed_from_u64(20261127);
    let mut cuts: Vec<u64> = (0..25).map(|_| rng.random_range(1..size)).collect();
    cuts.sort();
    cuts.dedup();
    env.server.set_faults(Faults {
        cut_at: cuts.iter().copied().collect(),
        ..Faults::default()
    });

    let store = env.store().await;
    let p = store
        .acquire("job1", &request(&s, Some(&token)))
        .await
        .ready()
        .await
        .unwrap();
    assert_eq!(p.size, size);
    assert_eq!(p.sha256, s.sha256);
    assert_eq!(p.version, "2.0");
    assert_eq!(sha256_file(&p.path), s.sha256);
    assert_eq!(p.path, env.packages().join(&s.sha256));

    let reqs = env.server.requests();
    assert_eq!(reqs.len(), cuts.len() + 1, "{reqs:?}");
    assert_eq!(reqs[0].range_start, None);
    for (i, r) in reqs.iter().enumerate().skip(1) {
        // Each resume starts at the byte where the previous response was cut.
        assert_eq!(r.range_start, Some(cuts[i - 1]), "request {i}: {reqs:?}");
        assert_eq!(r.status, 206);
        assert_eq!(
            r.if_range.as_deref(),
            Some(format!("\"{}\"", &s.sha256[..16]).as_str())
        );
    }
    // Not one byte was fetched twice.
    assert_eq!(env.server.bytes_served(), size);
    assert_eq!(env.files(), vec![s.sha256.clone()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_jobs_of_the_same_package_share_one_download() {
    let env = Env::new().await;
    let s = env.add("p1", 2 * MIB, Access::Bearer);
    let token = env.server.issue_token(Duration::from_secs(3600));
    env.server.set_faults(Faults {
        throttle: Some(8 * MIB),
        ..Faults::default()
    });
    let store = env.store().await;
    let a = store.acquire("child-a", &request(&s, Some(&token))).await;
    // The second job's event carries the sign in another case.
    let mut r2 = request(&s, Some(&token));
    r2.sha256 = Some(s.sha256.to_lowercase());
    let b = store.acquire("child-b", &r2).await;
    assert_eq!(a.key(), b.key());
    let (pa, pb) = tokio::join!(a.ready(), b.ready());
    let (pa, pb) = (pa.unwrap(), pb.unwrap());
    assert_eq!(pa.path, pb.path);
    assert_eq!(
        env.server.requests().len(),
        1,
        "{:?}",
        env.server.requests()
    );
    // A third job after the download finished reads the same file.
    let pc = store
        .acquire("child-c", &request(&s, Some(&token)))
        .await
        .ready()
        .await
        .unwrap();
    assert_eq!(pc.path, pa.path);
    assert_eq!(env.server.requests().len(), 1);

    store.release("child-a", &s.sha256).await;
    store.release("child-c", &s.sha256).await;
    assert!(pa.path.exists(), "child-b still needs it");
    store.release("child-b", &s.sha256).await;
    assert!(!pa.path.exists());
    assert_eq!(env.journal_rows().await, 0);
    assert!(store.claims().await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_ignores_range_still_delivers_the_whole_package() {
    let env = Env::new().await;
    let size = MIB + 7;
    let s = env.add("p1", size, Access::Open);
    env.server.set_faults(Faults {
        ignore_range: true,
        cut_at: [size / 3, size / 2].into_iter().collect(),
        ..Faults::default()
    });
    let p = env
        .store()
        .await
        .acquire("j", &request(&s, None))
        .await
        .ready()
        .await
        .unwrap();
    assert_eq!(sha256_file(&p.path), s.sha256);
    let reqs = env.server.requests();
    assert_eq!(reqs.len(), 3, "{reqs:?}");
    assert_eq!(reqs[1].range_start, Some(size / 3));
    assert_eq!(
        reqs[1].status, 200,
        "the server answered the range with the whole body"
    );
    // The whole body came again from byte 0 and was cut at size / 2.
    assert_eq!(reqs[2].range_start, Some(size / 2));
    assert_eq!(env.files(), vec![s.sha256.clone()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_declared_length_that_disagrees_with_file_size_is_refused() {
    let env = Env::new().await;
    let s = env.add("p1", MIB, Access::Open);
    env.server.set_faults(Faults {
        declared_size: Some(MIB + 1),
        ..Faults::default()
    });
    let e = env
        .store()
        .await
        .acquire("j", &request(&s, None))
        .await
        .ready()
        .await
        .unwrap_err();
    assert!(matches!(e, DownloadError::LengthMismatch { .. }), "{e}");
    assert_failed_clean(&env, &e, 7, result::DESC_INTEGRITY).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_bytes_than_file_size_stops_the_download() {
    let env = Env::new().await;
    let s = env.add("p1", MIB, Access::Open);
    // No Content-Length: the only way to notice is to count.
    env.server.set_faults(Faults {
        no_length: true,
        ..Faults::default()
    });
    let mut req = request(&s, None);
    req.size = Some(MIB - 100);
    let e = env
        .store()
        .await
        .acquire("j", &req)
        .await
        .ready()
        .await
        .unwrap_err();
    assert!(matches!(e, DownloadError::LengthMismatch { .. }), "{e}");
    assert_failed_clean(&env, &e, 7, result::DESC_INTEGRITY).await;
    assert!(env.server.bytes_served() <= MIB, "it stopped reading");
    // A permanent failure: one request, no retry after the overrun.
    assert_eq!(env.server.requests().len(), 1);
    assert!(e.to_string().contains("more than"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_sign_or_corrupted_bytes_fail_the_integrity_check() {
    let env = Env::new().await;
    let s = env.add("p1", MIB, Access::Open);
    let mut req = request(&s, None);
    req.sha256 = Some("ab".repeat(32));
    let e = env
        .store()
        .await
        .acquire("j", &req)
        .await
        .ready()
        .await
        .unwrap_err();
    assert_eq!(report(&e).1, result::DESC_INTEGRITY);
    assert_failed_clean(&env, &e, 7, result::DESC_INTEGRITY).await;

    env.server.set_faults(Faults {
        corrupt_at: Some(4242),
        ..Faults::default()
    });
    let e = env
        .store()
        .await
        .acquire("j", &request(&s, None))
        .await
        .ready()
        .await
        .unwrap_err();
    assert!(matches!(e, DownloadError::Integrity { .. }), "{e}");
    assert_failed_clean(&env, &e, 7, result::DESC_INTEGRITY).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_token_fails_with_code_6_after_a_few_tries() {
    let env = Env::new().await;
    let s = env.add("p1", MIB, Access::Bearer);
    let token = env.server.issue_token(Duration::from_secs(3600));
    env.server.expire_tokens();
    let e = env
        .store()
        .await
        .acquire("j", &request(&s, Some(&token)))
        .await
        .ready()
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            DownloadError::TokenRejected {
                status: 403,
                attempts: 3
            }
        ),
        "{e}"
    );
    assert!(report(&e).1.contains("token"), "{}", report(&e).1);
    assert_failed_clean(&env, &e, 6, result::DESC_CONNECTION_LOST).await;
    let reqs = env.server.requests();
    assert_eq!(reqs.len(), 3);
    assert!(reqs.iter().all(|r| r.status == 403 && r.bytes == 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_that_expires_mid_download_fails_cleanly() {
    let env = Env::new().await;
    let size = 2 * MIB;
    let s = env.add("p1", size, Access::Bearer);
    let token = env.server.issue_token(Duration::from_secs(3600));
    // The body stalls at 1 MiB; the token expires meanwhile; the resume
    // after the read timeout is refused.
    env.server.set_faults(Faults {
        stall_at: Some(MIB),
        ..Faults::default()
    });
    let mut opts = fast();
    opts.read_timeout = Duration::from_secs(1);
    let store = env.store_with(&env.cfg(), opts).await;
    let wait = store.acquire("j", &request(&s, Some(&token))).await;
    let mut stalled = false;
    for _ in 0..2000 {
        if env
            .server
            .requests()
            .first()
            .is_some_and(|r| r.bytes == MIB)
        {
            stalled = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(stalled);
    env.server.expire_tokens();
    let e = wait.ready().await.unwrap_err();
    assert!(
        matches!(e, DownloadError::TokenRejected { status: 403, .. }),
        "{e}"
    );
    assert_failed_clean(&env, &e, 6, result::DESC_CONNECTION_LOST).await;
    let reqs = env.server.requests();
    assert_eq!(reqs.len(), 4, "{reqs:?}");
    assert!(
        reqs[1..]
            .iter()
            .all(|r| r.status == 403 && r.range_start == Some(MIB)),
        "{reqs:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_file_size_is_refused_before_any_byte() {
    let env = Env::new().await;
    let s = env.add("p1", MIB, Access::Open);
    let mut req = request(&s, None);
    req.size = Some(64 * MIB + 1);
    let e = env
        .store()
        .await
        .acquire("j", &req)
        .await
        .ready()
        .await
        .unwrap_err();
    assert!(matches!(e, DownloadError::TooLargeForConfig { .. }), "{e}");
    assert_failed_clean(&env, &e, 5, result::DESC_NO_STORAGE).await;

    // Within the configured limit but beyond the free disk space.
    let mut cfg = env.cfg();
    cfg.max_package_bytes = u64::MAX;
    req.size = Some(u64::MAX / 2);
    let e = env
        .store_with(&cfg, fast())
        .await
        .acquire("j", &req)
        .await
        .ready()
        .await
        .unwrap_err();
    assert!(matches!(e, DownloadError::NoSpace { .. }), "{e}");
    assert_failed_clean(&env, &e, 5, result::DESC_NO_STORAGE).await;
    assert!(env.server.requests().is_empty(), "nothing was fetched");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_url_is_refused_unless_allowed() {
    let env = Env::with_server(PackageServer::start_plain().await.unwrap());
    let s = env.add("p1", 100_000, Access::Open);
    assert!(s.url.starts_with("http://"));
    let e = env
        .store()
        .await
        .acquire("j", &request(&s, None))
        .await
        .ready()
        .await
        .unwrap_err();
    assert!(matches!(e, DownloadError::InvalidUrl(_)), "{e}");
    assert_failed_clean(&env, &e, 255, result::DESC_INVALID_URI).await;
    assert!(env.server.requests().is_empty());

    let mut cfg = env.cfg();
    cfg.allow_http = true;
    let p = env
        .store_with(&cfg, fast())
        .await
        .acquire("j", &request(&s, None))
        .await
        .ready()
        .await
        .unwrap();
    assert_eq!(sha256_file(&p.path), s.sha256);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_body_resumes_after_the_read_timeout() {
    let env = Env::new().await;
    let size = MIB;
    let s = env.add("p1", size, Access::Open);
    env.server.set_faults(Faults {
        stall_at: Some(300_000),
        ..Faults::default()
    });
    let mut opts = fast();
    opts.read_timeout = Duration::from_secs(1);
    let p = env
        .store_with(&env.cfg(), opts)
        .await
        .acquire("j", &request(&s, None))
        .await
        .ready()
        .await
        .unwrap();
    assert_eq!(sha256_file(&p.path), s.sha256);
    let reqs = env.server.requests();
    assert_eq!(reqs.len(), 2, "{reqs:?}");
    assert_eq!(reqs[1].range_start, Some(300_000));
    assert_eq!(env.server.bytes_served(), size);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_past_the_deadline_end_with_code_6() {
    let env = Env::new().await;
    let s = env.add("p1", MIB, Access::Open);
    env.server.set_faults(Faults {
        status: Some(503),
        ..Faults::default()
    });
    // One fixed 1 s delay between attempts and a deadline 3.5 s away: the
    // second 503 comes 1 s after the first, and the retry policy gives up
    // as soon as its next delay would end after the deadline. The first
    // answer only has to arrive within 2.5 s, even on a loaded machine.
    let mut req = request(&s, None);
    req.deadline = SystemTime::now() + Duration::from_millis(3500);
    let mut opts = fast();
    opts.retry.backoff_min = Duration::from_secs(1);
    opts.retry.backoff_max = Duration::from_secs(1);
    let e = env
        .store_with(&env.cfg(), opts)
        .await
        .acquire("j", &req)
        .await
        .ready()
        .await
        .unwrap_err();
    assert!(matches!(e, DownloadError::Timeout { .. }), "{e}");
    assert!(e.to_string().contains("HTTP 503"), "{e}");
    assert_failed_clean(&env, &e, 6, result::DESC_CONNECTION_LOST).await;
    assert!(env.server.requests().len() >= 2, "it retried");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_are_always_verified_and_only_the_name_check_is_optional() {
    // The certificate names a host, the URL an IP address (IoTDA v1).
    let env = Env::with_server(PackageServer::start(&["iotda.example"]).await.unwrap());
    let s = env.add("p1", 100_000, Access::Open);
    let e = env
        .store()
        .await
        .acquire("j", &request(&s, None))
        .await
        .ready()
        .await
        .unwrap_err();
    assert!(matches!(e, DownloadError::Certificate(_)), "{e}");
    assert_eq!(report(&e).0, 6);
    assert_eq!(env.server.requests().len(), 0);

    let mut cfg = env.cfg();
    cfg.verify_hostname = false;
    let p = env
        .store_with(&cfg, fast())
        .await
        .acquire("j", &request(&s, None))
        .await
        .ready()
        .await
        .unwrap();
    assert_eq!(sha256_file(&p.path), s.sha256);

    // Without the right CA the chain fails, name check or not.
    let other = otabridge::sim::platform::TestPki::new(&["127.0.0.1"]).unwrap();
    let other_ca = env.dir.path().join("other.pem");
    std::fs::write(&other_ca, &other.ca_pem).unwrap();
    cfg.ca_file = Some(other_ca);
    let s2 = env.add("p2", 1000, Access::Open);
    let e = env
        .store_with(&cfg, fast())
        .await
        .acquire("j2", &request(&s2, None))
        .await
        .ready()
        .await
        .unwrap_err();
    assert!(matches!(e, DownloadError::Certificate(_)), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_crash_the_part_is_truncated_to_the_journaled_length() {
    let env = Env::new().await;
    let size = MIB;
    let s = env.add("p1", size, Access::Open);
    let journaled = 300_000u64;
    std::fs::create_dir_all(env.packages()).unwrap();
    // The file holds the journaled prefix plus bytes that never made it to
    // the journal (they may be garbage after a power cut).
    let mut content = vec![0u8; journaled as usize + 5000];
    otabridge::sim::package_server::generate(size ^ 0x5eed, 0, &mut content[..journaled as usize]);
    content[journaled as usize..].fill(0xee);
    std::fs::write(env.packages().join(format!("{}.part", s.sha256)), &content).unwrap();
    env.sql(format!(
        "INSERT INTO packages (key, size, durable_len, validator, verified, updated_unix)
             VALUES ('{k}', {size}, {journaled}, '\"{v}\"', 0, 0);
             INSERT INTO package_claims (key, job) VALUES ('{k}', 'j');",
        k = s.sha256,
        v = &s.sha256[..16]
    ))
    .await;
    let store = env.store().await;
    assert_eq!(
        store.claims().await.unwrap(),
        vec![(s.sha256.clone(), "j".to_owned())]
    );
    let p = store
        .acquire("j", &request(&s, None))
        .await
        .ready()
        .await
        .unwrap();
    assert_eq!(sha256_file(&p.path), s.sha256);
    let reqs = env.server.requests();
    assert_eq!(reqs.len(), 1);
    assert_eq!(reqs[0].range_start, Some(journaled));
    assert_eq!(env.server.bytes_served(), size - journaled);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_complete_but_unverified_part_is_checked_with_one_416() {
    // Killed after the last checkpoint but before the rename: every byte is
    // journaled; the resume asks for bytes=size-, gets 416, and verifies.
    let env = Env::new().await;
    let size = 200_000u64;
    let s = env.add("p1", size, Access::Open);
    std::fs::create_dir_all(env.packages()).unwrap();
    let mut content = vec![0u8; size as usize];
    otabridge::sim::package_server::generate(size ^ 0x5eed, 0, &mut content);
    std::fs::write(env.packages().join(format!("{}.part", s.sha256)), &content).unwrap();
    env.sql(format!(
        "INSERT INTO packages (key, size, durable_len, verified, updated_unix)
             VALUES ('{k}', {size}, {size}, 0, 0);
             INSERT INTO package_claims (key, job) VALUES ('{k}', 'j');",
        k = s.sha256
    ))
    .await;
    let wait = env.store().await.acquire("j", &request(&s, None)).await;
    let progress = wait.progress();
    let p = wait.ready().await.unwrap();
    assert_eq!(sha256_file(&p.path), s.sha256);
    assert!(matches!(&*progress.borrow(), otabridge::package::DownloadState::Ready(q) if *q == p));
    let reqs = env.server.requests();
    assert_eq!(reqs.len(), 1, "{reqs:?}");
    assert_eq!(
        (reqs[0].range_start, reqs[0].status, reqs[0].bytes),
        (Some(size), 416, 0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opening_the_store_removes_packages_no_job_claims() {
    let env = Env::new().await;
    let s = env.add("p1", 1000, Access::Open);
    let store = env.store().await;
    store
        .acquire("j", &request(&s, None))
        .await
        .ready()
        .await
        .unwrap();
    std::fs::write(
        env.packages().join(format!("{}.part", "cd".repeat(32))),
        b"x",
    )
    .unwrap();
    drop(store);
    // Still claimed by "j": kept; the stray .part is removed.
    env.store().await;
    assert_eq!(env.files(), vec![s.sha256.clone()]);
    env.sql("DELETE FROM package_claims".into()).await;
    env.store().await;
    assert!(env.files().is_empty());
    assert_eq!(env.journal_rows().await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn releasing_the_last_claim_mid_download_cancels_and_removes_it() {
    let env = Env::new().await;
    let s = env.add("p1", 4 * MIB, Access::Open);
    env.server.set_faults(Faults {
        stall_at: Some(MIB),
        ..Faults::default()
    });
    let store = env.store().await;
    let wait = store.acquire("j", &request(&s, None)).await;
    let mut progress = wait.progress();
    let mut got = 0;
    for _ in 0..2000 {
        if let otabridge::package::DownloadState::Downloading { received, .. } =
            *progress.borrow_and_update()
        {
            got = received;
        }
        if got >= MIB {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(got, MIB);
    store.release("j", &s.sha256).await;
    assert_eq!(wait.ready().await.unwrap_err(), DownloadError::Cancelled);
    assert!(env.files().is_empty(), "{:?}", env.files());
    assert_eq!(env.journal_rows().await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn packages_are_served_from_files_too() {
    let env = Env::new().await;
    let file = env.dir.path().join("firmware.bin");
    let mut content = vec![0u8; 700_001];
    otabridge::sim::package_server::generate(99, 0, &mut content);
    std::fs::write(&file, &content).unwrap();
    let s = env
        .server
        .add("f1", Source::File(file), Access::Open)
        .unwrap();
    assert_eq!(s.size, 700_001);
    env.server.set_faults(Faults {
        cut_at: [123_456].into_iter().collect(),
        ..Faults::default()
    });
    let p = env
        .store()
        .await
        .acquire("j", &request(&s, None))
        .await
        .ready()
        .await
        .unwrap();
    assert_eq!(std::fs::read(&p.path).unwrap(), content);
}

// ---- the real binary -------------------------------------------------------

fn write_config(env: &Env) -> PathBuf {
    let cfg = env.dir.path().join("otabridge.toml");
    std::fs::write(
        &cfg,
        format!(
            "[platform]\nurl = \"mqtts://127.0.0.1:8883\"\ndevice_id = \"gw_1\"\nsecret = \"s\"\n\n\
             [state]\ndir = \"{}\"\n\n[download]\nca_file = \"{}\"\nmax_package_bytes = {}\n",
            env.dir.path().join("state").display(),
            env.ca.display(),
            64 * MIB
        ),
    )
    .unwrap();
    cfg
}

fn durable_len(state: &Path, key: &str) -> Option<u64> {
    let mut j = Journal::open_read_only(state).ok()?;
    j.connection()
        .query_row(
            "SELECT durable_len FROM packages WHERE key = ?1",
            [key],
            |r| r.get::<_, i64>(0),
        )
        .ok()
        .map(|v| v as u64)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_download_command_resumes_from_the_journaled_length() {
    let env = Env::new().await;
    let size = 6 * MIB;
    let s = env.add("p1", size, Access::Bearer);
    let token = env.server.issue_token(Duration::from_secs(3600));
    // Slow enough that the kill lands mid-transfer, after a checkpoint.
    env.server.set_faults(Faults {
        throttle: Some(MIB),
        ..Faults::default()
    });
    let cfg = write_config(&env);
    let args = |c: &mut Command| {
        c.arg("download")
            .arg("--config")
            .arg(&cfg)
            .arg(&s.url)
            .args([
                "--token",
                &token,
                "--sha256",
                &s.sha256,
                "--size",
                &size.to_string(),
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
    };
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_otabridge"));
    args(&mut cmd);
    let mut child = cmd.spawn().unwrap();
    let state = env.dir.path().join("state");
    let mut seen = None;
    for _ in 0..1200 {
        if let Some(n) = durable_len(&state, &s.sha256).filter(|&n| n > 0) {
            seen = Some(n);
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(seen.is_some(), "no checkpoint was journaled");
    child.kill().unwrap(); // SIGKILL
    let _ = child.wait().unwrap();
    let journaled = durable_len(&state, &s.sha256).unwrap();
    assert!(journaled > 0 && journaled < size, "{journaled}");
    let served_before = env.server.bytes_served();
    assert!(served_before >= journaled);

    env.server.set_faults(Faults::default());
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_otabridge"));
    args(&mut cmd);
    let out = cmd.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains(&format!("resumed at byte {journaled}")),
        "{stdout}"
    );
    assert!(stdout.contains(&s.sha256), "{stdout}");
    let reqs = env.server.requests();
    let last = reqs.last().unwrap();
    assert_eq!(last.range_start, Some(journaled), "{reqs:?}");
    assert_eq!(last.bytes, size - journaled);
    // The command checks and does not keep: the store is empty again.
    assert!(env.files().is_empty(), "{:?}", env.files());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_download_command_exits_with_the_reason() {
    let env = Env::new().await;
    let s = env.add("p1", 200_000, Access::Open);
    let cfg = write_config(&env);
    let run = |extra: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_otabridge"))
            .arg("download")
            .arg("--config")
            .arg(&cfg)
            .args(extra)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, err) = run(&[&s.url, "--sha256", "xyz"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("--sha256"), "{err}");
    let plain = s.url.replacen("https://", "http://", 1);
    let (code, err) = run(&[&plain]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("allow_http"), "{err}");
    let wrong = "0".repeat(64);
    let (code, err) = run(&[&s.url, "--sha256", &wrong]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("result_code 7"), "{err}");
    assert!(err.contains(result::DESC_INTEGRITY), "{err}");
    let (code, err) = run(&[&s.url, "--sha256", &s.sha256, "--size", "200000"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        env.files().is_empty(),
        "checked, not kept: {:?}",
        env.files()
    );
    // --output keeps the verified package there, like curl -o, and leaves
    // the store empty; a directory that does not exist is refused before
    // any byte is fetched.
    let served = env.server.bytes_served();
    let nowhere = env.dir.path().join("no/such/dir/fw.bin");
    let (code, err) = run(&[&s.url, "--output", nowhere.to_str().unwrap()]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("--output") && err.contains("no/such/dir"),
        "{err}"
    );
    let (code, err) = run(&[&s.url, "-o", env.dir.path().to_str().unwrap()]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("is a directory"), "{err}");
    assert_eq!(
        env.server.bytes_served(),
        served,
        "refused before the download"
    );
    let kept = env.dir.path().join("fw.bin");
    let (code, err) = run(&[&s.url, "--sha256", &s.sha256, "-o", kept.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(sha256_file(&kept), s.sha256);
    assert!(
        env.files().is_empty(),
        "moved out of the store: {:?}",
        env.files()
    );
    // A place the package cannot be put (/proc takes no files): the run
    // fails with the reason and the verified package stays in the store,
    // so the next run only moves it, across file systems by a copy.
    let (code, err) = run(&[
        &s.url,
        "--sha256",
        &s.sha256,
        "-o",
        "/proc/otabridge-test.bin",
    ]);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("--output /proc/otabridge-test.bin: cannot"),
        "{err}"
    );
    assert_eq!(env.files().len(), 1, "{:?}", env.files());
    let served = env.server.bytes_served();
    let shm = Path::new("/dev/shm");
    let other_fs = if shm.is_dir() { shm } else { env.dir.path() };
    let copy = other_fs.join(format!("otabridge-test-{}.bin", std::process::id()));
    let (code, err) = run(&[&s.url, "--sha256", &s.sha256, "-o", copy.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(sha256_file(&copy), s.sha256);
    let _ = std::fs::remove_file(&copy);
    assert_eq!(env.server.bytes_served(), served, "not fetched again");
    assert!(env.files().is_empty(), "{:?}", env.files());
    let missing = std::fs::write(env.dir.path().join("bad.toml"), "nope");
    missing.unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_otabridge"))
        .args(["download", "--config"])
        .arg(env.dir.path().join("bad.toml"))
        .arg(&s.url)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirects_are_followed_and_resumes_start_at_the_package_url() {
    let env = Env::new().await;
    let size = MIB + 3;
    let s = env.add("real", size, Access::Bearer);
    // Absolute, then a relative reference (resolved against /packages/hop).
    let hop = env.server.add_redirect("hop", 307, "real");
    let first = env.server.add_redirect("first", 302, &hop);
    env.server.set_faults(Faults {
        cut_at: [size / 2].into_iter().collect(),
        ..Faults::default()
    });
    let token = env.server.issue_token(Duration::from_secs(600));
    let mut req = request(&s, Some(&token));
    req.url = first;
    let p = env
        .store()
        .await
        .acquire("j", &req)
        .await
        .ready()
        .await
        .unwrap();
    assert_eq!(sha256_file(&p.path), s.sha256);
    let seen: Vec<(String, u16, Option<u64>, bool)> = env
        .server
        .requests()
        .into_iter()
        .map(|r| (r.package, r.status, r.range_start, r.authorized))
        .collect();
    let t = true;
    assert_eq!(
        seen,
        vec![
            ("first".into(), 302, None, t),
            ("hop".into(), 307, None, t),
            ("real".into(), 200, None, t),
            // The cut: the next attempt starts at the package URL again,
            // with Range, and the token still goes along (same origin).
            ("first".into(), 302, Some(size / 2), t),
            ("hop".into(), 307, Some(size / 2), t),
            ("real".into(), 206, Some(size / 2), t),
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_does_not_follow_a_redirect_to_another_origin() {
    let env = Env::new().await;
    let cdn = PackageServer::start(&["127.0.0.1"]).await.unwrap();
    // One trust file for both servers.
    std::fs::write(&env.ca, format!("{}{}", env.server.ca_pem(), cdn.ca_pem())).unwrap();
    let s = cdn
        .add(
            "signed",
            Source::Generated {
                len: 300_000,
                seed: 9,
            },
            Access::Open,
        )
        .unwrap();
    let url = env.server.add_redirect("p1", 302, &s.url);
    let token = env.server.issue_token(Duration::from_secs(600));
    let mut req = request(&s, Some(&token));
    req.url = url;
    let p = env
        .store()
        .await
        .acquire("j", &req)
        .await
        .ready()
        .await
        .unwrap();
    assert_eq!(sha256_file(&p.path), s.sha256);
    assert!(env.server.requests()[0].authorized);
    let at_cdn = cdn.requests();
    assert_eq!(at_cdn.len(), 1);
    assert!(
        !at_cdn[0].authorized,
        "the Bearer token leaked to another origin"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loops_downgrades_and_bad_locations_are_refused_with_code_6() {
    let env = Env::new().await;
    let s = env.add("p1", 100_000, Access::Open);
    let a = env.server.url("a");
    let b = env.server.add_redirect("b", 301, &a);
    env.server.add_redirect("a", 308, &b);
    let mut req = request(&s, None);
    req.url = a;
    let e = env
        .store()
        .await
        .acquire("j", &req)
        .await
        .ready()
        .await
        .unwrap_err();
    assert!(matches!(e, DownloadError::Redirect(_)), "{e}");
    assert!(e.to_string().contains("more than 5 redirects"), "{e}");
    assert_failed_clean(&env, &e, 6, result::DESC_CONNECTION_LOST).await;
    // 1 request + 5 followed redirects, then it stops.
    assert_eq!(env.server.requests().len(), 6);

    let plain = PackageServer::start_plain().await.unwrap();
    let target = plain
        .add("p1", Source::Generated { len: 10, seed: 1 }, Access::Open)
        .unwrap();
    for (id, location, why) in [
        ("down", target.url.as_str(), "http:// is refused"),
        ("nowhere", "ftp://example.invalid/fw.bin", "only https://"),
    ] {
        let mut req = request(&s, None);
        req.url = env.server.add_redirect(id, 302, location);
        let e = env
            .store()
            .await
            .acquire("j", &req)
            .await
            .ready()
            .await
            .unwrap_err();
        assert!(
            matches!(e, DownloadError::Redirect(_)),
            "{e} {:?}",
            env.server.requests()
        );
        assert!(e.to_string().contains(why), "{e}");
        assert_failed_clean(&env, &e, 6, result::DESC_CONNECTION_LOST).await;
    }
    assert!(plain.requests().is_empty());
}
