//! `hangup serve --config FILE` (SPEC §5): TOML keys are the flags' long names; an
//! unknown key or a bad value is named with the file; a flag on the command line wins
//! over the file.
#![cfg(target_os = "linux")]

mod common;

use std::path::PathBuf;

use common::{run_hangup, LineClient, TempDir, TestServer};

/// A config file in its own temp dir, with a data dir next to it.
struct Config {
    dir: TempDir,
}

impl Config {
    fn new(body: &str) -> Self {
        let dir = TempDir::new("config");
        let data = dir.path().join("data");
        let text = format!(
            "listen = \"127.0.0.1:0\"\ndata-dir = {:?}\n{body}",
            data.to_str().unwrap()
        );
        std::fs::write(dir.path().join("hangup.toml"), text).unwrap();
        Self { dir }
    }

    fn path(&self) -> PathBuf {
        self.dir.path().join("hangup.toml")
    }

    fn arg(&self) -> String {
        self.path().to_str().unwrap().to_owned()
    }

    /// `hangup serve --config FILE <extra>`, expected to fail: its stderr.
    fn refused(&self, extra: &[&str]) -> String {
        let mut args = vec!["serve".to_owned(), "--config".to_owned(), self.arg()];
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let output = run_hangup(&args);
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        assert!(!output.status.success(), "it started: {stderr}");
        assert!(
            stderr.contains(&self.arg()),
            "the file is not named: {stderr}"
        );
        stderr
    }
}

#[test]
fn file_keys_set_the_flags() {
    let config = Config::new(
        "dead-after = \"2s\"\nadmin = \"off\"\nworkers = 1\nmax-connections = 7\n\
         on-half-close = \"cancel\"\n",
    );
    let server = TestServer::start_exact(&["--config", &config.arg()]);
    let mut server = server;
    let listening = server
        .wait_event(|e| e["event"] == "listening", common::PATIENCE)
        .unwrap();
    assert_eq!(listening["dead_after_ms"], 2000, "{listening}");
    assert_eq!(listening["workers"], 1, "{listening}");
    assert_eq!(listening["admin"], "", "admin = \"off\": {listening}");
    assert_eq!(listening["on_half_close"], "cancel", "{listening}");
    assert_eq!(server.admin_addr(), None);
    let mut client = LineClient::connect(server.addr());
    client.assert_alive("configured");
    // The data dir from the file is the one in use.
    assert!(config.dir.path().join("data").is_dir());
}

#[test]
fn a_command_line_flag_overrides_the_file() {
    let config = Config::new("dead-after = \"2s\"\nadmin = \"off\"\nworkers = 1\n");
    let mut server = TestServer::start_exact(&[
        "--config",
        &config.arg(),
        "--dead-after",
        "3s",
        "--workers",
        "2",
    ]);
    let listening = server
        .wait_event(|e| e["event"] == "listening", common::PATIENCE)
        .unwrap();
    assert_eq!(listening["dead_after_ms"], 3000, "{listening}");
    assert_eq!(listening["workers"], 2, "{listening}");
    assert_eq!(listening["admin"], "", "{listening}");

    // `--config=FILE` is the same, and the flag may come before it.
    let mut server = TestServer::start_exact(&[
        "--admin",
        "127.0.0.1:0",
        &format!("--config={}", config.arg()),
    ]);
    let listening = server
        .wait_event(|e| e["event"] == "listening", common::PATIENCE)
        .unwrap();
    assert_eq!(listening["dead_after_ms"], 2000, "{listening}");
    assert!(server.admin_addr().is_some(), "{listening}");
    assert_eq!(server.admin_get("/healthz").status, 200);
}

#[test]
fn an_unknown_key_is_named_with_the_allowed_keys() {
    let config = Config::new("dead_after = \"2s\"\n");
    let stderr = config.refused(&[]);
    assert!(stderr.contains("`dead_after`"), "{stderr}");
    for allowed in ["dead-after", "listen", "admin", "workers", "drain-timeout"] {
        assert!(stderr.contains(allowed), "`{allowed}` not listed: {stderr}");
    }
}

#[test]
fn a_bad_value_names_the_key() {
    for (body, key, needle) in [
        ("dead-after = \"soon\"\n", "dead-after", "soon"),
        ("workers = \"many\"\n", "workers", "many"),
        ("admin = \"nowhere\"\n", "admin", "nowhere"),
        ("insecure = \"yes\"\n", "insecure", "insecure = true"),
        ("workers = [1, 2]\n", "workers", "array"),
    ] {
        let config = Config::new(body);
        let stderr = config.refused(&[]);
        assert!(stderr.contains(&format!("`{key}`")), "{body}: {stderr}");
        assert!(stderr.contains(needle), "{body}: no `{needle}` in {stderr}");
    }
}

#[test]
fn a_broken_or_missing_file_is_named() {
    let config = Config::new("dead-after = \n");
    let stderr = config.refused(&[]);
    assert!(stderr.contains("TOML"), "{stderr}");

    let config = Config::new("config = \"other.toml\"\n");
    let stderr = config.refused(&[]);
    assert!(stderr.contains("`config`"), "{stderr}");

    let missing = TempDir::new("no-config");
    let path = missing.path().join("absent.toml");
    let output = run_hangup(&["serve", "--config", path.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains("absent.toml"), "{stderr}");
}

#[test]
fn a_switch_in_the_file_works() {
    // `insecure = true` lets it listen beyond loopback without a secret.
    let config = Config::new("insecure = true\nadmin = \"off\"\n");
    let text = std::fs::read_to_string(config.path())
        .unwrap()
        .replace("127.0.0.1:0", "0.0.0.0:0");
    std::fs::write(config.path(), text).unwrap();
    let server = TestServer::start_exact(&["--config", &config.arg()]);
    let mut client = LineClient::connect(([127, 0, 0, 1], server.addr().port()).into());
    client.assert_alive("insecure-from-file");
}
