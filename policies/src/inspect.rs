//! `reflex inspect MODEL.onnx`: what a model takes and gives, read through ONNX
//! Runtime, plus the IR version and opsets from the file itself, and a launch-file
//! snippet that maps it.

use std::fmt::Write as _;
use std::path::Path;

use crate::PolicyLoadError;
use crate::chunk::{Port, model_ports};

pub struct ModelReport {
    pub ir_version: Option<u64>,
    /// (domain, version); the default domain is "".
    pub opsets: Vec<(String, u64)>,
    pub producer: Option<String>,
    pub metadata: Vec<(String, String)>,
    pub inputs: Vec<Port>,
    pub outputs: Vec<Port>,
}

/// Reads a varint at `at`, advancing it.
fn varint(bytes: &[u8], at: &mut usize) -> Option<u64> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *bytes.get(*at)?;
        *at += 1;
        value |= u64::from(byte & 0x7F) << shift;
        if byte & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}

/// Walks the top-level fields of a protobuf message: (field number, wire type,
/// varint value or length-delimited bytes).
fn fields(bytes: &[u8]) -> Vec<(u64, u64, u64, &[u8])> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        let Some(key) = varint(bytes, &mut at) else {
            break;
        };
        let (field, wire) = (key >> 3, key & 7);
        match wire {
            0 => match varint(bytes, &mut at) {
                Some(v) => out.push((field, wire, v, &bytes[0..0])),
                None => break,
            },
            1 => at += 8,
            2 => {
                let Some(len) = varint(bytes, &mut at) else {
                    break;
                };
                let Some(body) = bytes.get(at..at + len as usize) else {
                    break;
                };
                out.push((field, wire, 0, body));
                at += len as usize;
            }
            5 => at += 4,
            _ => break,
        }
    }
    out
}

/// IR version (ModelProto field 1) and opset imports (field 8: domain = 1, version = 2).
pub fn read_versions(model: &[u8]) -> (Option<u64>, Vec<(String, u64)>) {
    let mut ir = None;
    let mut opsets = Vec::new();
    for (field, wire, value, body) in fields(model) {
        match (field, wire) {
            (1, 0) => ir = Some(value),
            (8, 2) => {
                let mut domain = String::new();
                let mut version = 0;
                for (f, w, v, b) in fields(body) {
                    match (f, w) {
                        (1, 2) => domain = String::from_utf8_lossy(b).into_owned(),
                        (2, 0) => version = v,
                        _ => {}
                    }
                }
                opsets.push((domain, version));
            }
            _ => {}
        }
    }
    (ir, opsets)
}

pub fn inspect(path: &Path, library: Option<&Path>) -> Result<ModelReport, PolicyLoadError> {
    // A regular file under the model cap: `/dev/zero` would otherwise be read forever.
    let bytes =
        reflex_runtime::files::read(path, reflex_runtime::files::MAX_MODEL_BYTES).map_err(|e| {
            PolicyLoadError::Model {
                path: path.to_path_buf(),
                message: e.reason(),
            }
        })?;
    let (ir_version, opsets) = read_versions(&bytes);
    let (env, _) = crate::onnxruntime::environment(library)?;
    let session =
        crate::onnxruntime::open_session(&env, path, &crate::onnxruntime::SessionSettings::cpu(1))?
            .session;
    let (inputs, outputs) = model_ports(&session);
    let (producer, metadata) = match session.metadata() {
        Ok(m) => {
            let keys = m.custom_keys().unwrap_or_default();
            let metadata = keys
                .iter()
                .filter_map(|k| m.custom(k).map(|v| (k.clone(), v)))
                .collect();
            (m.producer(), metadata)
        }
        Err(_) => (None, Vec::new()),
    };
    Ok(ModelReport {
        ir_version,
        opsets,
        producer,
        metadata,
        inputs,
        outputs,
    })
}

