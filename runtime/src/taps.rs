//! Taps: copies of what the tick commands and measures, for observers outside the
//! core (a zenoh bus mirrors them onto the network). The tick sends into bounded
//! mailboxes and never waits; the observer's thread drains them.

use std::sync::Arc;

use crate::mailbox::Mailbox;
use crate::types::{JointCommand, JointState};

/// The tick's ends of an observer of commands and joint states.
pub struct Tap {
    pub commands: Arc<Mailbox<JointCommand>>,
    pub states: Arc<Mailbox<JointState>>,
    finish: Option<Box<dyn FnOnce() + Send>>,
}

impl Tap {
    pub fn new(commands: Arc<Mailbox<JointCommand>>, states: Arc<Mailbox<JointState>>) -> Self {
        Self {
            commands,
            states,
            finish: None,
        }
    }

    /// What the observer does when the loop ends (e.g. drain and join its thread).
    pub fn on_finish(mut self, finish: impl FnOnce() + Send + 'static) -> Self {
        self.finish = Some(Box::new(finish));
        self
    }

    /// Called once by the loop as it ends.
    pub fn finish(mut self) {
        if let Some(finish) = self.finish.take() {
            finish();
        }
    }
}
