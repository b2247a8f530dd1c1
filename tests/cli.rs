//! The binary as users run it: subcommands, exit codes, and `run` serving real clients.

mod support;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use support::upstream::{self, MockUpstream};
use support::{decode_bearer, key};
use tokio::io::{AsyncBufReadExt, BufReader};

const BIN: &str = env!("CARGO_BIN_EXE_asap-proxy");
const EXIT_CONFIG: i32 = 78;

fn asap_proxy(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env("RUST_LOG", "info")
        .output()
        .expect("run asap-proxy")
}

fn write_config(dir: &Path, yaml: &str) -> String {
    let path = dir.join("proxy.yaml");
    std::fs::write(
        &path,
        yaml.replace("{keys}", &key("").display().to_string()),
    )
    .expect("write config");
    path.display().to_string()
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

const CONFIG: &str = "listen: 127.0.0.1:0\nasap:\n  issuer: cli\n  kid: cli/ec\n  algorithm: ES256\n  \
                      private_key_file: {keys}/ec-p256.pkcs8.pem\nroutes:\n  - host: api.test\n    audience: api\n";

#[test]
fn check_prints_the_route_table_without_secrets() {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("proxy.yaml.example");
    let output = asap_proxy(&["check", "-c", &example.display().to_string()]);

    assert!(output.status.success(), "{}", stderr(&output));
    let out = stdout(&output);
    assert!(out.contains("[0] httpbin.org (upstream over TLS)"), "{out}");
    assert!(
        out.contains("kid=asap-proxy-example/dev-only-ec-p256 alg=ES256"),
        "{out}"
    );
    let key = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/keys/dev-only-rsa.pem"),
    )
    .expect("example key");
    for line in key.lines() {
        assert!(!out.contains(line), "key material in check output");
    }
}

#[test]
fn bad_configuration_exits_78_with_one_located_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write_config(dir.path(), &CONFIG.replace("cli/ec", "someone-else/ec"));

    for command in ["run", "check", "public-key"] {
        let output = asap_proxy(&[command, "-c", &path]);
        assert_eq!(output.status.code(), Some(EXIT_CONFIG), "{command}");
        let err = stderr(&output);
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.contains("proxy.yaml:4:8: asap.kid:"), "{err}");
        assert!(!err.contains("panicked"), "{err}");
    }
}

#[test]
fn missing_file_is_a_configuration_error() {
    let output = asap_proxy(&["check", "-c", "/nonexistent/proxy.yaml"]);
    assert_eq!(output.status.code(), Some(EXIT_CONFIG));
    assert!(stderr(&output).contains("/nonexistent/proxy.yaml: cannot read the file"));
}

#[test]
fn token_prints_a_token_for_the_matching_route() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write_config(dir.path(), CONFIG);

    let output = asap_proxy(&["token", "-c", &path, "https://API.test/v1/items?q=1"]);
    assert!(output.status.success(), "{}", stderr(&output));
    let jwt = decode_bearer(&format!("Bearer {}", stdout(&output).trim()));
    assert_eq!(jwt.claims["aud"], "api");
    assert_eq!(jwt.header["kid"], "cli/ec");

    let unmatched = asap_proxy(&["token", "-c", &path, "https://other.test/"]);
    assert_eq!(unmatched.status.code(), Some(1));
    assert!(
        stderr(&unmatched).contains("no route matches https://other.test/"),
        "{}",
        stderr(&unmatched)
    );
}

