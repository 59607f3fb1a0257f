//! Capturing `tracing` output on the test's thread, as the JSON lines a
//! JSON subscriber writes (the demos' format), to check audit events by
//! their fields and to search everything logged for what must not be
//! there. Thread-local: run the test on a current-thread runtime so the
//! cache's background tasks log on the same thread.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

use std::io::Write;
use std::sync::{Arc, Mutex};

use serde_json::Value;

/// Everything logged on this thread while the guard lives.
#[derive(Clone, Default)]
pub struct Captured(Arc<Mutex<Vec<u8>>>);

impl Captured {
    /// Installs a JSON subscriber at TRACE for every target on this thread.
    pub fn install() -> (Self, tracing::subscriber::DefaultGuard) {
        let captured = Self::default();
        let subscriber = tracing_subscriber::fmt()
            .json()
            .with_max_level(tracing::Level::TRACE)
            .with_writer(captured.clone())
            .finish();
        (captured, tracing::subscriber::set_default(subscriber))
    }

    /// The raw text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }

    /// Every line, parsed.
    pub fn lines(&self) -> Vec<Value> {
        self.text()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect()
    }

    /// The lines on the audit target whose `event` field is `name`.
    pub fn audit(&self, name: &str) -> Vec<Value> {
        self.lines()
            .into_iter()
            .filter(|l| l["target"] == apikey_cache::audit::TARGET && l["fields"]["event"] == name)
            .collect()
    }

    /// Forgets what was captured so far.
    pub fn clear(&self) {
        self.0.lock().unwrap().clear();
    }
}

pub struct CapturedWriter(Arc<Mutex<Vec<u8>>>);

impl Write for CapturedWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
    type Writer = CapturedWriter;

    fn make_writer(&'a self) -> Self::Writer {
        CapturedWriter(self.0.clone())
    }
}

/// Checks that `line`'s fields are the ones [`apikey_cache::audit::EVENTS`]
/// lists for its event (plus `event` and `message`).
pub fn assert_documented_fields(line: &Value) {
    let name = line["fields"]["event"].as_str().unwrap();
    let def = apikey_cache::audit::event(name).unwrap_or_else(|| panic!("undocumented {name}"));
    for field in line["fields"].as_object().unwrap().keys() {
        assert!(
            field == "event" || field == "message" || def.fields.contains(&field.as_str()),
            "{name}: field {field} is not documented"
        );
    }
}
