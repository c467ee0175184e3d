//! Forward kinematics and the workspace check run in the tick, so they allocate
//! nothing: proven with a counting allocator on the 7-joint fixture.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::path::Path;

use reflex_runtime::robot_model::{RobotModel, WorkspaceBox};

struct CountingAllocator;

thread_local! {
    /// Counting on? And allocations counted, on this thread only.
    static COUNTER: Cell<(bool, u64)> = const { Cell::new((false, 0)) };
}

fn count_one() {
    let _ = COUNTER.try_with(|c| {
        let (on, n) = c.get();
        if on {
            c.set((on, n + 1));
        }
    });
}

// SAFETY: forwards to the system allocator; only counts.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count_one();
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count_one();
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

fn counted<T>(f: impl FnOnce() -> T) -> (T, u64) {
    COUNTER.with(|c| c.set((true, 0)));
    let out = f();
    let (_, n) = COUNTER.with(|c| c.replace((false, 0)));
    (out, n)
}

#[test]
fn forward_kinematics_allocate_nothing() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/arm7.urdf");
    let model = RobotModel::from_file(&path, None).unwrap();
    let tcp = model.chain.link_id("panda_hand_tcp").unwrap();
    let workspace = WorkspaceBox {
        link: tcp,
        min: [-0.5, -0.5, 0.2].into(),
        max: [0.5, 0.5, 1.2].into(),
    };
    let mut q = [0.0; 7];
    let ((inside, sum), allocations) = counted(|| {
        let (mut inside, mut sum) = (0, 0.0);
        for i in 0..10_000 {
            q[i % 7] = (i as f64 * 0.37).sin() * 1.5;
            sum += model.chain.link_position(&q, tcp).norm();
            inside += usize::from(workspace.contains(&model.chain, &q));
        }
        (inside, sum)
    });
    assert_eq!(allocations, 0);
    assert!(sum.is_finite() && inside > 0 && inside < 10_000, "{inside}");
    // The counter counts: loading a model allocates.
    let (_, allocations) = counted(|| RobotModel::from_file(&path, None).unwrap());
    assert!(allocations > 0);
}
