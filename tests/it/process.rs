//! hookbridge as its own process (`hookbridge serve --config FILE`), for what only a process
//! has: signals (SIGHUP, SIGTERM, SIGKILL), restarts on the same spool, several replicas.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::helpers::{Child, get, try_get};

/// One `hookbridge serve` process with its config file and log, restartable.
pub struct Replica {
    pub name: String,
    pub config: PathBuf,
    pub log: PathBuf,
    /// The main listener, `127.0.0.1:PORT`.
    pub listen: String,
    /// The admin listener, when the config has one.
    pub admin: Option<String>,
    child: Option<Child>,
}

impl Replica {
    /// Writes `config` to `dir/<name>.toml` (the caller's config must listen on `listen`).
    pub fn new(dir: &Path, name: &str, listen: &str, admin: Option<&str>, config: &str) -> Self {
        let path = dir.join(format!("{name}.toml"));
        std::fs::write(&path, config).unwrap();
        Self {
            name: name.to_owned(),
            config: path,
            log: dir.join(format!("{name}.log")),
            listen: listen.to_owned(),
            admin: admin.map(ToOwned::to_owned),
            child: None,
        }
    }

    /// Starts the process and waits until it accepts connections.
    pub async fn start(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_hookbridge"))
            .args(["serve", "--config"])
            .arg(&self.config)
            .env("RUST_LOG", "info")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(Child(child));
        let deadline = Instant::now() + Duration::from_secs(30);
        while tokio::net::TcpStream::connect(&self.listen).await.is_err() {
            assert!(
                Instant::now() < deadline,
                "{} did not start: {}",
                self.name,
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn pid(&self) -> String {
        self.child.as_ref().expect("running").0.id().to_string()
    }

    pub fn signal(&self, signal: &str) {
        let status = std::process::Command::new("kill")
            .args([&format!("-{signal}"), &self.pid()])
            .status()
            .unwrap();
        assert!(status.success(), "kill -{signal} {}", self.name);
    }

    /// SIGKILL, and reaps the process.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.0.kill().unwrap();
            c.0.wait().unwrap();
        }
    }

    /// SIGTERM, and waits for the process to exit; its exit status.
    pub async fn terminate(&mut self) -> std::process::ExitStatus {
        self.signal("TERM");
        let mut child = self.child.take().expect("running");
        tokio::task::spawn_blocking(move || child.0.wait().unwrap())
            .await
            .unwrap()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The admin listener's `/metrics`.
    pub async fn metrics(&self) -> String {
        let admin = self.admin.as_ref().expect("an admin listener");
        String::from_utf8(get(&format!("http://{admin}/metrics")).await.body.to_vec()).unwrap()
    }

    /// Waits until the admin listener's `/readyz` answers 200 (the sinks are connected).
    pub async fn wait_ready(&self) {
        let url = format!(
            "http://{}/readyz",
            self.admin.as_ref().expect("an admin listener")
        );
        let deadline = Instant::now() + Duration::from_secs(30);
        while try_get(&url).await.map(|r| r.status) != Some(200) {
            assert!(
                Instant::now() < deadline,
                "{} never ready: {}",
                self.name,
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.listen)
    }
}
