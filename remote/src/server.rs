//! The zenoh side of `reflex serve`: one queryable for requests, answered one
//! at a time in arrival order (requests from several robots queue on the one
//! policy), and one for the metadata.

use std::sync::Arc;
use std::time::Instant;

use reflex_openpi::msgpack::Writer;
use reflex_openpi::server::{Service, Session, frame_reply};
use zenoh::Wait;

/// Answers requests on `key` until the session closes.
pub fn serve(
    session: &zenoh::Session,
    key: &str,
    service: Arc<dyn Service>,
) -> Result<(), zenoh::Error> {
    let metadata = service.metadata();
    let _metadata = session
        .declare_queryable(crate::metadata_key(key))
        .callback(move |query| {
            if let Err(e) = query
                .reply(query.key_expr().clone(), metadata.clone())
                .wait()
            {
                tracing::warn!("cannot send the metadata: {e}");
            }
        })
        .wait()?;
    let requests = session.declare_queryable(key).wait()?;
    // The tick of each request is in the request; this only counts them.
    let mut state = Session {
        requests: 0,
        peer: "zenoh".into(),
    };
    let mut entries = Writer::new();
    while let Ok(query) = requests.recv() {
        let started = Instant::now();
        entries.bytes.clear();
        let answer = match query.payload() {
            None => Err("a request carries the observation as its payload".to_string()),
            Some(payload) => service.infer(&payload.to_bytes(), &mut state, &mut entries),
        };
        let sent = match answer {
            Ok(count) => {
                state.requests += 1;
                let infer_ms = started.elapsed().as_secs_f64() * 1e3;
                let reply = frame_reply(&entries, count, infer_ms, None);
                query.reply(query.key_expr().clone(), reply).wait()
            }
            Err(error) => query.reply_err(format!("reflex serve: {error}")).wait(),
        };
        if let Err(e) = sent {
            tracing::warn!("cannot reply to a request: {e}");
        }
    }
    Ok(())
}
