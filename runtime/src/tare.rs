//! Taring tactile sensors while a run goes on: a camera-based sensor's reference
//! frame (GelSight, DIGIT), a taxel array's bias. `reflex tare --robot R [STREAM]`
//! asks over the control socket; each driver that can tare watches its stream and,
//! on a request, averages a new reference while it keeps publishing against the
//! old one, then switches (the stream never goes quiet).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// One entry per sensor stream: requests made, and whether a driver tares it.
#[derive(Debug, Default)]
struct Entry {
    name: String,
    requests: AtomicU64,
    watched: AtomicBool,
}

/// Shared by the control socket (which asks) and the drivers (which watch); in
/// the drivers' services.
#[derive(Debug, Clone, Default)]
pub struct TareRequests {
    streams: Arc<[Entry]>,
}

impl TareRequests {
    pub fn new(streams: impl IntoIterator<Item = String>) -> Self {
        Self {
            streams: streams
                .into_iter()
                .map(|name| Entry {
                    name,
                    ..Entry::default()
                })
                .collect(),
        }
    }

    /// Asks `stream` (None: every stream a driver tares) to tare; the names asked.
    pub fn request(&self, stream: Option<&str>) -> Result<Vec<String>, String> {
        let watched: Vec<&Entry> = (self.streams.iter())
            .filter(|e| e.watched.load(Ordering::Acquire))
            .collect();
        let chosen: Vec<&Entry> = match stream {
            None => watched.clone(),
            Some(name) => watched.iter().copied().filter(|e| e.name == name).collect(),
        };
        if chosen.is_empty() {
            let tares: Vec<&str> = watched.iter().map(|e| e.name.as_str()).collect();
            return Err(match (stream, tares.is_empty()) {
                (_, true) => "no stream of this run tares (camera-based tactile sensors \
                              with reference_frames, serial_taxels with bias_frames do)"
                    .into(),
                (Some(name), false) => {
                    format!(
                        "stream `{name}` does not tare; these do: {}",
                        tares.join(", ")
                    )
                }
                (None, false) => unreachable!("every watched stream is chosen"),
            });
        }
        for entry in &chosen {
            entry.requests.fetch_add(1, Ordering::AcqRel);
        }
        Ok(chosen.iter().map(|e| e.name.clone()).collect())
    }

    /// Watches `stream`'s requests (a driver that can tare it); None for a stream
    /// the run does not have.
    pub fn watch(&self, stream: &str) -> Option<TareWatch> {
        let index = self.streams.iter().position(|e| e.name == stream)?;
        self.streams[index].watched.store(true, Ordering::Release);
        Some(TareWatch {
            seen: self.streams[index].requests.load(Ordering::Acquire),
            requests: self.clone(),
            index,
        })
    }
}

/// A driver's view of its stream's tare requests.
#[derive(Debug)]
pub struct TareWatch {
    requests: TareRequests,
    index: usize,
    seen: u64,
}

impl TareWatch {
    /// True once for each new request (several between two calls count once).
    pub fn requested(&mut self) -> bool {
        let now = self.requests.streams[self.index]
            .requests
            .load(Ordering::Acquire);
        std::mem::replace(&mut self.seen, now) != now
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_reach_the_watching_driver_once() {
        let tare = TareRequests::new(["top".to_string(), "finger".to_string()]);
        assert!(tare.request(None).unwrap_err().contains("no stream"));
        let mut finger = tare.watch("finger").unwrap();
        assert!(!finger.requested());
        assert_eq!(tare.request(None).unwrap(), ["finger"]);
        assert!(
            tare.request(Some("top"))
                .unwrap_err()
                .contains("these do: finger")
        );
        tare.request(Some("finger")).unwrap();
        assert!(finger.requested());
        assert!(!finger.requested());
        assert!(tare.watch("nope").is_none());
    }
}