impl ModelReport {
    /// The human-readable report with an `[execution]` and a `[policy]` snippet
    /// (kind `chunk`, `flow` or `diffusion`) mapping the inputs.
    pub fn render(&self, path: &Path) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "{}", path.display());
        let ir = self.ir_version.map_or("?".into(), |v| v.to_string());
        let opsets: Vec<String> = self
            .opsets
            .iter()
            .map(|(d, v)| {
                format!(
                    "{}{v}",
                    if d.is_empty() {
                        "ai.onnx ".to_string()
                    } else {
                        format!("{d} ")
                    }
                )
            })
            .collect();
        let _ = writeln!(out, "  IR version {ir}, opsets: {}", opsets.join(", "));
        if let Some(p) = &self.producer {
            let _ = writeln!(out, "  producer   {p}");
        }
        for (k, v) in &self.metadata {
            let v: String = v.chars().take(100).collect();
            let _ = writeln!(out, "  metadata   {k} = {v}");
        }
        let _ = writeln!(out, "  inputs:");
        for p in &self.inputs {
            let _ = writeln!(out, "  {p}");
        }
        let _ = writeln!(out, "  outputs:");
        for p in &self.outputs {
            let _ = writeln!(out, "  {p}");
        }
        // Sampler ports make it a flow or diffusion model; otherwise a chunk policy.
        let has = |name: &str| self.inputs.iter().any(|p| p.name == name);
        let kind = match (has("noisy_actions"), has("time"), has("timestep")) {
            (true, true, _) => "flow",
            (true, _, true) => "diffusion",
            _ => "chunk",
        };
        let sampler_ports = ["noisy_actions", "time", "timestep"];
        let _ = writeln!(
            out,
            "\n# launch-file snippet (edit the sources):\n[execution]\naction_rate_hz = 10.0\nreplan_after = 5\n\n[policy]\nkind = \"{kind}\""
        );
        let _ = writeln!(out, "model = {:?}", path.display().to_string());
        match kind {
            "flow" => {
                let _ = writeln!(out, "num_steps = 10");
            }
            "diffusion" => {
                let _ = writeln!(
                    out,
                    "num_steps = 10\nschedule = {{ kind = \"squared_cosine\", train_steps = 100, clip_sample = 1.0 }}"
                );
            }
            _ => {}
        }
        for p in &self.inputs {
            if kind != "chunk" && sampler_ports.contains(&p.name.as_str()) {
                continue;
            }
            let shape: Vec<i64> = p.shape.iter().map(|&d| if d < 0 { 1 } else { d }).collect();
            let image = shape.len() == 4;
            let _ = writeln!(out, "\n[[policy.inputs]]\nname = {:?}", p.name);
            if image {
                let (h, w, layout) = if shape[1] == 3 {
                    (shape[2], shape[3], "nchw")
                } else {
                    (shape[1], shape[2], "nhwc")
                };
                let _ = writeln!(out, "source = \"camera.CAMERA\"\nshape = {shape:?}");
                let _ = writeln!(
                    out,
                    "image = {{ resize = [{h}, {w}], layout = \"{layout}\", range = \"zero_one\" }}"
                );
            } else {
                let _ = writeln!(out, "source = \"state.joint_positions\"\nshape = {shape:?}");
            }
            if p.dtype != "float32" {
                let _ = writeln!(out, "dtype = \"{}\"", p.dtype);
            }
        }
        let dim = |shape: &[i64], i: usize| shape.get(i).copied().filter(|d| *d > 0).unwrap_or(1);
        if kind == "chunk" {
            if let Some(actions) = self.outputs.first() {
                let _ = writeln!(
                    out,
                    "\n[policy.actions]\noutput = {:?}\nhorizon = {}",
                    actions.name,
                    dim(&actions.shape, 1)
                );
            }
        } else if let Some(x) = self.inputs.iter().find(|p| p.name == "noisy_actions") {
            let _ = writeln!(
                out,
                "\n[policy.actions]\nhorizon = {}\ndim = {}    # the model's action width; the robot's joints come first",
                dim(&x.shape, 1),
                dim(&x.shape, 2)
            );
        }
        out.push_str(&norm_stats_snippet(path));
        out
    }
}

/// Statistics files reflex reads, in the order a model's directory is searched.
fn stats_file_near(model: &Path) -> Option<std::path::PathBuf> {
    let dir = model.parent()?;
    let mut names: Vec<std::path::PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    names.sort();
    let named = |p: &std::path::PathBuf, suffix: &str| {
        p.file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.ends_with(suffix))
    };
    // `<prefix>norm_stats.json` belongs to the models whose names start with the
    // prefix (`flow_norm_stats.json` to `flow_velocity.onnx`).
    let model_name = model.file_name()?.to_str()?;
    let for_model = |p: &&std::path::PathBuf| {
        p.file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix("norm_stats.json"))
            .is_some_and(|prefix| model_name.starts_with(prefix))
    };
    names
        .iter()
        .find(|p| named(p, "normalizer_processor.safetensors"))
        .or_else(|| names.iter().find(for_model))
        .or_else(|| {
            names
                .iter()
                .find(|p| named(p, "stats.json") && !named(p, "norm_stats.json"))
        })
        .cloned()
}

