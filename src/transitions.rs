//! The actor's transition stream: every recorded row, as it is written, published
//! as JSON on `<prefix>/<robot>/transitions` for a learner (HIL-SERL's actor /
//! learner split). Images are references into the dataset (episode, frame), not
//! pixels. The schema is in the README ("Transitions for a learner").

use reflex_dataset::{Transition, TransitionSink};
use serde_json::json;
use zenoh::Wait;

pub struct ZenohTransitions {
    session: zenoh::Session,
    key: String,
    robot: String,
    failed: bool,
}

impl ZenohTransitions {
    pub fn new(session: zenoh::Session, key: String, robot: &str) -> Self {
        Self {
            session,
            key,
            robot: robot.to_string(),
            failed: false,
        }
    }

    fn put(&mut self, message: serde_json::Value) {
        // Block, not drop: a learner must get every row, and this is the
        // recorder's thread (never the tick's).
        let put = (self.session.put(&self.key, message.to_string()))
            .congestion_control(zenoh::qos::CongestionControl::Block);
        if let Err(e) = put.wait()
            && !self.failed
        {
            // Recording goes on; a learner that misses transitions can read the dataset.
            tracing::warn!("transitions: cannot publish on {}: {e}", self.key);
            self.failed = true;
        }
    }
}

impl TransitionSink for ZenohTransitions {
    fn transition(&mut self, t: &Transition<'_>) {
        let row = t.row;
        let width = row.width;
        let images: serde_json::Map<String, serde_json::Value> = (t.cameras.iter())
            .zip(&row.images)
            .zip(&row.repeated)
            .map(|((key, image), repeated)| {
                (
                    key.clone(),
                    json!({
                        "episode_index": t.episode_index,
                        "frame_index": t.frame_index,
                        "stamp_s": image.stamp_ns as f64 / 1e9,
                        "repeated": repeated,
                    }),
                )
            })
            .collect();
        let message = json!({
            "kind": "transition",
            "robot": self.robot,
            "episode_index": t.episode_index,
            "frame_index": t.frame_index,
            "timestamp": t.frame_index as f64 / f64::from(t.fps),
            "tick": row.tick,
            "task": t.task,
            "observation": {
                "state": &row.state[..width],
                "images": images,
            },
            "action": &row.executed[..width],
            "policy_action": &row.policy_action[..width],
            "reward": t.reward,
            "done": t.done,
            "intervention": row.intervention,
            "model_version": row.model_version,
        });
        self.put(message);
    }

    fn discard(&mut self, episode_index: u64) {
        let message = json!({
            "kind": "discard",
            "robot": self.robot,
            "episode_index": episode_index,
        });
        self.put(message);
    }
}
