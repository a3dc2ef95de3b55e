//! The official `openai` and `anthropic` Python SDKs, unmodified and configured only through
//! the environment, work through the bump with ONE credential binding while the guest holds
//! only a handle:
//!
//! ```yaml
//! credential: { secret: api-key, headers: [x-api-key, authorization] }
//! ```
//!
//! The fake API on the test upstream ([`crate::common::fake_api`]) answers 401 unless the real
//! key arrived, and says in its reply which header carried it. Both SDK generations are run:
//! `anthropic` 1.x sends `api_key` as `x-api-key`, 2.x as `Authorization: Bearer`; `auth_token`
//! and the OpenAI SDK send `Authorization: Bearer`. Refusals reach the SDK's exception.
//!
//! The SDKs come from pip (`.ci/run` installs them; anthropic 1.x into
//! `target/sdk/anthropic-1`). Without them these tests fail when `CI` is set, and otherwise
//! skip with a printed message.

use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use serde_json::{Value, json};

use crate::common::*;
use crate::inject::{capture_logs, leak_scan};

const SCRIPT: &str = include_str!("sdk_client.py");

/// Where `.ci/run` installs the previous Anthropic SDK generation (`--target`, no deps: it
/// shares the current one's).
const ANTHROPIC_1_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/target/sdk/anthropic-1");

const INSTALL: &str = "python3 -m pip install 'openai>=1,<4' 'anthropic>=2,<3' && \
    python3 -m pip install --no-deps --target target/sdk/anthropic-1 'anthropic>=1,<2' \
    (see .ci/run)";

/// One SDK as the guest runs it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Sdk {
    OpenAi,
    /// The installed `anthropic` (2.x): `api_key` goes in `Authorization: Bearer`.
    Anthropic,
    /// `anthropic` 1.x: `api_key` goes in `x-api-key`.
    Anthropic1,
}