/// LeRobot's `normalization_mapping` (VISUAL / STATE / ACTION) from a policy
/// directory's `config.json`, in reflex's names.
fn lerobot_modes(dir: &Path) -> Option<[(&'static str, String); 3]> {
    let text = std::fs::read_to_string(dir.join("config.json")).ok()?;
    let config: serde_json::Value = serde_json::from_str(&text).ok()?;
    let mapping = config.get("normalization_mapping")?;
    let mode = |feature: &str| -> String {
        match mapping.get(feature).and_then(|m| m.as_str()) {
            Some("MEAN_STD") => "mean_std",
            Some("MIN_MAX") => "min_max",
            Some("QUANTILES") => "quantile",
            _ => "identity",
        }
        .to_string()
    };
    Some([
        ("state_mode", mode("STATE")),
        ("actions_mode", mode("ACTION")),
        ("image_mode", mode("VISUAL")),
    ])
}

/// The `[policy.norm_stats]` table for the statistics file next to the model,
/// with the mode its policy was trained with when the directory says it
/// (LeRobot's config.json), else the one its fields suggest.
fn norm_stats_snippet(model: &Path) -> String {
    let Some(file) = stats_file_near(model) else {
        return "\n# [policy.norm_stats]        # no statistics file next to the model\n\
                # file = \"norm_stats.json\"   # or LeRobot's *normalizer_processor.safetensors, meta/stats.json\n\
                # mode = \"z_score\"\n"
            .into();
    };
    let name = file.file_name().unwrap_or_default().to_string_lossy();
    // Written as the model's path was given, so the snippet works where it does.
    let shown = file.display().to_string();
    let stats = match reflex_calibration::NormStats::load(&file) {
        Ok(stats) => stats,
        Err(e) => return format!("\n# [policy.norm_stats]: {e}\n"),
    };
    let mut out = String::new();
    let _ = writeln!(out, "\n# statistics in {name}:");
    for (key, entry) in &stats.entries {
        let _ = writeln!(
            out,
            "#   {key}: {} values, {}",
            entry.width(),
            stats.suggested_fields(key).unwrap_or("?")
        );
    }
    let lerobot = stats.entries.keys().any(|k| k.starts_with("observation."));
    let (state_key, actions_key) = match lerobot {
        true => ("observation.state", "action"),
        false => ("state", "actions"),
    };
    let _ = writeln!(
        out,
        "[policy.norm_stats]\nfile = {shown:?}\nstate_key = {state_key:?}\nactions_key = {actions_key:?}"
    );
    if let Some(modes) = model.parent().and_then(lerobot_modes) {
        let _ = writeln!(out, "# modes: config.json's normalization_mapping");
        for (field, mode) in modes {
            let _ = writeln!(out, "{field} = {mode:?}");
        }
        return out;
    }
    // Without the policy's config, the fields say what it can be: openpi writes
    // quantiles only for the models that use them; mean/std in a LeRobot file is
    // LeRobot's MEAN_STD (its epsilon), else openpi's z-score.
    let mode = match (stats.suggested_fields(actions_key), lerobot) {
        (Some("q01/q99"), _) => "quantile",
        (Some("min/max"), _) => "min_max",
        (_, true) => "mean_std",
        _ => "z_score",
    };
    let _ = writeln!(
        out,
        "mode = {mode:?}   # a guess from the file's fields: check what the policy was trained with"
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_ir_version_and_opsets_from_the_file() {
        let model = std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/models/test/chunk_state_hold.onnx"
        ))
        .unwrap();
        let (ir, opsets) = read_versions(&model);
        assert_eq!(ir, Some(13));
        assert_eq!(opsets, vec![(String::new(), 17)]);
    }

    #[test]
    fn garbage_does_not_panic() {
        assert_eq!(read_versions(&[0xFF, 0xFF, 0xFF]), (None, Vec::new()));
        assert_eq!(read_versions(&[0x0A, 0x80]), (None, Vec::new()));
    }
}