#[test]
fn keygen_writes_a_private_key_only_its_owner_can_read() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().display().to_string();

    for (algorithm, kid) in [("ES384", "svc/ec-1"), ("PS256", "svc/rsa-1")] {
        let output = asap_proxy(&[
            "keygen",
            "--algorithm",
            algorithm,
            "--kid",
            kid,
            "--out",
            &out,
        ]);
        assert!(output.status.success(), "{}", stderr(&output));
        let private = dir.path().join(format!("private/{kid}.pem"));
        let public = dir.path().join(format!("public/{kid}"));
        let mode = std::fs::metadata(&private)
            .expect("private key")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);

        // The generated key signs for its algorithm, and public-key prints the same public key.
        let config = format!(
            "listen: 127.0.0.1:0\nasap:\n  issuer: svc\n  kid: {kid}\n  algorithm: {algorithm}\n  \
             private_key_file: {}\nroutes:\n  - host: a.test\n    audience: a\n",
            private.display()
        );
        let config_path = write_config(dir.path(), &config);
        let printed = asap_proxy(&["public-key", "-c", &config_path]);
        assert!(printed.status.success(), "{}", stderr(&printed));
        let published = std::fs::read_to_string(&public).expect("public key");
        assert_eq!(stdout(&printed), format!("# kid: {kid}\n{published}\n"));
    }

    let again = asap_proxy(&[
        "keygen",
        "--algorithm",
        "ES384",
        "--kid",
        "svc/ec-1",
        "--out",
        &out,
    ]);
    assert_eq!(again.status.code(), Some(1), "never overwrites a key");
    let bad_kid = asap_proxy(&[
        "keygen",
        "--algorithm",
        "ES256",
        "--kid",
        "svc/../x",
        "--out",
        &out,
    ]);
    assert_eq!(bad_kid.status.code(), Some(1));
    let bad_alg = asap_proxy(&[
        "keygen",
        "--algorithm",
        "HS256",
        "--kid",
        "svc/x",
        "--out",
        &out,
    ]);
    assert_eq!(bad_alg.status.code(), Some(2), "usage error");
}

#[test]
fn help_describes_every_command() {
    let help = stdout(&asap_proxy(&["--help"]));
    for command in ["run", "check", "token", "keygen", "public-key"] {
        assert!(help.contains(command), "{help}");
        let sub = asap_proxy(&[command, "--help"]);
        assert!(sub.status.success());
        assert!(stdout(&sub).contains("Usage: asap-proxy"), "{command}");
    }
}

/// `run` with the key in an environment variable, as containers pass it, serving curl until
/// SIGTERM.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_serves_curl_and_stops_on_sigterm() {
    let upstream = MockUpstream::recording(upstream::ok).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let yaml = format!(
        "listen: 127.0.0.1:0\nasap:\n  issuer: fixture-issuer\n  algorithm: ES384\n  \
         private_key_env: TEST_ASAP_KEY\nroutes:\n  - host: {}\n    audience: env-audience\n",
        upstream.addr
    );
    let path = write_config(dir.path(), &yaml);
    let data_uri = std::fs::read_to_string(key("ec-p384.datauri")).expect("fixture");

    let mut child = tokio::process::Command::new(BIN)
        .args(["run", "-c", &path])
        .env("TEST_ASAP_KEY", data_uri)
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start asap-proxy");
    let mut logs = BufReader::new(child.stderr.take().expect("stderr")).lines();
    let addr = forward_addr(&mut logs).await.to_string();
    let log_task = tokio::spawn(async move {
        let mut all = Vec::new();
        while let Ok(Some(line)) = logs.next_line().await {
            all.push(line);
        }
        all
    });

    let curl = tokio::process::Command::new("curl")
        .args([
            "--silent",
            "--show-error",
            "--noproxy",
            "",
            "--proxy",
            &format!("http://{addr}"),
        ])
        .args(["-H", "Authorization: Bearer client-secret"])
        .arg(format!("http://{}/hello?token=secret-query", upstream.addr))
        .output()
        .await
        .expect("run curl");
    assert!(
        curl.status.success(),
        "{}",
        String::from_utf8_lossy(&curl.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&curl.stdout), "upstream ok\n");
    let seen = upstream.only_request();
    let jwt = decode_bearer(seen.header("authorization").expect("token"));
    assert_eq!(
        jwt.header["kid"], "fixture-issuer/ec-p384",
        "kid from the data URI"
    );
    assert_eq!(jwt.claims["aud"], "env-audience");

    let pid = child.id().expect("pid").to_string();
    let killed = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill");
    assert!(killed.success());
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .expect("exits after SIGTERM")
        .expect("wait");
    assert_eq!(status.code(), Some(0));
    let logs = log_task.await.expect("logs").join("\n");
    assert!(logs.contains("SIGTERM received"), "{logs}");
    for secret in ["client-secret", "secret-query", "MI", "Bearer"] {
        assert!(!logs.contains(secret), "{secret:?} in logs:\n{logs}");
    }
}

