//! `TestS3`: a real S3-compatible server (`s3s-fs`, installed by `ops/install-deps.sh`) on a
//! free loopback port, its buckets folders in a temp dir, with SigV4 authentication on.

use std::process::{Child, Command, Stdio};

use crate::etcd::free_port;
use crate::process::kill;
use crate::wait::wait_until;
use crate::WAIT;

/// The bucket every test server has.
pub const BUCKET: &str = "chat";
pub const ACCESS_KEY: &str = "test-access-key";
pub const SECRET_KEY: &str = "test-secret-key-0123456789";

pub struct TestS3 {
    child: Option<Child>,
    /// `http://127.0.0.1:<port>`
    pub endpoint: String,
    pub dir: tempfile::TempDir,
}

impl TestS3 {
    pub fn start() -> TestS3 {
        // As with etcd: a probed free port can be taken before the server binds it.
        for _ in 0..5 {
            let dir = tempfile::tempdir().expect("temp dir");
            std::fs::create_dir_all(dir.path().join("root").join(BUCKET)).expect("bucket");
            let port = free_port();
            let log = std::fs::File::create(dir.path().join("s3.log")).expect("log");
            let child = Command::new("s3s-fs")
                .args(["--host", "127.0.0.1", "--port", &port.to_string()])
                .args(["--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY])
                .arg(dir.path().join("root"))
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("log"))
                .stderr(log)
                .spawn()
                .expect("spawn s3s-fs (install it: ops/install-deps.sh)");
            let mut s3 = TestS3 {
                child: Some(child),
                endpoint: format!("http://127.0.0.1:{port}"),
                dir,
            };
            // Some(true): accepting; Some(false): exited (port taken).
            let up = wait_until("s3s-fs to accept connections", WAIT, || {
                if let Some(Ok(Some(_))) = s3.child.as_mut().map(|c| c.try_wait()) {
                    return Some(false);
                }
                std::net::TcpStream::connect(("127.0.0.1", port))
                    .is_ok()
                    .then_some(true)
            })
            .unwrap_or_else(|e| panic!("{e}: {}", s3.log()));
            if up {
                return s3;
            }
            s3.child = None;
        }
        panic!("s3s-fs did not start on any of 5 ports");
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("s3.log")).unwrap_or_default()
    }

    /// The files of the bucket (a blob is one file named by its key).
    pub fn bucket_dir(&self) -> std::path::PathBuf {
        self.dir.path().join("root").join(BUCKET)
    }

    /// A node's `CHAT_NODE_MEDIA__*` settings for this store, keys under `prefix`.
    pub fn node_env(&self, prefix: &str) -> Vec<(String, String)> {
        let o = self.options(prefix);
        [
            ("BACKEND", "s3".to_string()),
            ("S3__ENDPOINT", o.endpoint),
            ("S3__REGION", o.region),
            ("S3__BUCKET", o.bucket),
            ("S3__ACCESS_KEY_ID", o.access_key_id),
            ("S3__SECRET_ACCESS_KEY", o.secret_access_key),
            ("S3__PREFIX", o.prefix),
        ]
        .into_iter()
        .map(|(k, v)| (format!("CHAT_NODE_MEDIA__{k}"), v))
        .collect()
    }

    pub fn options(&self, prefix: &str) -> chat_media::S3Options {
        chat_media::S3Options {
            endpoint: self.endpoint.clone(),
            region: "us-east-1".into(),
            bucket: BUCKET.into(),
            access_key_id: ACCESS_KEY.into(),
            secret_access_key: SECRET_KEY.into(),
            path_style: true,
            prefix: prefix.into(),
        }
    }
}

impl Drop for TestS3 {
    fn drop(&mut self) {
        kill(&mut self.child);
    }
}
