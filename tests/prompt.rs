//! The task instruction reaches a language-conditioned model as the token ids and
//! attention mask Python `tokenizers` makes from the same `tokenizer.json`: from the
//! launch file's `[task]`, and after `reflex prompt` changes it mid-run.
//!
//! The fixture model (chunk_prompt.onnx) adds 1e-3 x (ids, then mask) to the state,
//! so every logged chunk shows the tensors it was fed.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use common::*;
use reflex_runtime::log::{Record, read_log};

const LENGTH: usize = 16;
const JOINTS: usize = 3;

fn policy_table() -> String {
    format!(
        r#"[policy]
kind = "chunk"
model = "{model}"
intra_threads = 1

[policy.prompt]
tokenizer = "{tokenizer}"
max_length = {LENGTH}

[[policy.inputs]]
name = "state"
source = "state.joint_positions"
shape = [1, 3]

[[policy.inputs]]
name = "input_ids"
source = "prompt.input_ids"
dtype = "int64"
shape = [1, {LENGTH}]

[[policy.inputs]]
name = "attention_mask"
source = "prompt.attention_mask"
dtype = "int64"
shape = [1, {LENGTH}]

[policy.actions]
horizon = 11
"#,
        model = fixture("chunk_prompt.onnx").display(),
        tokenizer = fixture("prompt/tokenizer.json").display(),
    )
}

