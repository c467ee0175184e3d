//! Latest-value slots: a driver thread writes its newest sample, the tick reads the
//! newest one without blocking or allocating (a wait-free triple buffer underneath).

use triple_buffer::{Input, Output, triple_buffer};

/// The writing end, owned by a driver thread.
pub struct SlotWriter<T: Send> {
    input: Input<T>,
}

/// The reading end, owned by the control loop.
pub struct SlotReader<T: Send> {
    output: Output<T>,
}

/// A slot whose three buffers start as clones of `initial` (allocate once, here).
pub fn latest_slot<T: Clone + Send>(initial: &T) -> (SlotWriter<T>, SlotReader<T>) {
    let (input, output) = triple_buffer(initial);
    (SlotWriter { input }, SlotReader { output })
}

impl<T: Send> SlotWriter<T> {
    /// Fills the back buffer in place and publishes it. `fill` must overwrite every
    /// field it cares about: the back buffer holds an older sample.
    pub fn publish_with(&mut self, fill: impl FnOnce(&mut T)) {
        fill(self.input.input_buffer_mut());
        self.input.publish();
    }
}

impl<T: Clone + Send> SlotWriter<T> {
    pub fn publish(&mut self, value: &T) {
        self.publish_with(|slot| slot.clone_from(value));
    }
}

impl<T: Send> SlotReader<T> {
    /// The newest published value (the initial one until something is published).
    pub fn latest(&mut self) -> &T {
        self.output.read()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reader_sees_only_the_newest_value() {
        let (mut writer, mut reader) = latest_slot(&0u32);
        assert_eq!(*reader.latest(), 0);
        writer.publish(&1);
        writer.publish(&2);
        assert_eq!(*reader.latest(), 2);
        assert_eq!(*reader.latest(), 2);
    }

    #[test]
    fn publish_with_reuses_buffers() {
        let (mut writer, mut reader) = latest_slot(&vec![0u8; 4]);
        for round in 1..10u8 {
            writer.publish_with(|buf| buf.iter_mut().for_each(|b| *b = round));
            assert_eq!(reader.latest(), &vec![round; 4]);
        }
    }
}
