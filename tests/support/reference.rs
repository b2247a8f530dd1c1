//! The reference verifier: `tests/interop/asap_upstream.py`, an upstream that checks every
//! token with atlassian-jwt-auth, run from the virtualenv that `.ci/run` sets up.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

pub struct ReferenceUpstream {
    pub addr: SocketAddr,
    child: Child,
}

/// The interpreter with atlassian-jwt-auth installed: `ASAP_PROXY_PYTHON`, else `.venv`.
pub fn python() -> PathBuf {
    if let Some(python) = std::env::var_os("ASAP_PROXY_PYTHON") {
        return python.into();
    }
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python");
    assert!(
        venv.exists(),
        "the interop tests need the reference library: run `bash .ci/run`, or create .venv with \
         tests/interop/requirements.txt, or set ASAP_PROXY_PYTHON"
    );
    venv
}

impl ReferenceUpstream {
    /// Starts the verifier for `audience`, trusting each `(kid, public key PEM path)`.
    pub async fn start(
        audience: &str,
        keys: &[(String, PathBuf)],
        extra_args: &[&str],
    ) -> ReferenceUpstream {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop/asap_upstream.py");
        let mut command = Command::new(python());
        command
            .arg(script)
            .args(["--audience", audience, "--port", "0", "--host", "127.0.0.1"])
            .args(extra_args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        for (kid, path) in keys {
            command
                .arg("--key")
                .arg(format!("{kid}={}", path.display()));
        }
        let mut child = command.spawn().expect("start the reference upstream");
        let stdout = child.stdout.take().expect("piped stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .await
            .expect("read the listening line");
        let port: u16 = line
            .trim()
            .strip_prefix("listening ")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| {
                panic!("unexpected first line from the reference upstream: {line:?}")
            });
        ReferenceUpstream {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            child,
        }
    }
}

impl Drop for ReferenceUpstream {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}