fn launch_file(dir: &Path, instruction: &str) -> std::path::PathBuf {
    let text = format!(
        "{}\n[task]\ninstruction = {instruction:?}\n",
        demo_with_policy(&policy_table(), 2)
    );
    let path = dir.join("launch.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// Python `tokenizers` on the same file, padded and truncated to LENGTH the way
/// `[policy.prompt]`'s defaults ask (special tokens, "\n" appended, right padding
/// with `<pad>`).
fn python_tokens(text: &str) -> (Vec<i64>, Vec<i64>) {
    let python = repo().join(".venv/bin/python");
    assert!(
        python.exists(),
        "the project's .venv (make setup) has Python tokenizers"
    );
    let program = format!(
        r#"
import json, sys
from tokenizers import Tokenizer
tok = Tokenizer.from_file({path:?})
tok.enable_padding(length={LENGTH}, pad_id=tok.token_to_id("<pad>"), direction="right")
tok.enable_truncation(max_length={LENGTH})
text = sys.argv[1]
if not text.endswith("\n"):
    text += "\n"
enc = tok.encode(text, add_special_tokens=True)
print(json.dumps([enc.ids, enc.attention_mask]))
"#,
        path = fixture("prompt/tokenizer.json").display().to_string(),
    );
    let out = Command::new(python)
        .args(["-c", &program, text])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (ids, mask): (Vec<i64>, Vec<i64>) = serde_json::from_slice(&out.stdout).unwrap();
    (ids, mask)
}

/// The ids and mask each logged chunk carries, in chunk order.
fn tokens_in_chunks(log: &Path) -> Vec<(Vec<i64>, Vec<i64>)> {
    let contents = read_log(log).unwrap();
    let mut states: BTreeMap<u64, Vec<f64>> = BTreeMap::new();
    let mut out = Vec::new();
    for record in &contents.records {
        match record {
            Record::Tick(t) => {
                states.insert(t.tick, t.state.positions().to_vec());
            }
            Record::Chunk { chunk, .. } => {
                let state = &states[&chunk.conditioned_on_tick];
                let decoded: Vec<i64> = chunk
                    .actions
                    .iter()
                    .enumerate()
                    .map(|(i, a)| ((f64::from(*a) - state[i % JOINTS]) * 1e3).round() as i64)
                    .collect();
                out.push((
                    decoded[..LENGTH].to_vec(),
                    decoded[LENGTH..2 * LENGTH].to_vec(),
                ));
            }
            _ => {}
        }
    }
    out
}

#[test]
fn the_launch_files_instruction_reaches_the_model_as_python_tokenizes_it() {
    let dir = scratch("prompt-launch");
    // Long enough to be truncated at 16 tokens, with an accent.
    let instruction = "pick up the red cube and place it gently on the café table";
    let launch = launch_file(&dir, instruction);
    let log = dir.join("run.log");
    run_ok(&[
        "run",
        launch.to_str().unwrap(),
        "--sim-clock",
        "--duration",
        "1",
        "--set",
        "zenoh.enabled=false",
        "--log",
        log.to_str().unwrap(),
    ]);
    let expected = python_tokens(instruction);
    assert_eq!(
        expected.1.iter().sum::<i64>(),
        LENGTH as i64,
        "the fixture truncates"
    );
    let chunks = tokens_in_chunks(&log);
    assert!(chunks.len() >= 3);
    for tokens in &chunks {
        assert_eq!(tokens, &expected);
    }
    // Negative control: another instruction gives other tensors.
    assert_ne!(python_tokens("open the drawer"), expected);
}

#[test]
fn reflex_prompt_changes_the_instruction_of_a_running_loop() {
    let dir = scratch("prompt-socket");
    let launch = launch_file(&dir, "open the drawer");
    let log = dir.join("run.log");
    let args: Vec<String> = [
        "run",
        launch.to_str().unwrap(),
        "--duration",
        "4",
        "--set",
        "zenoh.enabled=false",
        "--log",
        log.to_str().unwrap(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut command = reflex();
    command.env("XDG_RUNTIME_DIR", &dir);
    let mut child = spawn_until_with(command, &args, "wall clock");
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let answer = reflex()
        .env("XDG_RUNTIME_DIR", &dir)
        .args(["prompt", "--robot", "sim_arm", "close", "the", "lid"])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&answer.stdout).contains("ok"),
        "{}{}",
        String::from_utf8_lossy(&answer.stdout),
        String::from_utf8_lossy(&answer.stderr)
    );
    assert!(child.wait().unwrap().success());
    let (before, after) = (
        python_tokens("open the drawer"),
        python_tokens("close the lid"),
    );
    let chunks = tokens_in_chunks(&log);
    let first_new = chunks
        .iter()
        .position(|t| *t == after)
        .expect("chunks with the new instruction");
    assert!(first_new > 0, "the first chunks used the launch file's");
    assert!(chunks[..first_new].iter().all(|t| *t == before));
    assert!(chunks[first_new..].iter().all(|t| *t == after));
}

#[test]
fn a_text_stream_named_by_the_task_replaces_the_instruction() {
    use zenoh::Wait;
    let dir = scratch("prompt-text-stream");
    let port = free_port();
    let endpoint = format!("tcp/127.0.0.1:{port}");
    let text = format!(
        "{}\n[task]\ninstruction = \"open the drawer\"\nsource = \"operator.text\"\n\n\
         [[drivers]]\nkind = \"zenoh_stream\"\nname = \"operator\"\nstream = \"text\"\n",
        demo_with_policy(&policy_table(), 2)
    );
    let launch = dir.join("launch.toml");
    std::fs::write(&launch, text).unwrap();
    let log = dir.join("run.log");
    let args: Vec<String> = [
        "run",
        launch.to_str().unwrap(),
        "--duration",
        "4",
        "--set",
        &format!("zenoh.listen=[\"{endpoint}\"]"),
        "--log",
        log.to_str().unwrap(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut command = reflex();
    command.env("XDG_RUNTIME_DIR", &dir);
    let mut child = spawn_until_with(command, &args, "wall clock");
    let session = zenoh_peer(&endpoint);
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let key = "reflex/sim_arm/operator";
    // Not UTF-8: refused (counted), the instruction stays.
    session.put(key, vec![0xff, 0xfe]).wait().unwrap();
    session.put(key, "close the lid").wait().unwrap();
    assert!(child.wait().unwrap().success());
    let (before, after) = (
        python_tokens("open the drawer"),
        python_tokens("close the lid"),
    );
    let chunks = tokens_in_chunks(&log);
    let first_new = chunks
        .iter()
        .position(|t| *t == after)
        .expect("chunks with the streamed instruction");
    assert!(first_new > 0, "the first chunks used the launch file's");
    assert!(chunks[..first_new].iter().all(|t| *t == before));
    assert!(chunks[first_new..].iter().all(|t| *t == after));
}