impl Sdk {
    fn module(self) -> &'static str {
        match self {
            Sdk::OpenAi => "openai",
            Sdk::Anthropic | Sdk::Anthropic1 => "anthropic",
        }
    }

    fn major(self) -> &'static str {
        match self {
            Sdk::OpenAi => "",
            Sdk::Anthropic => "2.",
            Sdk::Anthropic1 => "1.",
        }
    }

    fn python_path(self) -> Option<&'static str> {
        (self == Sdk::Anthropic1).then_some(ANTHROPIC_1_DIR)
    }

    /// The SDK's version, or `None` (with a printed SKIP) when it cannot be imported outside
    /// CI. In CI (`CI` set) a missing SDK fails the test.
    fn available(self) -> Option<String> {
        static PROBES: [OnceLock<Result<String, String>>; 3] =
            [OnceLock::new(), OnceLock::new(), OnceLock::new()];
        let slot = &PROBES[self as usize];
        let probe = slot.get_or_init(|| self.probe()).clone();
        match probe {
            Ok(v) => Some(v),
            Err(why) if std::env::var_os("CI").is_some() => {
                panic!("CI is set but {why}; install it with: {INSTALL}")
            }
            Err(why) => {
                eprintln!("SKIP sdk test: {why}; install it with: {INSTALL}");
                None
            }
        }
    }

    fn probe(self) -> Result<String, String> {
        let m = self.module();
        let mut cmd = std::process::Command::new("python3");
        cmd.args(["-c", &format!("import {m}; print({m}.__version__)")]);
        scrub_env(&mut cmd);
        if let Some(p) = self.python_path() {
            if !Path::new(p).join("anthropic").is_dir() {
                return Err(format!("anthropic 1.x is not installed in {p}"));
            }
            cmd.env("PYTHONPATH", p);
        }
        let out = cmd
            .output()
            .map_err(|e| format!("python3 cannot be run ({e})"))?;
        if !out.status.success() {
            return Err(format!(
                "python3 cannot import `{m}`: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        let version = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        if !version.starts_with(self.major()) {
            return Err(format!(
                "{self:?} needs `{m}` {}x, found {version}",
                self.major()
            ));
        }
        Ok(version)
    }
}

/// Removes what could route the guest elsewhere or hand it other credentials: proxy settings,
/// CA overrides, the SDKs' own variables, a PYTHONPATH.
fn scrub_env(cmd: &mut std::process::Command) {
    for (k, _) in std::env::vars_os() {
        let name = k.to_string_lossy().to_ascii_uppercase();
        if name.ends_with("_PROXY")
            || name.starts_with("OPENAI_")
            || name.starts_with("ANTHROPIC_")
            || matches!(
                name.as_str(),
                "SSL_CERT_FILE" | "SSL_CERT_DIR" | "REQUESTS_CA_BUNDLE" | "CURL_CA_BUNDLE"
            )
            || name == "PYTHONPATH"
        {
            cmd.env_remove(&k);
        }
    }
}

struct SdkEnv {
    up: std::net::SocketAddr,
    seen: Arc<Seen>,
    proxy: Proxy,
    dir: tempfile::TempDir,
}

/// `api.test` and `badtls.test` hold the one binding; `badtls.test`'s upstream certificate does
/// not name it (`upstream_tls`); `denied.test` is not a destination.
async fn sdk_env() -> SdkEnv {
    capture_logs();
    let pki = Pki::new("sdk upstream CA");
    let leaf = pki.leaf(&["api.test"]);
    let (up, seen) = start_upstream(Some(server_config(&leaf, &[b"h2", b"http/1.1"]))).await;
    let dir = tempfile::tempdir().unwrap();
    let secrets = write(
        dir.path(),
        "secrets.yaml",
        &format!("secrets:\n  api-key: {{ value: {FAKE_API_KEY} }}\n"),
    );
    std::fs::copy(pki.ca_path(), dir.path().join("up-ca.pem")).unwrap();
    write(dir.path(), "sdk_client.py", SCRIPT);
    std::fs::create_dir(dir.path().join("anthropic-config")).unwrap();
    let port = up.port();
    let yaml = format!(
        "state_dir: STATE_DIR
upstream: {{ extra_roots: [{ca}] }}
network: {{ allow: [127.0.0.1/32], hosts: {{ api.test: 127.0.0.1, badtls.test: 127.0.0.1, denied.test: 127.0.0.1 }} }}
secrets: {{ file: {secrets}, initial_fetch_timeout: 1s }}
destinations:
  - {{ host: api.test, ports: [{port}], credential: {{ secret: api-key, headers: [x-api-key, authorization] }} }}
  - {{ host: badtls.test, ports: [{port}], credential: {{ secret: api-key, headers: [x-api-key, authorization] }} }}
default_rung: deny
",
        ca = dir.path().join("up-ca.pem").display(),
        secrets = secrets.display()
    );
    let proxy = Proxy::start(&yaml).await;
    SdkEnv {
        up,
        seen,
        proxy,
        dir,
    }
}

impl SdkEnv {
    /// A handle for `api-key`, the only thing the guest holds.
    async fn handle(&self, host: &str) -> String {
        self.proxy
            .mint(&format!(
                r#"{{"credentials":["api-key"],"ttl":"5m","host":"{host}"}}"#
            ))
            .await
    }

    /// Runs `sdk_client.py SDK MODE` as the guest: the proxy and the bump CA from the
    /// environment like any user sets them, `key_var` holding `handle`, the base URL
    /// `https://{host}:PORT{prefix}` (plus `/v1` for OpenAI).
    async fn run(&self, sdk: Sdk, mode: &str, key_var: &str, handle: &str, host: &str) -> Value {
        self.run_at(sdk, mode, key_var, handle, host, "").await
    }

    async fn run_at(
        &self,
        sdk: Sdk,
        mode: &str,
        key_var: &str,
        handle: &str,
        host: &str,
        prefix: &str,
    ) -> Value {
        let port = self.up.port();
        let (base_var, base) = match sdk {
            Sdk::OpenAi => (
                "OPENAI_BASE_URL",
                format!("https://{host}:{port}{prefix}/v1"),
            ),
            Sdk::Anthropic | Sdk::Anthropic1 => (
                "ANTHROPIC_BASE_URL",
                format!("https://{host}:{port}{prefix}"),
            ),
        };
        let mut cmd = std::process::Command::new("python3");
        cmd.arg(self.dir.path().join("sdk_client.py"))
            .args([sdk.module(), mode]);
        scrub_env(&mut cmd);
        cmd.env("HTTPS_PROXY", self.proxy.url())
            .env("SSL_CERT_FILE", self.proxy.bump_ca_path())
            .env(
                "ANTHROPIC_CONFIG_DIR",
                self.dir.path().join("anthropic-config"),
            )
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .env(key_var, handle)
            .env(base_var, &base);
        if let Some(p) = sdk.python_path() {
            cmd.env("PYTHONPATH", p);
        }
        let mut cmd = tokio::process::Command::from(cmd);
        cmd.kill_on_drop(true);
        let out = tokio::time::timeout(Duration::from_secs(120), cmd.output())
            .await
            .unwrap_or_else(|_| panic!("{sdk:?} {mode}: the SDK did not finish in 120 s"))
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "{sdk:?} {mode} failed:\n{stdout}\n{stderr}"
        );
        let last = stdout.lines().last().unwrap_or("");
        serde_json::from_str(last)
            .unwrap_or_else(|e| panic!("{sdk:?} {mode}: not JSON ({e}):\n{stdout}\n{stderr}"))
    }

    /// The requests the fake API received on `path`.
    fn requests_to(&self, path: &str) -> Vec<http::HeaderMap> {
        self.seen
            .requests
            .lock()
            .unwrap()
            .iter()
            .filter(|(p, _)| p == path)
            .map(|(_, h)| h.clone())
            .collect()
    }

    fn upstream_saw_no_handle(&self) {
        for (path, headers) in self.seen.requests.lock().unwrap().iter() {
            assert!(
                !path.to_ascii_lowercase().contains("eeh_"),
                "a handle reached the upstream in {path}"
            );
            for (k, v) in headers {
                assert!(
                    !String::from_utf8_lossy(v.as_bytes())
                        .to_ascii_lowercase()
                        .contains("eeh_"),
                    "a handle reached the upstream in {k} on {path}"
                );
            }
        }
    }

    /// `egress_edge_refusals_total{code}` once it has appeared (0 if it never does).
    async fn refusals(&self, code: &str) -> f64 {
        let mut value = 0.0;
        for _ in 0..30 {
            let text = self.proxy.metrics().await;
            let exp = parse_exposition(&text).unwrap();
            if let Some(v) = exp.value("egress_edge_refusals_total", &[("code", code)]) {
                value = v;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // Let any late attempt be counted too.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let exp = parse_exposition(&self.proxy.metrics().await).unwrap();
        exp.value("egress_edge_refusals_total", &[("code", code)])
            .unwrap_or(value)
    }
}

/// One non-streaming and one streaming call through the bump, the handle in `key_var`; the
/// fake API must have seen the real key in `header` (and only there), never a handle.
async fn calls_with_one_binding(sdk: Sdk, key_var: &str, header: &str) {
    let Some(version) = sdk.available() else {
        return;
    };
    let env = sdk_env().await;
    let handle = env.handle("api.test").await;
    let out = env.run(sdk, "call", key_var, &handle, "api.test").await;
    let want = format!("key via {header}");
    eprintln!("{sdk:?} {version} with {key_var}: {out}");
    // The SDK put the handle in `header` and nowhere else…
    assert_eq!(out["auth_headers"], json!([header]), "{out}");
    // …the upstream answered 200 because the real key arrived there (a handle gets a 401)…
    assert_eq!(out["text"], want.as_str(), "{out}");
    let texts: Vec<&str> = out["stream_texts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(texts.len() >= 2, "the stream came as one chunk: {out}");
    assert_eq!(texts.concat(), want, "{out}");
    let kinds: Vec<&str> = out["stream_kinds"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    match sdk {
        Sdk::OpenAi => assert!(
            !kinds.is_empty() && kinds.iter().all(|k| *k == "chat.completion.chunk"),
            "{out}"
        ),
        Sdk::Anthropic | Sdk::Anthropic1 => {
            assert_eq!(kinds.first(), Some(&"message_start"), "{out}");
            assert_eq!(kinds.last(), Some(&"message_stop"), "{out}");
            assert!(kinds.contains(&"content_block_delta"), "{out}");
        }
    }
    // …in one attempt each, no retries.
    assert_eq!(out["attempts"], 2, "{out}");
    let path = match sdk {
        Sdk::OpenAi => "/v1/chat/completions",
        Sdk::Anthropic | Sdk::Anthropic1 => "/v1/messages",
    };
    let seen = env.requests_to(path);
    assert_eq!(seen.len(), 2, "the fake API saw {} requests", seen.len());
    let carried = if header == "authorization" {
        format!("Bearer {FAKE_API_KEY}")
    } else {
        FAKE_API_KEY.to_owned()
    };
    for h in &seen {
        assert_eq!(h.get(header).unwrap(), carried.as_str());
        let other = if header == "authorization" {
            "x-api-key"
        } else {
            "authorization"
        };
        assert!(h.get(other).is_none(), "{other} was added: {h:?}");
    }
    env.upstream_saw_no_handle();
    leak_scan(&env.proxy, &[FAKE_API_KEY, &handle], &[]).await;
}

#[tokio::test]
async fn openai_chat_completions_with_a_handle_in_openai_api_key() {
    calls_with_one_binding(Sdk::OpenAi, "OPENAI_API_KEY", "authorization").await;
}

/// The `x-api-key` generation: `anthropic` 1.x sends `api_key` as `x-api-key`.
#[tokio::test]
async fn anthropic_1_messages_with_a_handle_as_api_key_in_x_api_key() {
    calls_with_one_binding(Sdk::Anthropic1, "ANTHROPIC_API_KEY", "x-api-key").await;
}

/// The `Authorization` generation: `anthropic` 2.x sends `api_key` as `Authorization: Bearer`.
#[tokio::test]
async fn anthropic_2_messages_with_a_handle_as_api_key_in_authorization() {
    calls_with_one_binding(Sdk::Anthropic, "ANTHROPIC_API_KEY", "authorization").await;
}

/// `auth_token` (`ANTHROPIC_AUTH_TOKEN`) is sent as `Authorization: Bearer`.
#[tokio::test]
async fn anthropic_messages_with_a_handle_as_auth_token() {
    calls_with_one_binding(Sdk::Anthropic, "ANTHROPIC_AUTH_TOKEN", "authorization").await;
}

/// The fake API itself: it refuses anything but the real key, so the SDK tests above cannot
/// pass with a handle (or nothing) reaching it.
#[tokio::test]
async fn fake_api_refuses_anything_but_the_real_key() {
    let env = sdk_env().await;
    let post = |headers: Vec<String>| {
        let mut args = vec![
            "-x".to_owned(),
            env.proxy.url(),
            "--cacert".to_owned(),
            env.proxy.bump_ca_path().display().to_string(),
            "-o".to_owned(),
            "-".to_owned(),
            "-w".to_owned(),
            "\n%{http_code}".to_owned(),
            "-H".to_owned(),
            "content-type: application/json".to_owned(),
            "-d".to_owned(),
            r#"{"model":"m","messages":[]}"#.to_owned(),
        ];
        for h in headers {
            args.push("-H".to_owned());
            args.push(h);
        }
        args.push(format!(
            "https://api.test:{}/v1/chat/completions",
            env.up.port()
        ));
        async move {
            let (code, out, err) = curl_async(args).await;
            assert_eq!(code, 0, "{err}");
            let (body, status) = out.rsplit_once('\n').unwrap();
            (status.to_owned(), body.to_owned())
        }
    };
    let (status, body) = post(vec![]).await;
    assert_eq!(status, "401", "{body}");
    let (status, body) = post(vec!["Authorization: Bearer sk-test-WRONG".into()]).await;
    assert_eq!(status, "401", "{body}");
    let (status, body) = post(vec![format!("x-api-key: {FAKE_API_KEY}")]).await;
    assert_eq!(status, "200", "{body}");
    assert_eq!(
        json(&body)["choices"][0]["message"]["content"],
        "key via x-api-key"
    );
    let (status, body) = post(vec![format!("Authorization: Bearer {FAKE_API_KEY}")]).await;
    assert_eq!(status, "200", "{body}");
    assert_eq!(
        json(&body)["choices"][0]["message"]["content"],
        "key via authorization"
    );
    // Through the bump with a handle in both headers: both are swapped.
    let h = env.handle("api.test").await;
    let (status, body) = post(vec![
        format!("Authorization: Bearer {h}"),
        format!("x-api-key: {h}"),
    ])
    .await;
    assert_eq!(status, "200", "{body}");
    assert_eq!(
        json(&body)["choices"][0]["message"]["content"],
        "key via authorization+x-api-key"
    );
    env.upstream_saw_no_handle();
}

/// A refusal inside the bump that retrying cannot fix carries `x-should-retry: false`: the
/// SDKs raise after one attempt, with the code in the error. The control: a plain 502 from the
/// upstream itself (no such header) is retried twice, as the SDKs do by default.
#[tokio::test]
async fn sdk_does_not_retry_a_refusal_marked_should_not_retry() {
    for (sdk, key_var) in [
        (Sdk::OpenAi, "OPENAI_API_KEY"),
        (Sdk::Anthropic, "ANTHROPIC_API_KEY"),
    ] {
        let Some(_) = sdk.available() else {
            return;
        };
        let env = sdk_env().await;
        // `badtls.test`'s upstream certificate does not name it: refused as `upstream_tls`.
        let refused = env.handle("badtls.test").await;
        let out = env
            .run(sdk, "refused", key_var, &refused, "badtls.test")
            .await;
        eprintln!("{sdk:?} refused in the bump: {out}");
        assert_eq!(out["error"], "InternalServerError", "{out}");
        assert_eq!(out["status"], 502, "{out}");
        assert!(out["chain"].to_string().contains("upstream_tls"), "{out}");
        assert_eq!(out["attempts"], 1, "the SDK retried: {out}");
        assert_eq!(env.refusals("upstream_tls").await, 1.0, "{out}");
        assert!(env.seen.requests.lock().unwrap().is_empty());
        // The control: the same SDK retries a 502 that does not say `x-should-retry: false`.
        let handle = env.handle("api.test").await;
        let out = env
            .run_at(sdk, "refused", key_var, &handle, "api.test", "/bad-gateway")
            .await;
        eprintln!("{sdk:?} upstream 502: {out}");
        assert_eq!(out["status"], 502, "{out}");
        assert_eq!(out["attempts"], 3, "{out}");
        let seen = env.seen.requests.lock().unwrap().len();
        assert_eq!(seen, 3, "the upstream saw {seen} requests");
        env.upstream_saw_no_handle();
        leak_scan(&env.proxy, &[FAKE_API_KEY, &refused, &handle], &[]).await;
    }
}

/// A refused CONNECT reaches the SDK as a connection error whose text names the code
/// (`403 destination_denied`, the reason phrase). The SDK never sees the response's headers
/// (httpx raises on a non-2xx CONNECT), so `x-should-retry` cannot stop its retries here: every
/// attempt it makes is one refused CONNECT, and nothing reaches an upstream.
#[tokio::test]
async fn sdk_surfaces_a_refused_connect() {
    let Some(_) = Sdk::OpenAi.available() else {
        return;
    };
    let env = sdk_env().await;
    let handle = env.handle("api.test").await;
    let out = env
        .run(
            Sdk::OpenAi,
            "refused",
            "OPENAI_API_KEY",
            &handle,
            "denied.test",
        )
        .await;
    eprintln!("refused CONNECT: {out}");
    assert_eq!(out["error"], "APIConnectionError", "{out}");
    assert!(
        out["chain"].to_string().contains("403 destination_denied"),
        "{out}"
    );
    let attempts = out["attempts"].as_f64().unwrap();
    assert!(attempts >= 1.0, "{out}");
    assert_eq!(env.refusals("destination_denied").await, attempts, "{out}");
    assert!(env.seen.requests.lock().unwrap().is_empty());
    assert_eq!(
        env.seen
            .connections
            .load(std::sync::atomic::Ordering::SeqCst),
        0
    );
}