/// The binary as operators run it: JSON logs, the admin listener, and a drain on SIGTERM
/// that lets a slow request finish.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_drains_on_sigterm_serves_admin_and_logs_json_without_secrets() {
    let (arrived_tx, arrived_rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let upstream =
        MockUpstream::with_handler(move |request: http::Request<hyper::body::Incoming>| {
            let slow = request.uri().path() == "/slow";
            let arrived = arrived_tx.clone();
            async move {
                if slow {
                    let _ = arrived.send(());
                    tokio::time::sleep(Duration::from_millis(1500)).await;
                }
                http::Response::new(upstream::full("done\n"))
            }
        })
        .await;
    let dir = tempfile::tempdir().expect("tempdir");
    let yaml = format!(
        "{CONFIG}  - host: {}\n    audience: ops\nadmin: 127.0.0.1:0\nshutdown_grace_seconds: 20\n",
        upstream.addr
    );
    let path = write_config(dir.path(), &yaml);

    let mut child = tokio::process::Command::new(BIN)
        .args(["run", "-c", &path, "--log-format", "json"])
        .env("RUST_LOG", "debug")
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start asap-proxy");
    let (lines_tx, mut lines) = tokio::sync::mpsc::unbounded_channel::<String>();
    let mut stderr = BufReader::new(child.stderr.take().expect("stderr")).lines();
    tokio::spawn(async move {
        while let Ok(Some(line)) = stderr.next_line().await {
            let _ = lines_tx.send(line);
        }
    });
    let mut all = Vec::new();
    let (mut forward, mut admin) = (None, None);
    while forward.is_none() || admin.is_none() {
        let line = tokio::time::timeout(Duration::from_secs(30), lines.recv())
            .await
            .expect("proxy starts")
            .expect("proxy still running");
        let json: serde_json::Value =
            serde_json::from_str(&line).unwrap_or_else(|_| panic!("not JSON: {line}"));
        let addr = json["addr"]
            .as_str()
            .map(|a| a.parse::<std::net::SocketAddr>().expect("address"));
        match json["message"].as_str() {
            Some("forward listener ready") => forward = addr,
            Some("admin listener ready") => admin = addr,
            _ => {}
        }
        all.push(line);
    }
    let (forward, admin) = (forward.expect("forward"), admin.expect("admin"));

    assert_eq!(
        support::wire::send(
            admin,
            "GET /livez HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
        )
        .await
        .status,
        200
    );
    assert_eq!(
        support::wire::send(
            admin,
            "GET /readyz HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
        )
        .await
        .status,
        200
    );

    let secret_request = format!(
        "GET http://{0}/fast?api_key=query-secret HTTP/1.1\r\nHost: {0}\r\nAuthorization: Bearer client-secret\r\n\
         Proxy-Authorization: Basic cHJveHktc2VjcmV0\r\nCookie: session=cookie-secret\r\nConnection: close\r\n\r\n",
        upstream.addr
    );
    assert_eq!(
        support::wire::send(forward, &secret_request).await.status,
        200
    );
    let metrics = support::wire::send(
        admin,
        "GET /metrics HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(
        metrics.text().contains(
            "asap_proxy_requests_total{method_class=\"safe\",route=\"1\",status=\"200\"} 1"
        ),
        "{}",
        metrics.text()
    );

    let slow = format!(
        "GET http://{0}/slow HTTP/1.1\r\nHost: {0}\r\nConnection: close\r\n\r\n",
        upstream.addr
    );
    let in_flight = tokio::spawn(async move { support::wire::send(forward, &slow).await });
    let mut arrived_rx = arrived_rx;
    arrived_rx
        .recv()
        .await
        .expect("the slow request reached the upstream");
    let pid = child.id().expect("pid").to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill")
            .success()
    );

    let slow_response = in_flight.await.expect("slow request");
    assert_eq!(
        slow_response.status, 200,
        "the request in flight finishes during the drain"
    );
    assert_eq!(slow_response.text(), "done\n");
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .expect("exits")
        .expect("wait");
    assert_eq!(status.code(), Some(0));

    while let Ok(line) = lines.try_recv() {
        all.push(line);
    }
    let mut access = Vec::new();
    for line in &all {
        let json: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|_| panic!("not JSON: {line}"));
        if json["target"] == "asap_proxy::access" {
            access.push(json);
        }
        for secret in [
            "query-secret",
            "client-secret",
            "cHJveHktc2VjcmV0",
            "cookie-secret",
            "Bearer",
            "eyJ",
        ] {
            assert!(!line.contains(secret), "{secret:?} logged: {line}");
        }
    }
    let fast = access
        .iter()
        .find(|a| a["path"] == "/fast")
        .expect("an access line for /fast");
    for field in [
        "client",
        "method",
        "scheme",
        "host",
        "path",
        "route",
        "status",
        "bytes_in",
        "bytes_out",
        "duration_ms",
        "token",
        "error",
    ] {
        assert!(!fast[field].is_null(), "access line lacks {field}: {fast}");
    }
    assert_eq!(fast["status"], 200);
    // Usually minted in the background before the first request, which then reuses it.
    assert!(
        fast["token"] == "reused" || fast["token"] == "minted",
        "{fast}"
    );
    assert_eq!(fast["bytes_out"], 5);
}

