//! Observation preprocessing per chunk, as a pi0-style VLA sees it: three 640x480
//! RGB cameras resized with padding to 224x224 NCHW in [-1, 1], plus a state vector
//! z-scored and zero-padded to 32 (`InputMapper::fill`).

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use reflex_policies::config::InputConfig;
use reflex_policies::preprocess::InputMapper;
use reflex_runtime::types::{Image, JointState, Observation};

fn mapper(mode: &str, filter: &str, cameras: &[String]) -> InputMapper {
    let mut text = String::new();
    for name in cameras {
        text += &format!(
            "[[inputs]]\nname = \"{name}\"\nsource = \"camera.{name}\"\nshape = [1, 3, 224, 224]\n\
             image = {{ resize = [224, 224], range = \"minus_one_one\", mode = \"{mode}\", filter = \"{filter}\" }}\n\n"
        );
    }
    text += "[[inputs]]\nname = \"state\"\nsource = \"state.joint_positions\"\nshape = [1, 32]\n\
             normalize = { mean = [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0], std = [1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0] }\n";
    #[derive(serde::Deserialize)]
    struct Inputs {
        inputs: Vec<InputConfig>,
    }
    let parsed: Inputs = toml::from_str(&text).expect("inputs");
    InputMapper::new(&parsed.inputs, cameras, &[]).expect("mapper")
}

fn observation(cameras: usize) -> Observation {
    let images = (0..cameras)
        .map(|k| {
            let mut image = Image::black(640, 480);
            for (i, p) in image.rgb.iter_mut().enumerate() {
                *p = ((i * 31 + k * 7) % 256) as u8;
            }
            image
        })
        .collect();
    Observation {
        images,
        ..Observation::of_joints(1, JointState::empty(7))
    }
}

fn bench(c: &mut Criterion) {
    let cameras: Vec<String> = ["base", "left_wrist", "right_wrist"]
        .map(String::from)
        .to_vec();
    let obs = observation(3);
    for (mode, filter) in [
        ("pad", "linear"),
        ("stretch", "linear"),
        ("pad", "pil_bilinear"),
    ] {
        let mut m = mapper(mode, filter, &cameras);
        c.bench_function(
            &format!("3 cameras 640x480 -> 224x224 ({mode}, {filter})"),
            |b| b.iter(|| m.fill(black_box(&obs))),
        );
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
