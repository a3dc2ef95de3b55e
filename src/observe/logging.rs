//! Process-wide tracing setup: human-readable or JSON, filtered by `log.level` (or `RUST_LOG`).
//!
//! Records that dependencies (rustls) write through the `log` crate are bridged into tracing;
//! in JSON their bridge fields naming the dependency's source file and line are dropped, so
//! log lines carry no paths of the build machine. This module formats; it decides nothing.

use std::io::Write;

use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;

use crate::config::{LogConfig, LogFormat};

/// Installs the global subscriber; a second call (tests) is a no-op.
pub fn init(cfg: &LogConfig) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&cfg.level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    let _ = match cfg.format {
        LogFormat::Json => builder
            .with_writer(NoSourcePaths(std::io::stderr))
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
        LogFormat::Text => builder
            .with_writer(std::io::stderr)
            .with_target(true)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .try_init(),
    };
}

/// Fields the `log` bridge adds that name a dependency's source location.
const BRIDGE_FIELDS: [&str; 3] = ["log.file", "log.line", "log.module_path"];

/// A writer for JSON lines that drops [`BRIDGE_FIELDS`] from the (rare) bridged records and
/// passes every other line through untouched.
#[derive(Clone, Copy, Debug)]
pub struct NoSourcePaths<M>(pub M);

impl<'a, M: MakeWriter<'a>> MakeWriter<'a> for NoSourcePaths<M> {
    type Writer = StripWriter<M::Writer>;

    fn make_writer(&'a self) -> Self::Writer {
        StripWriter(self.0.make_writer())
    }
}

/// The per-event writer of [`NoSourcePaths`].
#[derive(Debug)]
pub struct StripWriter<W>(W);

impl<W: Write> Write for StripWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.write_all(&strip_bridge_fields(buf))?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

/// One formatted event with the bridge's source-location fields removed.
fn strip_bridge_fields(line: &[u8]) -> std::borrow::Cow<'_, [u8]> {
    let needle = b"\"log.file\"";
    if !line.windows(needle.len()).any(|w| w == needle) {
        return std::borrow::Cow::Borrowed(line);
    }
    let Ok(serde_json::Value::Object(mut map)) = serde_json::from_slice(line) else {
        return std::borrow::Cow::Borrowed(line);
    };
    for f in BRIDGE_FIELDS {
        map.remove(f);
    }
    let mut out = serde_json::to_vec(&map).unwrap_or_else(|_| line.to_vec());
    out.push(b'\n');
    std::borrow::Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bridged_records_lose_their_source_paths() {
        let line = br#"{"level":"WARN","message":"Sending fatal alert","log.target":"rustls::conn","log.module_path":"rustls::conn","log.file":"/root/.cargo/registry/src/x/rustls/src/conn.rs","log.line":12,"target":"rustls::conn"}
"#;
        let out = strip_bridge_fields(line);
        let text = String::from_utf8(out.to_vec()).unwrap();
        assert!(
            !text.contains(".cargo") && !text.contains("log.line"),
            "{text}"
        );
        assert!(
            text.contains("Sending fatal alert") && text.ends_with('\n'),
            "{text}"
        );
        let plain = b"{\"message\":\"access\"}\n";
        assert!(matches!(
            strip_bridge_fields(plain),
            std::borrow::Cow::Borrowed(_)
        ));
    }
}