/// No configuration file: ASAP tooling's environment variables and routes on the command line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_from_the_environment_without_a_config_file() {
    let upstream = MockUpstream::recording(upstream::ok).await;
    let key = std::fs::read_to_string(key("ec-p384.datauri")).expect("fixture");
    let mut child = tokio::process::Command::new(BIN)
        .args(["run", "--listen", "127.0.0.1:0", "--route"])
        .arg(upstream.addr.to_string())
        .env("ASAP_ISSUER", "fixture-issuer")
        .env("ASAP_PRIVATE_KEY", key)
        .env("ASAP_AUDIENCE", "from-env")
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start asap-proxy");
    let mut logs = BufReader::new(child.stderr.take().expect("stderr")).lines();
    let addr = forward_addr(&mut logs).await;

    let request = format!(
        "GET http://{0}/ HTTP/1.1\r\nHost: {0}\r\nConnection: close\r\n\r\n",
        upstream.addr
    );
    assert_eq!(support::wire::send(addr, &request).await.status, 200);
    let jwt = decode_bearer(
        upstream
            .only_request()
            .header("authorization")
            .expect("token"),
    );
    assert_eq!(jwt.claims["aud"], "from-env");
    assert_eq!(jwt.header["alg"], "ES384", "chosen from the key's curve");
    assert_eq!(
        jwt.header["kid"], "fixture-issuer/ec-p384",
        "from the data URI"
    );
    let _ = child.start_kill();
}

/// Reads text log lines until the forward listener reports its address.
async fn forward_addr(
    logs: &mut tokio::io::Lines<BufReader<tokio::process::ChildStderr>>,
) -> std::net::SocketAddr {
    loop {
        let line = tokio::time::timeout(Duration::from_secs(30), logs.next_line())
            .await
            .expect("proxy starts")
            .expect("read log")
            .unwrap_or_else(|| panic!("proxy exited before its listener was ready"));
        if let Some(addr) = line.split("forward listener ready addr=").nth(1) {
            return addr
                .split_whitespace()
                .next()
                .expect("address")
                .parse()
                .expect("an address");
        }
    }
}
